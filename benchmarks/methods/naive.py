"""Avalanche's ``Naive`` (fine-tuning, no protection against forgetting) on the seq-lora budget."""

from __future__ import annotations

from avalanche.training import Naive

from ..peers import lora_baseline
from .recipe import lora_baseline_arguments, shared_recipe
from .registry import register_method


@register_method("naive", summary="Avalanche's Naive on one LoRA pair and an IncrementalClassifier, loss over all "
                 "seen classes", stored_params=lora_baseline.stored_params, recipe=shared_recipe)
def build(cfg, num_classes, evaluator, plugins):
    return Naive(**lora_baseline_arguments(cfg, evaluator, plugins))
