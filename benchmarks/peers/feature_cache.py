"""Evaluation features of a frozen backbone, computed once per test minibatch and reused at every later evaluation.

Why: the harness evaluates every seen experience after every experience (AAA and the seen-class curve need it), so a
50-task run forwards each test image ~25 times on average. For SimpleCIL, and for RanPAC and APER once their first
session is over, the backbone never changes again: every later pass recomputes the same features, and on a CPU that
is ~95 % of such a run (SimpleCIL at 50 tasks on the AMD EPYC: 2.1 min of feature passes for training, 46 min of
evaluation). Neither Avalanche nor timm memoise a module's outputs, hence this small cache.

What makes a reuse exact: a minibatch is keyed by its content (shape, dtype and a BLAKE2 digest of its bytes) and by the
autocast state it is computed under; the whole cache is dropped as soon as any parameter or buffer of the backbone
changes (PyTorch's in-place version counter, which ``load_state_dict`` and optimiser steps advance, or a tensor
replaced). Evaluation loaders do not shuffle, so every later evaluation sees the same minibatches and gets the very
tensors the first computation gave: the run's numbers are bit-identical to an uncached run's
(``tests/test_feature_cache.py``). Used only in eval mode without gradients, and only for tensors on the CPU (hashing a
GPU minibatch would cost a device-to-host copy, and a GPU's forward is cheap anyway).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["FrozenFeatureCache", "DEFAULT_MAX_ELEMENTS"]

DEFAULT_MAX_ELEMENTS = 2**28  # 1 GiB of float32 features; past it, no new minibatch is stored (hits still served)


class FrozenFeatureCache:
    """``cache(fn, x, module)``: ``fn(x)``, memoised while ``module``'s weights and the autocast state are unchanged.

    A hit returns the stored tensor itself: callers read it (the classifiers here do) and never modify it in place.
    """

    def __init__(self, max_elements: int = DEFAULT_MAX_ELEMENTS) -> None:
        if max_elements < 0:
            raise ValueError(f"max_elements must be >= 0, got {max_elements}")
        self.max_elements = max_elements
        self._store: dict[tuple, Tensor] = {}
        self._weights: tuple | None = None
        self.elements = 0  # numbers stored
        self.hits = 0
        self.misses = 0

    def clear(self) -> None:
        self._store.clear()
        self._weights = None
        self.elements = 0

    def __len__(self) -> int:
        return len(self._store)

    def __call__(self, fn: Callable[[Tensor], Tensor], x: Tensor, module: nn.Module) -> Tensor:
        if x.device.type != "cpu" or module.training or torch.is_grad_enabled():
            return fn(x)
        weights = _weights_state(module)
        if weights != self._weights:  # first call, or the backbone changed: nothing stored is valid any more
            self.clear()
            self._weights = weights
        key = (tuple(x.shape), x.dtype, torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"),
               _digest(x))
        out = self._store.get(key)
        if out is not None:
            self.hits += 1
            return out
        self.misses += 1
        out = fn(x)
        if self.elements + out.numel() <= self.max_elements:
            # a copy: a backbone's pooled output is often a view of its whole token tensor, which would stay alive
            self._store[key] = out.detach().clone()
            self.elements += out.numel()
        return out


def _digest(x: Tensor) -> bytes:
    flat = x.detach().contiguous().reshape(-1)
    return hashlib.blake2b(flat.view(torch.uint8).numpy(), digest_size=16).digest()


def _weights_state(module: nn.Module) -> tuple:
    """Identity and in-place version of every parameter and buffer: changes when any of them does."""
    return tuple((t.data_ptr(), t._version, t.dtype) for t in (*module.parameters(), *module.buffers()))
