"""The SD-LoRA adapter: one frozen qkv projection plus decoupled low-rank updates of q and v.

For task t the update of slice s in {q, v} is

    dW_s = sum_{k<t} alpha_k * D_{k,s} + alpha_t * B_{t,s} A_{t,s}

where D_{k,s} = B_{k,s} A_{k,s} * scale_{k,s} is the frozen direction of a finished task, kept as low-rank factors
(buffers) and a scale: 1 / (||B||_F ||A||_F) by default (``direction_norm="factors"``, the authors' code), so
||D||_F <= 1; 1 / ||B A||_F with ``"frobenius"`` (the paper's), so ||D||_F = 1. (A_t, B_t) is the current task's
trainable pair (a unit B A / ||B A||_F only under ``normalize_current=True``, the paper's form). The magnitudes
alpha live once in :class:`Magnitudes`, owned by the model and shared by every adapted layer and by q and v.

``delta_weight()`` is the single place the update is formed; forward, merge, export and the KD fit all call it (or
its low-rank pieces). Forward forms the dense update once per call (cost out x R x in, whatever the number of
tokens), so training cost stays flat as tasks accumulate. The Table 4 ablations and the pair starts are rules in
:mod:`avalanche_sdlora.variants`.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .options import DIRECTION_NORMS


class Magnitudes(nn.Module):
    """One trainable scalar per (kept) task, shared by all adapted layers.

    Stored as one growing parameter vector so the state dict holds exactly one entry,
    ``alpha``, whose length is the number of tasks whose directions are kept.
    """

    def __init__(self) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(0))

    def __len__(self) -> int:
        return int(self.alpha.numel())

    @torch.no_grad()
    def append(self, value: float) -> int:
        """Add a magnitude for a new task; returns its slot index."""
        new = torch.cat([self.alpha.detach(), self.alpha.new_full((1,), float(value))])
        self.alpha = nn.Parameter(new, requires_grad=self.alpha.requires_grad)
        return len(self) - 1

    @torch.no_grad()
    def pop(self) -> float:
        """Remove the last magnitude (used when knowledge distillation absorbs a task)."""
        last = float(self.alpha[-1])
        self.alpha = nn.Parameter(self.alpha.detach()[:-1].clone(), requires_grad=self.alpha.requires_grad)
        return last

    @torch.no_grad()
    def fill_(self, value: float) -> None:
        """Set every magnitude to ``value`` (``reset_alphas`` at a new task)."""
        self.alpha.fill_(float(value))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: D401
        key = prefix + "alpha"
        if key in state_dict and state_dict[key].shape != self.alpha.shape:
            # A checkpoint taken after more tasks: grow to its shape (on this module's device) before copying.
            self.alpha = nn.Parameter(self.alpha.new_zeros(state_dict[key].shape), requires_grad=self.alpha.requires_grad)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _lowrank_fro_norm(B: Tensor, A: Tensor) -> Tensor:
    """||B A||_F computed from the r x r Gram matrices, never forming B A."""
    sq = torch.einsum("ij,ji->", B.T @ B, A @ A.T)
    return sq.clamp_min(0).sqrt()


def lowrank_inner(B1: Tensor, A1: Tensor, B2: Tensor, A2: Tensor) -> Tensor:
    """Frobenius inner product <B1 A1, B2 A2> without forming either product."""
    return torch.einsum("ij,ji->", B1.T @ B2, A2 @ A1.T)


class SDLoRAQKV(nn.Module):
    """Wraps a frozen fused qkv ``nn.Linear`` and adds SD-LoRA updates to its q and v slices.

    Buffers (per slice, stacked over q and v on dim 0): ``dir_A`` (2, R, in), ``dir_B`` (2, out, R): factors of all
    finished tasks' directions; ``dir_scale`` (2, R): each task's scale (``direction_norm``) repeated over its rank
    rows; ``dir_slot`` (R,): index of the magnitude that scales each rank row.
    Parameters: ``lora_A`` (2, r, in) and ``lora_B`` (2, out, r) of the current task, if any.
    """

    def __init__(self, base_layer: nn.Linear, magnitudes: Magnitudes, normalize_current: bool = False,
                 direction_norm: str = "factors", eps: float = 1e-12) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear) or base_layer.out_features % 3 != 0:
            raise TypeError(f"SDLoRAQKV wraps a fused qkv nn.Linear with 3*dim outputs, got {base_layer!r}")
        if direction_norm not in DIRECTION_NORMS:
            raise ValueError(f"direction_norm must be one of {', '.join(map(repr, DIRECTION_NORMS))}, got {direction_norm!r}")
        self.base_layer = base_layer.requires_grad_(False)
        # A reference, not a submodule: the model owns the magnitudes once.
        object.__setattr__(self, "_magnitudes", magnitudes)
        self.normalize_current, self.direction_norm, self.eps = normalize_current, direction_norm, eps
        self.dim, self.in_features = base_layer.out_features // 3, base_layer.in_features
        w = base_layer.weight
        self.register_buffer("dir_A", w.new_zeros(2, 0, self.in_features))
        self.register_buffer("dir_B", w.new_zeros(2, self.dim, 0))
        self.register_buffer("dir_scale", w.new_zeros(2, 0))
        self.register_buffer("dir_slot", torch.zeros(0, dtype=torch.long, device=w.device))
        self.lora_A: nn.Parameter | None = None
        self.lora_B: nn.Parameter | None = None
        self.current_slot: int | None = None
        # Saved with the weights: a merged state dict holds W0 + update in base_layer.weight, and loading it
        # into an unmerged module would add the update a second time. ``_merged`` mirrors it for forward
        # (reading a CUDA tensor there would synchronise every call).
        self.register_buffer("merged", torch.zeros((), dtype=torch.bool, device=w.device))
        self._merged = False

    # ------------------------------------------------------------------ task lifecycle
    @property
    def magnitudes(self) -> Magnitudes:
        """The model's shared magnitudes (a reference: the model owns them)."""
        return self._magnitudes

    @property
    def stored_rank(self) -> int:
        """Rank rows of all stored directions together (0 before the first task ends)."""
        return int(self.dir_slot.numel())

    @torch.no_grad()
    def add_pair(self, rank: int, slot: int, generator: torch.Generator | None = None) -> None:
        """Start a new task: trainable A (Kaiming-uniform, as in LoRA) and B = 0, scaled by ``alpha[slot]``."""
        if rank <= 0:
            raise ValueError(f"rank must be a positive integer, got {rank}")
        self.refuse_if_merged("add a pair")
        if self.lora_A is not None:
            raise RuntimeError("the current pair must be frozen (freeze_pair) before a new one is added")
        w = self.base_layer.weight
        A = torch.empty(2, rank, self.in_features, device=w.device, dtype=w.dtype)
        bound = 1.0 / math.sqrt(self.in_features)  # == kaiming_uniform_(a=sqrt(5)) on a (rank, in) weight
        A.uniform_(-bound, bound, generator=generator)
        self.lora_A = nn.Parameter(A)
        self.lora_B = nn.Parameter(w.new_zeros(2, self.dim, rank))
        self.current_slot = slot

    def pair_norms(self) -> Tensor:
        """Per slice, the norm the live pair is divided by when it is frozen (``direction_norm``), shape (2,)."""
        A, B = self.lora_A.detach(), self.lora_B.detach()
        if self.direction_norm == "factors":  # the authors' code: ||B||_F ||A||_F (an upper bound)
            return torch.stack([B[s].norm() * A[s].norm() for s in range(2)])
        return torch.stack([_lowrank_fro_norm(B[s], A[s]) for s in range(2)])

    @torch.no_grad()
    def freeze_pair(self) -> None:
        """End the task: store the pair as a frozen direction normalised per slice."""
        if self.lora_A is None:
            return
        self.refuse_if_merged("freeze the pair")
        A, B, rank, norms = self.lora_A.detach(), self.lora_B.detach(), self.lora_A.shape[1], self.pair_norms()
        scale = torch.where(norms > self.eps, 1.0 / norms.clamp_min(self.eps), torch.zeros_like(norms))
        self.dir_A = torch.cat([self.dir_A, A], dim=1)
        self.dir_B = torch.cat([self.dir_B, B], dim=2)
        self.dir_scale = torch.cat([self.dir_scale, scale[:, None].expand(2, rank)], dim=1)
        self.dir_slot = torch.cat([self.dir_slot, self.dir_slot.new_full((rank,), self.current_slot)])
        self.lora_A = self.lora_B = self.current_slot = None

    @torch.no_grad()
    def drop_slot(self, slot: int) -> None:
        """Remove every stored direction scaled by ``slot`` (used by knowledge distillation)."""
        self.refuse_if_merged("drop a direction")
        keep = self.dir_slot != slot
        self.dir_A, self.dir_B = self.dir_A[:, keep], self.dir_B[:, :, keep]
        self.dir_scale, self.dir_slot = self.dir_scale[:, keep], self.dir_slot[keep]
        self.dir_slot = torch.where(self.dir_slot > slot, self.dir_slot - 1, self.dir_slot)

    def directions(self, slot: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Normalised direction of task ``slot`` per slice, as (B * scale, A) factors."""
        rows = self.dir_slot == slot
        for s in range(2):
            yield self.dir_B[s][:, rows] * self.dir_scale[s, rows], self.dir_A[s][rows]

    # ------------------------------------------------------------------ the update
    def delta_weight(self) -> Tensor:
        """Update of the q and v slices, shape (2, dim, in); the one place it is formed."""
        alpha = self.magnitudes.alpha
        w = self.base_layer.weight
        delta = w.new_zeros(2, self.dim, self.in_features)
        if self.stored_rank:
            coef = alpha[self.dir_slot] * self.dir_scale  # (2, R)
            delta = delta + torch.bmm(self.dir_B * coef[:, None, :], self.dir_A)
        if self.lora_A is not None:
            cur = torch.bmm(self.lora_B, self.lora_A)
            if self.normalize_current:  # the paper's form: the pair is a unit direction while training
                norms = cur.flatten(1).norm(dim=1).clamp_min(1e-6)
                cur = cur / norms[:, None, None]
            delta = delta + alpha[self.current_slot] * cur
        return delta

    def full_delta_weight(self) -> Tensor:
        """The update as a (3*dim, in) matrix for the fused qkv weight (zero on k)."""
        dq, dv = self.delta_weight().unbind(0)
        return torch.cat([dq, torch.zeros_like(dq), dv], dim=0)

    def forward(self, x: Tensor) -> Tensor:
        """The qkv projection with the update: W0 + dW formed once per call (or W0 alone when merged)."""
        if self._merged:
            if self.training and self.lora_A is not None and torch.is_grad_enabled():
                raise RuntimeError("this SD-LoRA model is merged, so its current pair would get no gradient; call "
                                   "model.unmerge() before training it (the strategies' growth plugin does)")
            return self.base_layer(x)
        if self.stored_rank == 0 and self.lora_A is None:
            return self.base_layer(x)
        weight = self.base_layer.weight + self.full_delta_weight()
        return F.linear(x, weight, self.base_layer.bias)

    # ------------------------------------------------------------------ merge
    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight: zero inference overhead until ``unmerge``."""
        if not self._merged:
            self.base_layer.weight += self.full_delta_weight()
            self._set_merged(True)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update out again: W0 comes back up to float rounding of (W0 + dW) - dW, not bit for bit."""
        if self._merged:
            self.base_layer.weight -= self.full_delta_weight()
            self._set_merged(False)

    def _set_merged(self, value: bool) -> None:
        self.merged.fill_(value)
        self._merged = value

    def refuse_if_merged(self, what: str) -> None:
        """One sentence when the update is merged: changing it then would make unmerge() subtract another."""
        if self._merged:
            raise RuntimeError(f"cannot {what} while the SD-LoRA update is merged into the base weights; call "
                               "model.unmerge() first (the strategies' growth plugin does)")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Stored directions grow with tasks: resize the buffers to the checkpoint's shapes first.
        # New tensors live on this module's device (the checkpoint's tensors may be elsewhere).
        w = self.base_layer.weight
        for name in ("dir_A", "dir_B", "dir_scale", "dir_slot"):
            key = prefix + name
            if key in state_dict:
                setattr(self, name, getattr(self, name).new_zeros(state_dict[key].shape))
        if prefix + "lora_A" in state_dict and self.lora_A is None:
            self.lora_A = nn.Parameter(w.new_zeros(state_dict[prefix + "lora_A"].shape))
            self.lora_B = nn.Parameter(w.new_zeros(state_dict[prefix + "lora_B"].shape))
        if self.lora_A is not None and self.current_slot is None:
            # Stored slots are 0..n-1 (distillation renumbers), so the live pair's magnitude is slot n.
            slots = state_dict.get(prefix + "dir_slot", self.dir_slot)
            self.current_slot = int(slots.max()) + 1 if slots.numel() else 0
        if prefix + "merged" not in state_dict:  # written before the flag was saved: never merged
            state_dict[prefix + "merged"] = torch.zeros((), dtype=torch.bool)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._merged = bool(state_dict[prefix + "merged"])

    def extra_repr(self) -> str:
        """Sizes and state for print(model)."""
        cur = 0 if self.lora_A is None else self.lora_A.shape[1]
        return f"dim={self.dim}, stored_rank={self.stored_rank}, current_rank={cur}, merged={self._merged}"
