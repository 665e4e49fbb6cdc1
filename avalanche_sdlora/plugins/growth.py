"""Adapter growth: a new low-rank pair and magnitude per experience, frozen into a direction after it."""

from __future__ import annotations

from avalanche.core import SupervisedPlugin


class AdapterGrowthPlugin(SupervisedPlugin):
    """Before each training experience add the new pair and alpha; after it freeze the pair.

    Defaults follow the authors' code: alpha starts at 0.8 and every earlier alpha is reset to 0.8
    at a new task (their backbone is rebuilt each task and learned magnitudes are never reloaded).
    ``reset_alphas=False`` keeps learned magnitudes, as the paper's text describes.
    """

    def __init__(self, rank: int | None = None, alpha_init: float = 0.8, reset_alphas: bool = True) -> None:
        super().__init__()
        if rank is not None and rank <= 0:
            raise ValueError(f"rank must be a positive integer, got {rank}")
        self.rank = rank
        self.alpha_init = alpha_init
        self.reset_alphas = reset_alphas

    def before_training_exp(self, strategy, **kwargs) -> None:
        strategy.model.add_task(rank=self.rank, alpha_init=self.alpha_init, reset_alphas=self.reset_alphas)
        # Avalanche builds the optimizer before this hook; rebuild it over the new trainable set.
        strategy.make_optimizer(reset_optimizer_state=True)

    def after_training_exp(self, strategy, **kwargs) -> None:
        strategy.model.freeze_task()
