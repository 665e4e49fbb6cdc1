"""The paper's Table 4 ablations and the pair starts as rules: the mechanics that are not SD-LoRA's update.

A growth variant (``SDLoRAOptions.variant``) is a small class whose three hooks the growth plugin
(:mod:`avalanche_sdlora.plugins.growth`) calls at the task boundaries, as PEFT's LoRA variants are classes its LoRA
layers call (``peft/tuners/lora/variants.py``): :meth:`GrowthVariant.start_task`, :meth:`GrowthVariant.after_update`
and :meth:`GrowthVariant.end_task`. A pair start (``SDLoRAOptions.pair_init``) is a callable that
:meth:`~avalanche_sdlora.model.SDLoRAViT.add_task` applies to each adapter's freshly drawn pair. Nothing else in the
library branches on either name, and :mod:`avalanche_sdlora.adapter` holds only the paper's update and its task
lifecycle. This module imports nothing of the library (the model and adapters are passed in), so every module may
import it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

if TYPE_CHECKING:  # annotations only: the model imports this module
    from .adapter import SDLoRAQKV
    from .model import SDLoRAViT
    from .options import SDLoRAOptions


class GrowthVariant:
    """SD-LoRA: a new pair and magnitude at every task, the pair frozen into a normalised direction when its task
    ends, every magnitude trainable (paper 79.15 / 77.34)."""

    name: ClassVar[str] = "full"

    def start_task(self, model: SDLoRAViT, task: int, rank: int, options: SDLoRAOptions) -> None:
        """Before 0-based ``task`` trains: add its pair (of ``rank``) and magnitude."""
        model.add_task(rank, options=options)

    def after_update(self, model: SDLoRAViT) -> None:
        """After each optimizer step (nothing for SD-LoRA)."""

    def end_task(self, model: SDLoRAViT) -> None:
        """After the task's last step: freeze its pair into a stored direction."""
        model.freeze_task()


class FixedDirection(GrowthVariant):
    """Table 4 (i), Finding 1(b): the first task is trained as in SD-LoRA and its pair frozen into a normalised
    direction as SD-LoRA freezes any pair; later tasks add no pair and no magnitude and train only that direction's
    magnitude (and the new head rows). The magnitude is treated as SD-LoRA treats alpha_1: reset to alpha_init at each
    task when reset_alphas, else trained on from its learned value, so the row differs from 'full' only by the
    missing later components (paper 78.17 / 74.82)."""

    name = "fixed-direction"

    def start_task(self, model: SDLoRAViT, task: int, rank: int, options: SDLoRAOptions) -> None:
        """Task 0: SD-LoRA's pair; later: reset the one magnitude if ``reset_alphas``."""
        if task == 0:
            model.add_task(rank, options=options)
        elif options.reset_alphas:  # its one magnitude belongs to a finished direction, reset as SD-LoRA resets alpha_1
            model.magnitudes.fill_(options.alpha_init)


class SingleComponent(GrowthVariant):
    """Table 4 (ii): one pair and one magnitude, W = W0 + alpha * normalised(B A), trained through every task and
    never frozen; the magnitude keeps its learned value across tasks (there is no finished component for reset_alphas
    to reset). Normalised as SD-LoRA normalises its pairs: with normalize_current=True (the paper's form) the pair is
    the unit-Frobenius B A / ||B A||_F while it trains; with False (the authors' code) it trains as alpha * B A and
    its B is rescaled at each task end to the direction direction_norm stores, so the network changes there as
    SD-LoRA's does when it freezes a pair. It differs from sequential LoRA (one pair, alpha fixed at 1, never
    normalised) exactly by that decoupling: the normalisation and a trainable magnitude starting at alpha_init
    (paper 73.24 / 70.62)."""

    name = "single-component"

    def start_task(self, model: SDLoRAViT, task: int, rank: int, options: SDLoRAOptions) -> None:
        """Task 0: the one pair and magnitude; later tasks train them on."""
        if task == 0:
            model.add_task(rank, options=options)

    def end_task(self, model: SDLoRAViT) -> None:
        """Normalise the pair as a finished direction would be, keep it trainable."""
        for adapter in model.adapters:
            normalize_pair(adapter)


