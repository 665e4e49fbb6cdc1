"""EWC: Avalanche's ``Naive`` + ``EWCPlugin`` (separate mode) restricted to the trainable parameters.

lambda 1000 made SGD (lr 0.01, momentum 0.9) diverge on the penalty itself in experience 3 of cifar100-tiny128
(penalty 0.1 -> 1e27 in 60 steps, cross-entropy ~1 meanwhile), hence 100 by default (``--ewc-lambda``).
"""

from __future__ import annotations

from avalanche.training import Naive

from ..peers import lora_baseline
from ..peers.ewc import TrainableEWCPlugin
from .recipe import lora_baseline_arguments, shared_recipe
from .registry import register_method


@register_method("ewc", summary="Avalanche's EWC (separate mode, --ewc-lambda) on the seq-lora budget, frozen "
                 "parameters left out of the penalty", stored_params=lora_baseline.stored_params, recipe=shared_recipe,
                 reference_hparams={"ewc_lambda": (100.0, "harness: --ewc-lambda (1000 diverges at lr 0.01)")})
def build(cfg, num_classes, evaluator, plugins):
    return Naive(**lora_baseline_arguments(cfg, evaluator, plugins, TrainableEWCPlugin(ewc_lambda=cfg.ewc_lambda)))
