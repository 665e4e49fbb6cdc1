"""Avalanche's ``LwF`` (distillation from the previous model) on the seq-lora budget."""

from __future__ import annotations

from avalanche.training import LwF

from ..peers import lora_baseline
from .recipe import lora_baseline_arguments, shared_recipe
from .registry import register_method

ALPHA, TEMPERATURE = 1.0, 2.0


@register_method("lwf", summary="Avalanche's LwF (alpha 1, temperature 2) on the seq-lora budget",
                 stored_params=lora_baseline.stored_params, recipe=shared_recipe,
                 reference_hparams={"alpha": (ALPHA, "harness choice (Avalanche has no default)"),
                                    "temperature": (TEMPERATURE, "harness choice (Li & Hoiem use 2)")})
def build(cfg, num_classes, evaluator, plugins):
    return LwF(alpha=ALPHA, temperature=TEMPERATURE, **lora_baseline_arguments(cfg, evaluator, plugins))