class FrozenOldMagnitudes(GrowthVariant):
    """Table 4 (iii), old components fixed without rescaling: as SD-LoRA, but when task t starts every earlier
    magnitude is frozen at the value it had learned, so only the current pair, alpha_t and the new head rows train;
    needs reset_alphas=False, since resetting old magnitudes to alpha_init is a rescaling (paper 78.28 / 74.29).

    torch has no per-element ``requires_grad``: a gradient hook on the magnitudes zeroes the held slots' gradient, and
    :meth:`after_update` writes their values back (weight decay, or any rule that moves a parameter without a
    gradient, would otherwise shift them). The hold is set again at every task start, so it is never saved.
    """

    name = "frozen-old-magnitudes"

    def __init__(self) -> None:
        self.held: Tensor | None = None  # bool mask of the held slots
        self.values: Tensor | None = None  # their values when the task started

    @property
    def held_slots(self) -> list[int]:
        """The magnitudes held at their learned values while the current task trains."""
        return [] if self.held is None else [int(i) for i in torch.nonzero(self.held).flatten()]

    def start_task(self, model: SDLoRAViT, task: int, rank: int, options: SDLoRAOptions) -> None:
        """SD-LoRA's new pair and magnitude, every earlier magnitude held where it is."""
        super().start_task(model, task, rank, options)
        alpha = model.magnitudes.alpha
        self.held = torch.arange(len(alpha), device=alpha.device) < model.num_directions
        self.values = alpha.detach().clone()
        held = self.held
        alpha.register_hook(lambda grad: torch.where(held, torch.zeros_like(grad), grad))

    @torch.no_grad()
    def after_update(self, model: SDLoRAViT) -> None:
        """Write the held magnitudes back (weight decay moves them without a gradient)."""
        alpha = model.magnitudes.alpha
        if self.held is not None and self.held.shape == alpha.shape:
            alpha.copy_(torch.where(self.held, self.values, alpha))


VARIANTS: dict[str, type[GrowthVariant]] = {
    v.name: v for v in (GrowthVariant, FixedDirection, SingleComponent, FrozenOldMagnitudes)}


def reading(variant: type[GrowthVariant]) -> str:
    """The exact reading of a variant (its docstring's first paragraph on one line)."""
    return " ".join((variant.__doc__ or "").split("\n\n")[0].split())


# ---------------------------------------------------------------------------------------------------- pair starts
@torch.no_grad()
def normalize_pair(adapter: SDLoRAQKV) -> None:
    """Rescale the live pair's B so that B A is the direction ``freeze_pair`` would store; it stays trainable.

    The single-component ablation's task end: its one pair is never frozen, but is normalised as a finished direction
    is. Under ``normalize_current=True`` this changes only the factors' scale, not what the network computes.
    """
    if adapter.lora_A is None:
        return
    adapter.refuse_if_merged("normalise the pair")
    norms = adapter.pair_norms()
    scale = torch.where(norms > adapter.eps, 1.0 / norms.clamp_min(adapter.eps), torch.ones_like(norms))
    adapter.lora_B.mul_(scale[:, None, None])


def random_start(adapter: SDLoRAQKV) -> None:
    """``pair_init="random"``: LoRA's start, the Kaiming-uniform A ``add_pair`` drew and B = 0, as it is."""


@torch.no_grad()
def span_start(adapter: SDLoRAQKV) -> None:
    """``pair_init="span"``: each row of the drawn A projected onto the row span of its slice's stored A, its norm kept.

    A new direction then starts inside the old ones' input subspace; the random stream is the one ``"random"`` uses.
    With nothing stored yet, or for a row with no component in the span, the draw is kept. A stored direction that
    barely left the older ones' span (a task of a few steps: its A starts inside it) adds basis vectors set by its
    float rounding, so such a run moves with the CPU's kernels (``tests/test_training_trace.py``, case ``span``).
    """
    if not adapter.stored_rank:
        return
    A = adapter.lora_A.detach()
    out = A.clone()
    for s in range(2):
        q, _ = torch.linalg.qr(adapter.dir_A[s].T.double())  # (in, R): orthonormal basis of the stored rows
        proj = (A[s].double() @ q) @ q.T
        norm = proj.norm(dim=1, keepdim=True)
        ok = norm.squeeze(1) > adapter.eps
        scaled = proj * (A[s].double().norm(dim=1, keepdim=True) / norm.clamp_min(adapter.eps))
        out[s][ok] = scaled[ok].to(A.dtype)
    adapter.lora_A.copy_(out)


PAIR_STARTS = {"random": random_start, "span": span_start}
