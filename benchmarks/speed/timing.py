"""Interleaved timing: ratios of two models measured back to back in one process, so machine load cancels."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
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


def train_step_fn(model: nn.Module, x: Tensor, y: Tensor, classes: list[int]) -> Callable[[], float]:
    """forward + SD-LoRA's loss (cross-entropy over the current classes, the library's) + backward + SGD step."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9)
    columns = torch.tensor(classes, device=x.device)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(*current_classes_view(model(x), y, columns))
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


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
    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())
