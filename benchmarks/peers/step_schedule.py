"""A reference's per-epoch learning-rate curve followed per iteration, for epoch budgets it was not written for
(issue 30).

CODA-Prompt's ``CosineSchedule`` (``utils/schedulers.py``; InfLoRA's is the same code) sets ``lr * cos(99 pi e /
(200 (K - 1)))`` at epoch ``e`` of ``K``, stepped per epoch. Over its own 20 epochs that is a smooth decay to 1.6 %
of the rate; over our 3 it is three plateaus, 1.0, 0.71 and 0.016, so the last third of training runs at 1.6 %
(mean factor 0.57). Stepped per iteration over all ``S`` iterations of a task, the same curve keeps the
reference's relative shape (mean factor 0.64, as over 20 epochs) whatever the number of epochs: that is
``schedule="cosine-steps"`` of CODA-Prompt and InfLoRA, the form the tuned protocol uses; ``"cosine"`` (per epoch)
stays the reference's literal form.

Avalanche's ``LRSchedulerPlugin(step_granularity="iteration")`` would step a torch scheduler per iteration, but the
curve's length is the task's iteration count, known only once its data loader exists; this plugin reads it there.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from avalanche.core import SupervisedPlugin


def coda_curve(progress: float) -> float:
    """CODA-Prompt's CosineSchedule factor at ``progress`` = e / (K - 1) in [0, 1]: cos(99 pi p / 200)."""
    return math.cos(99 * math.pi * progress / 200)


def annealing_curve(progress: float) -> float:
    """torch's CosineAnnealingLR (eta_min 0) factor at ``progress`` = e / T_max in [0, 1): (1 + cos(pi p)) / 2."""
    return (1 + math.cos(math.pi * progress)) / 2


class StepSchedulePlugin(SupervisedPlugin):
    """Set every parameter group's lr to ``base * curve(progress)`` before each training iteration of a task.

    ``progress`` runs over the task's iterations: ``s / (S - 1)`` (``endpoint=True``: the curve's last value is
    reached on the last iteration, as CODA's ``e / (K - 1)``) or ``s / S`` (``endpoint=False``: as
    ``CosineAnnealingLR``'s ``e / T_max``). ``base`` is each group's lr when the plugin first saw it (kept in the
    group as ``initial_lr``, torch's schedulers' key), so every task starts again at the full rate.
    """

    def __init__(self, curve: Callable[[float], float], *, endpoint: bool = True) -> None:
        super().__init__()
        self.curve, self.endpoint = curve, endpoint
        self.step = self.total = 0

    def before_training_exp(self, strategy, **kwargs) -> None:
        self.total = int(strategy.train_epochs) * len(strategy.dataloader)
        self.step = 0
        for group in strategy.optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])

    def factor(self, step: int) -> float:
        """The lr factor of iteration ``step`` of the task."""
        span = self.total - 1 if self.endpoint else self.total
        return self.curve(step / span) if span > 0 else 1.0

    def before_training_iteration(self, strategy, **kwargs) -> None:
        f = self.factor(self.step)
        for group in strategy.optimizer.param_groups:
            group["lr"] = group.setdefault("initial_lr", group["lr"]) * f
        self.step += 1
