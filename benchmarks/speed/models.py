"""The models speed measures: SD-LoRA with N stored tasks (merged or not), the frozen backbone, plain LoRA, L2P."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avalanche_sdlora.assets import default_asset
from avalanche_sdlora.model import SDLoRAViT, create_backbone, sdlora_vit

from ..peers.l2p import build_l2p_model
from ..peers.lora_baseline import add_plain_lora_pair

N_CLASSES, N_HEAD_TASKS = 100, 10


class Backbone(nn.Module):
    """The frozen timm backbone with a given head: the reference."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


class PlainLoRAQKV(nn.Module):
    """Minimal plain LoRA on the q and v slices of a fused qkv: y = W x + B_q A_q x (q) / B_v A_v x (v).

    The yardstick for SD-LoRA's overhead: the fastest form of the same update, not a method of the comparison.
    """

    def __init__(self, base: nn.Linear, rank: int) -> None:
        super().__init__()
        self.base, self.dim = base, base.out_features // 3
        self.A = nn.Parameter(torch.randn(2, rank, base.in_features) / math.sqrt(base.in_features))
        self.B = nn.Parameter(torch.randn(2, self.dim, rank) * 0.01)

    def forward(self, x: Tensor) -> Tensor:
        out = self.base(x)  # frozen: its backward needs no output, so in-place adds are safe (fastest variant)
        d = self.dim
        out[..., :d] += F.linear(F.linear(x, self.A[0]), self.B[0])
        out[..., 2 * d:] += F.linear(F.linear(x, self.A[1]), self.B[1])
        return out


def weights(args) -> str | None:
    """The weights file (``--checkpoint``, else the assets folder's); None measures a randomly initialised ViT
    (always, where ``args.random_weights``: FLOP counts of an architecture we have no weights for)."""
    if getattr(args, "random_weights", False):
        return None
    c = args.checkpoint or default_asset(f"{args.model}.safetensors")
    return None if c is None else str(c)


def fill_head(head, n_tasks: int = N_HEAD_TASKS) -> None:
    per = N_CLASSES // N_HEAD_TASKS
    for t in range(n_tasks):
        head.add_classes(list(range(t * per, (t + 1) * per)))  # earlier rows frozen, last chunk trainable


def _randomize_pair(model: SDLoRAViT, gen: torch.Generator) -> None:
    with torch.no_grad():
        for a in model.adapters:
            a.lora_B.copy_(torch.randn(a.lora_B.shape, generator=gen) * 0.02)


def build_sdlora(args, img: int, stored: int, current: bool = True, merged: bool = False,
                 single_frozen_alpha: bool = False, seed: int = 0) -> SDLoRAViT:
    """SD-LoRA with ``stored`` frozen directions (random non-zero B) and, if ``current``, a trainable pair.

    ``single_frozen_alpha``: the sequential-LoRA baseline's model (one pair, alpha fixed at 1).
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    m = sdlora_vit(args.model, checkpoint=weights(args), img_size=img, rank=args.rank)
    for _ in range(stored):
        m.add_task(args.rank)
        _randomize_pair(m, gen)
        m.freeze_task()
    if current:
        if single_frozen_alpha:
            add_plain_lora_pair(m, args.rank)
        else:
            m.add_task(args.rank)
        _randomize_pair(m, gen)
    fill_head(m.head)
    if merged:
        m.merge()
    return m.to(args.device)


def build_backbone(args, img: int, head: nn.Module) -> Backbone:
    b = create_backbone(args.model, checkpoint=weights(args), img_size=img)
    for p in b.parameters():
        p.requires_grad_(False)
    return Backbone(b, copy.deepcopy(head)).to(args.device)


def build_plain_lora(args, img: int, head: nn.Module) -> Backbone:
    torch.manual_seed(0)
    m = build_backbone(args, img, head)
    for blk in m.backbone.blocks:
        blk.attn.qkv = PlainLoRAQKV(blk.attn.qkv, args.rank)
    return m.to(args.device)


def build_l2p(args, img: int) -> nn.Module:
    """L2P's network (the frozen query ViT, then the prompted one), as the comparison's ``l2p`` builds it."""
    return build_l2p_model(args.model, weights(args), img, N_CLASSES).to(args.device)
