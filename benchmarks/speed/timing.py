"""Interleaved timing: ratios of two models measured back to back in one process, so machine load cancels."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from avalanche_sdlora.strategy import current_classes_view

from .models import N_CLASSES, N_HEAD_TASKS


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved(fns: dict[str, Callable[[], object]], reps: int, warmup: int, device: str,
                every: dict[str, int] | None = None) -> dict[str, list[float | None]]:
    """Seconds per call of each function; calls interleaved in a shuffled order every repetition.

    ``every[k] = n`` times ``k`` only every n-th repetition (None elsewhere): precise pairs where a
    ratio is close to its target, fewer calls of slow models whose ratio has a wide margin.
    """
    every = every or {}
    for _ in range(warmup):
        for f in fns.values():
            f()
    sync(device)
    times = {k: [None] * reps for k in fns}
    order, rng = list(fns), random.Random(0)
    for r in range(reps):
        rng.shuffle(order)
        for k in order:
            if r % every.get(k, 1):
                continue
            t0 = time.perf_counter()
            fns[k]()
            sync(device)
            times[k][r] = time.perf_counter() - t0
    return times


def median(v: list[float | None]) -> float:
    return statistics.median(t for t in v if t is not None)


def paired_ratio(num: list[float | None], den: list[float | None]) -> float:
    """Median over repetitions (where both ran) of num[r] / den[r]."""
    return statistics.median(a / b for a, b in zip(num, den) if a is not None and b is not None)


def step_fn(model: nn.Module, loss: Callable[[], Tensor], optimizer: torch.optim.Optimizer) -> Callable[[], float]:
    """One training step: ``loss()`` (the forward and the method's loss) + backward + ``optimizer`` step."""
    model.train()

    def step():
        optimizer.zero_grad(set_to_none=True)
        value = loss()
        value.backward()
        optimizer.step()
        return float(value.detach())

    return step


def strategy_step_fn(strategy: Any, x: Tensor, y: Tensor, classes: list[int]) -> Callable[[], float]:
    """One training iteration of an Avalanche strategy as its ``training_epoch`` runs it, plugin callbacks aside:
    ``zero_grad``, the strategy's own ``forward``, ``criterion``, ``backward`` (CL-LoRA's holds its distillation
    step) and ``optimizer_step`` (MOS's merges), on the minibatch (x, y) of an experience with ``classes``."""
    strategy.model.train()
    strategy.is_training = True
    strategy.experience = SimpleNamespace(classes_in_this_experience=list(classes))
    labels = torch.zeros_like(y)

    def step():
        strategy.mbatch = [x, y, labels]
        strategy.optimizer.zero_grad()
        strategy.mb_output = strategy.forward()
        strategy.loss = strategy.criterion()
        strategy.backward()
        strategy.optimizer_step()
        return float(strategy.loss.detach())

    return step


def sdlora_loss(model: nn.Module, x: Tensor, y: Tensor, classes: list[int]) -> Callable[[], Tensor]:
    """forward + SD-LoRA's loss (cross-entropy over the current classes, the library's)."""
    columns = torch.tensor(classes, device=x.device)
    return lambda: F.cross_entropy(*current_classes_view(model(x), y, columns))


def train_step_fn(model: nn.Module, x: Tensor, y: Tensor, classes: list[int]) -> Callable[[], float]:
    """forward + SD-LoRA's loss (:func:`sdlora_loss`) + backward + SGD step."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9)
    return step_fn(model, sdlora_loss(model, x, y, classes), opt)


def infer_fn(model: nn.Module, x: Tensor) -> Callable[[], Tensor]:
    model.eval()

    def run():
        with torch.inference_mode():
            return model(x)

    return run


def batch(args, img: int, seed: int = 0) -> tuple[Tensor, Tensor, list[int]]:
    """A random batch of the last task's classes (the trainable head chunk)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(args.batch_size, 3, img, img, generator=g).to(args.device)
    classes = list(range(N_CLASSES - N_CLASSES // N_HEAD_TASKS, N_CLASSES))
    y = torch.tensor([classes[i % len(classes)] for i in range(args.batch_size)], device=args.device)
    return x, y, classes


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (torch's counter: matrix products, 2 per multiply-add), attention included.

    torch's counter has formulas for the CUDA attention kernels but not for the CPU flash kernel that
    ``scaled_dot_product_attention`` picks here, whose products it would silently leave out (38.9 MFLOP per image
    of ViT-Tiny at 128 px); the math kernel computes the same attention as counted matrix products.
    """
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


class PassCounter:
    """Images through every timm ``PatchEmbed`` of a model while it counts: a ViT's forward passes, whatever the
    method says (the query pass of a prompt method, APER's frozen branch and its adapted one each embed the image).

    ``blocks``: images through the transformer blocks, each block call counted as ``1 / depth`` of its ViT
    (``depth = len(vit.blocks)``), i.e. the number of full backbones' worth of blocks run; it differs from the
    embedding count where a method runs some blocks more than once per embedding (CL-LoRA's later blocks per task).
    """

    def __init__(self, model: nn.Module) -> None:
        embeds = [m for m in model.modules() if isinstance(m, PatchEmbed)]
        if not embeds:
            raise ValueError(f"{type(model).__name__} has no timm PatchEmbed; forward passes are counted on timm ViTs")
        self.images, self.blocks = 0, 0.0
        self._hooks = [e.register_forward_pre_hook(self._count) for e in embeds]
        seen: set[int] = set()
        for m in model.modules():
            stack = getattr(m, "blocks", None)
            if isinstance(stack, (nn.Sequential, nn.ModuleList)) and len(stack) and id(stack) not in seen:
                seen.add(id(stack))
                share = 1.0 / len(stack)
                self._hooks += [b.register_forward_pre_hook(lambda _m, inputs, share=share: self._block(inputs, share))
                                for b in stack]

    def _count(self, _module, inputs) -> None:
        self.images += int(inputs[0].shape[0])

    def _block(self, inputs, share: float) -> None:
        self.blocks += share * int(inputs[0].shape[0])

    def stop(self) -> int:
        for h in self._hooks:
            h.remove()
        return self.images


def count_inference_costs(fn: Callable[[], object], model: nn.Module, batch_size: int) -> tuple[int, float, float]:
    """FLOPs of one call of ``fn``, the forward passes per image it made through ``model``'s ViTs (patch
    embeddings) and the backbones' worth of transformer blocks per image (:class:`PassCounter`).

    Parameters are counted frozen: FlopCounterMode's module tracker fails on views of trainable tensors made under
    ``inference_mode`` (a prompt expanded to the batch), and inference computes the same either way.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    counter = PassCounter(model)
    try:
        for p in trainable:
            p.requires_grad_(False)
        flops = count_flops(fn)
    finally:
        images = counter.stop()
        for p in trainable:
            p.requires_grad_(True)
    return flops, images / batch_size, round(counter.blocks / batch_size, 6)


def count_flops_and_passes(fn: Callable[[], object], model: nn.Module, batch_size: int) -> tuple[int, float]:
    """FLOPs of one call of ``fn`` and the forward passes per image it made through ``model``'s ViTs."""
    flops, passes, _ = count_inference_costs(fn, model, batch_size)
    return flops, passes
