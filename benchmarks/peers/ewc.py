"""Avalanche's EWC, restricted to the parameters that train.

Avalanche's ``EWCPlugin`` keeps a saved copy and an importance for every named parameter and adds their
penalty at every step, once per past experience in ``separate`` mode. Our baselines train one LoRA pair and
a head on a frozen 5.5 M-parameter ViT: the frozen weights never move, so their penalty terms are exactly
zero, yet computing them made EWC about 4x slower per step than Naive. Avalanche has no option to skip
frozen parameters, so this subclass drops them after each experience; no number changes.
"""

from __future__ import annotations

from avalanche.training.plugins import EWCPlugin
from torch import nn


class TrainableEWCPlugin(EWCPlugin, supports_distributed=True):
    """``EWCPlugin`` whose saved parameters and importances cover only parameters with ``requires_grad``."""

    def after_training_exp(self, strategy, **kwargs) -> None:
        super().after_training_exp(strategy, **kwargs)
        self.drop_frozen(strategy.model)

    def drop_frozen(self, model: nn.Module) -> None:
        frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
        for store in (self.saved_params, self.importances):
            for per_exp in store.values():
                for name in frozen:
                    per_exp.pop(name, None)
