"""SD-LoRA (Scalable Decoupled LoRA, ICLR 2025) for class-incremental learning, as an Avalanche extension."""

from .adapter import Magnitudes, SDLoRAQKV
from .model import SDLoRAViT, create_backbone, sdlora_vit
from .options import SDLoRAOptions
from .plugins import AdapterGrowthPlugin, DistillationPlugin, FiniteLossPlugin, RankReductionPlugin
from .strategy import SDLoRA, SDLoRAKD, SDLoRARR

__all__ = ["SDLoRA", "SDLoRARR", "SDLoRAKD", "SDLoRAOptions", "sdlora_vit", "create_backbone", "SDLoRAViT",
           "SDLoRAQKV", "Magnitudes", "AdapterGrowthPlugin", "RankReductionPlugin", "DistillationPlugin",
           "FiniteLossPlugin"]
__version__ = "0.2.0"  # pyproject.toml reads it; CHANGELOG.md says what changed
