"""SD-LoRA-RR: the growth plugin with a rank schedule, so later tasks get lower-rank new pairs."""

from __future__ import annotations

from collections.abc import Mapping

from ..options import AUTHORS_SCHEDULE, PAPER_SCHEDULE, rank_for_task
from .growth import AdapterGrowthPlugin

__all__ = ["RankReductionPlugin", "PAPER_SCHEDULE", "AUTHORS_SCHEDULE", "rank_for_task"]


class RankReductionPlugin(AdapterGrowthPlugin, supports_distributed=True):
    """:class:`AdapterGrowthPlugin` whose pair ranks follow ``schedule`` {first 0-based task: rank}.

    The default is the paper's (:data:`PAPER_SCHEDULE`); :data:`AUTHORS_SCHEDULE` switches one task later.
    It replaces the plain growth plugin (a strategy holds one), so there is no hook order to get right.
    """

    def __init__(self, schedule: Mapping[int, int] | None = None, *, alpha_init: float | None = None,
                 reset_alphas: bool | None = None, variant: str = "full") -> None:
        super().__init__(alpha_init=alpha_init, reset_alphas=reset_alphas,
                         rank_schedule=PAPER_SCHEDULE if schedule is None else schedule, variant=variant)

    @property
    def schedule(self) -> dict[int, int]:
        return dict(self.rank_schedule)
