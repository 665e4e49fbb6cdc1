"""SD-LoRA-RR: later tasks get lower-rank new pairs."""

from __future__ import annotations

from collections.abc import Mapping

from avalanche.core import SupervisedPlugin

from .growth import AdapterGrowthPlugin

# 0-based task index at which each rank starts. The paper: rank 10, 8 from the 4th task, 6 from
# the 8th. The authors' code switches one task later (``AUTHORS_SCHEDULE``).
PAPER_SCHEDULE: dict[int, int] = {0: 10, 3: 8, 7: 6}
AUTHORS_SCHEDULE: dict[int, int] = {0: 10, 4: 8, 8: 6}


def rank_for_task(task: int, schedule: Mapping[int, int]) -> int:
    """Rank of the pair of 0-based ``task``: the entry with the largest start not after it."""
    starts = sorted(k for k in schedule if k <= task)
    if not starts:
        raise ValueError(f"rank schedule {dict(schedule)} has no entry for task {task}; add one starting at 0")
    return int(schedule[starts[-1]])


class RankReductionPlugin(SupervisedPlugin):
    """Sets the rank of the next pair from a schedule {first 0-based task: rank}."""

    def __init__(self, schedule: Mapping[int, int] | None = None) -> None:
        super().__init__()
        self.schedule = dict(PAPER_SCHEDULE if schedule is None else schedule)
        if 0 not in self.schedule or any(r <= 0 for r in self.schedule.values()):
            raise ValueError(f"rank schedule must start at task 0 with positive ranks, got {self.schedule}")
        self.task = 0

    def before_train_dataset_adaptation(self, strategy, **kwargs) -> None:
        # The earliest per-experience hook: it must run before the growth plugin's before_training_exp.
        growth = [p for p in strategy.plugins if isinstance(p, AdapterGrowthPlugin)]
        if not growth:
            raise RuntimeError("RankReductionPlugin needs an AdapterGrowthPlugin (use the SDLoRA strategy)")
        growth[0].rank = rank_for_task(self.task, self.schedule)

    def after_training_exp(self, strategy, **kwargs) -> None:
        self.task += 1
