"""Avalanche's ``JointTraining``: one training on the whole stream, the upper bound of the seq-lora budget."""

from __future__ import annotations

from avalanche.training import JointTraining

from ..peers import lora_baseline
from .recipe import lora_baseline_arguments, shared_recipe
from .registry import register_method


@register_method("joint", summary="Avalanche's JointTraining on the seq-lora budget (all experiences at once)",
                 stored_params=lora_baseline.stored_params, recipe=shared_recipe, schedule="joint")
def build(cfg, num_classes, evaluator, plugins):
    return JointTraining(**lora_baseline_arguments(cfg, evaluator, plugins))
