"""SD-LoRA-RR: the growth plugin with a rank schedule, so later tasks get lower-rank new pairs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..options import AUTHORS_SCHEDULE, PAPER_SCHEDULE, SDLoRAOptions, check_rank_schedule, rank_for_task
from .growth import AdapterGrowthPlugin

__all__ = ["RankReductionPlugin", "PAPER_SCHEDULE", "AUTHORS_SCHEDULE", "rank_for_task"]


class RankReductionPlugin(AdapterGrowthPlugin, supports_distributed=True):
    """:class:`AdapterGrowthPlugin` whose pair ranks follow ``schedule`` {first 0-based task: rank}.

    The default is the paper's (:data:`PAPER_SCHEDULE`); :data:`AUTHORS_SCHEDULE` switches one task later. Every
    other option (``alpha_init``, ``reset_alphas``, ``variant``) is the strategy's, read in the hooks, as for the
    plain growth plugin. It replaces that plugin (a strategy holds one), so there is no hook order to get right.
    """

    def __init__(self, schedule: Mapping[int, int] = PAPER_SCHEDULE, **options: Any) -> None:
        super().__init__(**options)
        self.rank_schedule = check_rank_schedule(PAPER_SCHEDULE if schedule is None else schedule)

    @property
    def schedule(self) -> dict[int, int]:
        """The rank schedule as a dict {first 0-based task: rank}."""
        return dict(self.rank_schedule)

    def rank_for(self, task: int, options: SDLoRAOptions) -> int:
        """Rank of the pair of 0-based ``task``: the schedule's."""
        return rank_for_task(task, self.rank_schedule)
