"""Adapter growth: a new low-rank pair and magnitude per experience, frozen into a direction after it."""

from __future__ import annotations

from collections.abc import Mapping

from avalanche.core import SupervisedPlugin

from ..model import require_sdlora_model
from ..options import check_rank_schedule, rank_for_task


class AdapterGrowthPlugin(SupervisedPlugin):
    """Before each training experience add the new pair and alpha; after it freeze the pair.

    Arguments left at None come from the model's options (``sdlora_vit(options=...)``; by default the authors'
    code: rank 10, alpha 0.8, every earlier alpha reset to 0.8 at a new task, since their backbone is rebuilt each
    task and learned magnitudes are never reloaded; ``reset_alphas=False`` keeps learned magnitudes, as the paper's
    text describes). ``rank_schedule`` ``{first 0-based task: rank}`` gives later tasks other ranks (SD-LoRA-RR);
    without one every pair has ``rank``. A strategy holds one growth plugin: it is the only one that adds tasks.
    """

    def __init__(self, rank: int | None = None, alpha_init: float | None = None, reset_alphas: bool | None = None,
                 rank_schedule: Mapping[int, int] | None = None) -> None:
        super().__init__()
        if rank is not None and rank <= 0:
            raise ValueError(f"rank must be a positive integer, got {rank}")
        self.rank = rank
        self.alpha_init = alpha_init
        self.reset_alphas = reset_alphas
        self.rank_schedule = None if rank_schedule is None else check_rank_schedule(rank_schedule)
        self.task = 0  # 0-based index of the next task this plugin adds

    def rank_for(self, task: int) -> int | None:
        """Rank of the pair of 0-based ``task`` (None: the model's rank)."""
        return self.rank if self.rank_schedule is None else rank_for_task(task, self.rank_schedule)

    def before_training_exp(self, strategy, **kwargs) -> None:
        model = require_sdlora_model(strategy.model, type(self).__name__)
        growth = [type(p).__name__ for p in strategy.plugins if isinstance(p, AdapterGrowthPlugin)]
        if len(growth) > 1:
            raise ValueError(f"the strategy has {len(growth)} adapter-growth plugins ({', '.join(growth)}); keep one: "
                             "RankReductionPlugin is itself the growth plugin, with a rank schedule")
        model.unmerge()  # a merged model's update is folded into W0; it must come out before the task changes
        model.add_task(rank=self.rank_for(self.task), alpha_init=self.alpha_init, reset_alphas=self.reset_alphas)
        # Avalanche builds the optimizer before this hook; re-point it at the new trainable set.
        strategy.make_optimizer(reset_optimizer_state=True)

    def after_training_exp(self, strategy, **kwargs) -> None:
        strategy.model.freeze_task()
        self.task += 1

    def state_dict(self) -> dict:
        """What a resumed run needs: how many tasks this plugin has added."""
        return {"task": self.task}

    def load_state_dict(self, state: dict) -> None:
        self.task = int(state["task"])
