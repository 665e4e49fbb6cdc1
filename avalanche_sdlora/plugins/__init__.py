"""SD-LoRA's Avalanche plugins: one concern each, hooks named after the training loop."""

from .distillation import DistillationPlugin
from .finite_loss import FiniteLossPlugin
from .growth import AdapterGrowthPlugin
from .input_check import InputCheckPlugin
from .rank_reduction import RankReductionPlugin

__all__ = ["AdapterGrowthPlugin", "FiniteLossPlugin", "InputCheckPlugin", "RankReductionPlugin", "DistillationPlugin"]
