"""AdaptFormer's parallel bottleneck adapter on the MLP of every block of any timm ViT.

This is the parameter-efficient module of RanPAC's and APER's CIFAR-100 configurations (RanPAC/RanPAC
``args/cifar224_publish.csv`` row 7, ``pretrained_vit_b16_224_in21k_adapter``; LAMDA-PILOT
``exps/aper_aperpter.json`` / ``exps/ranpac.json``, ``backbone_type ..._adapter``). Facts from LAMDA-PILOT
``backbone/vit_adapter.py`` (``Adapter``, ``Block``) and ``utils/inc_net.py`` (``get_backbone``'s tuning config),
identical in RanPAC's ``inc_net.py``:

- placement ``ffn_option="parallel"``: ``x = x + attn(norm1(x)); x = x + mlp(norm2(x)) + adapter(x)``, i.e. the
  adapter reads the residual stream after attention, without a layer norm (``ffn_adapter_layernorm_option="none"``);
- ``adapter(x) = 0.1 * up(dropout_0.1(relu(down(x))))`` (``ffn_adapter_scalar="0.1"``, ``Adapter(dropout=0.1)``),
  bottleneck 64 (``ffn_num``);
- ``init_option="lora"``: ``down.weight`` Kaiming-uniform (a=sqrt 5), ``down.bias``, ``up.weight``, ``up.bias`` zero,
  so a fresh adapter leaves the pretrained network unchanged.

timm's ``Block`` computes ``x + drop_path2(ls2(mlp(norm2(x))))``; we move ``norm2`` inside a module that stands in
for ``mlp`` so the block computes the reference's sum without touching timm's code. For ViTs with LayerScale or
drop-path the adapter output also passes through ``ls2``/``drop_path2`` (the reference's ViT-B has neither).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BottleneckAdapter", "ParallelAdapterMLP", "add_adapters", "adapters_of", "adapters_disabled",
           "ADAPTER_DEFAULTS"]

ADAPTER_DEFAULTS = {"bottleneck": 64, "scale": 0.1, "dropout": 0.1}


class BottleneckAdapter(nn.Module):
    """``scale * up(dropout(relu(down(x))))`` with the reference's LoRA-style init (a no-op at start)."""

    def __init__(self, dim: int, bottleneck: int = 64, scale: float = 0.1, dropout: float = 0.1) -> None:
        super().__init__()
        if bottleneck <= 0:
            raise ValueError(f"adapter bottleneck must be a positive integer, got {bottleneck}")
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        self.scale = float(scale)
        self.dropout = float(dropout)
        self.enabled = True
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = F.dropout(F.relu(self.down(x)), p=self.dropout, training=self.training)
        return self.up(h) * self.scale


class ParallelAdapterMLP(nn.Module):
    """Stands in for ``block.mlp`` (with ``block.norm2`` inside): ``mlp(norm(x)) + adapter(x)``."""

    def __init__(self, norm: nn.Module, mlp: nn.Module, adapter: BottleneckAdapter) -> None:
        super().__init__()
        self.norm = norm
        self.mlp = mlp
        self.adapter = adapter

    def forward(self, x: Tensor) -> Tensor:
        out = self.mlp(self.norm(x))
        if self.adapter.enabled:
            out = out + self.adapter(x)
        return out


def add_adapters(backbone: nn.Module, *, bottleneck: int = 64, scale: float = 0.1, dropout: float = 0.1,
                 mlp_cls: type[ParallelAdapterMLP] = ParallelAdapterMLP) -> list[BottleneckAdapter]:
    """Put a trainable parallel adapter beside the MLP of every block; everything else is frozen.

    ``mlp_cls`` is the stand-in for ``block.mlp`` (a :class:`ParallelAdapterMLP`; MOS's keeps per-task copies)."""
    blocks = getattr(backbone, "blocks", None)
    if not blocks or not all(isinstance(getattr(b, name, None), nn.Module) for b in blocks for name in ("norm2", "mlp")):
        raise TypeError(f"{type(backbone).__name__} has no .blocks[*].norm2/.mlp; the AdaptFormer adapter needs a timm "
                        "VisionTransformer such as 'vit_tiny_patch16_224'")
    if adapters_of(backbone):
        raise RuntimeError("the backbone already has adapters; add_adapters must be called once")
    for p in backbone.parameters():
        p.requires_grad_(False)
    dim = backbone.num_features
    device = next(backbone.parameters()).device
    for block in blocks:
        adapter = BottleneckAdapter(dim, bottleneck=bottleneck, scale=scale, dropout=dropout).to(device)
        block.mlp = mlp_cls(block.norm2, block.mlp, adapter)
        block.norm2 = nn.Identity()
    return adapters_of(backbone)


def adapters_of(backbone: nn.Module) -> list[BottleneckAdapter]:
    return [m for m in backbone.modules() if isinstance(m, BottleneckAdapter)]


@contextmanager
def adapters_disabled(backbone: nn.Module) -> Iterator[None]:
    """Run the backbone as the pretrained model (APER's frozen branch) without keeping a second copy."""
    adapters = adapters_of(backbone)
    states = [a.enabled for a in adapters]
    for a in adapters:
        a.enabled = False
    try:
        yield
    finally:
        for a, s in zip(adapters, states):
            a.enabled = s
