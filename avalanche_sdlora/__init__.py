"""SD-LoRA (Scalable Decoupled LoRA, ICLR 2025) for class-incremental learning, as an Avalanche extension."""

from .adapter import Magnitudes, SDLoRAQKV
from .checkpoint import CheckpointPlugin, latest_checkpoint, load_checkpoint, save_checkpoint
from .data import split_cifar100
from .datasets import (cifar100, class_order, cub200, domainnet, imagenet_a, imagenet_r, paper_benchmark,
                       sdlora_transforms)
from .metrics import AverageAnytimeAccuracy, average_anytime_accuracy, final_accuracy, forgetting
from .model import SDLoRAViT, create_backbone, sdlora_vit
from .options import SDLoRAOptions
from .plugins import AdapterGrowthPlugin, DistillationPlugin, FiniteLossPlugin, RankReductionPlugin
from .strategy import SDLoRA, SDLoRAKD, SDLoRARR
from .variants import GrowthVariant

__all__ = ["SDLoRA", "SDLoRARR", "SDLoRAKD", "SDLoRAOptions", "sdlora_vit", "create_backbone", "SDLoRAViT",
           "SDLoRAQKV", "Magnitudes", "AdapterGrowthPlugin", "RankReductionPlugin", "DistillationPlugin",
           "FiniteLossPlugin", "GrowthVariant", "CheckpointPlugin", "save_checkpoint", "load_checkpoint",
           "latest_checkpoint", "AverageAnytimeAccuracy", "average_anytime_accuracy", "final_accuracy", "forgetting",
           "split_cifar100", "class_order", "sdlora_transforms", "paper_benchmark", "imagenet_r", "imagenet_a",
           "cub200", "domainnet", "cifar100"]
__version__ = "0.4.19"  # pyproject.toml reads it; CHANGELOG.md says what changed
