"""Former home of the adapter folder functions (deprecated; removed in the next version).

Use ``model.save_pretrained(folder)``, ``SDLoRAViT.from_pretrained(folder, ...)`` (or
``sdlora_vit(..., adapters=folder)``) and ``model.load_adapters(folder)``; the format itself is
:mod:`avalanche_sdlora.adapter_format`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from .adapter_format import (CONFIG_FILE, FORMAT, TENSORS_FILE, UNVERIFIED, adapter_config, adapter_state_dict,
                             base_fingerprint, check_saved_config, load_adapter_state, read_adapters,
                             read_checked_tensors, require_sdlora, sha256_hex)
from .model import SDLoRAViT

__all__ = ["CONFIG_FILE", "FORMAT", "TENSORS_FILE", "UNVERIFIED", "adapter_config", "adapter_state_dict",
           "base_fingerprint", "check_saved_config", "load_adapter_state", "read_adapters", "read_checked_tensors",
           "require_sdlora", "sha256_hex", "save_adapters", "load_adapters"]


def save_adapters(model: torch.nn.Module, path: str | Path) -> Path:
    """Deprecated: ``model.save_pretrained(path)``."""
    warnings.warn("avalanche_sdlora.adapter_io.save_adapters(model, path) is deprecated: use "
                  "model.save_pretrained(path)", DeprecationWarning, stacklevel=2)
    require_sdlora(model, "save_adapters")
    return model.save_pretrained(path)


def load_adapters(path: str | Path, model: torch.nn.Module | None = None, *, checkpoint: str | Path | None = None,
                  pretrained: bool = False, allow_unverified: bool = False) -> SDLoRAViT:
    """Deprecated: ``SDLoRAViT.from_pretrained(path, checkpoint=..., pretrained=...)`` or ``model.load_adapters(path)``."""
    warnings.warn("avalanche_sdlora.adapter_io.load_adapters is deprecated: use SDLoRAViT.from_pretrained(path, ...) "
                  "(or sdlora_vit(..., adapters=path)), or model.load_adapters(path) for a built model",
                  DeprecationWarning, stacklevel=2)
    if model is None:
        return SDLoRAViT.from_pretrained(path, checkpoint=checkpoint, pretrained=pretrained,
                                         allow_unverified=allow_unverified)
    require_sdlora(model, "loading adapters")
    return model.load_adapters(path, allow_unverified=allow_unverified)
