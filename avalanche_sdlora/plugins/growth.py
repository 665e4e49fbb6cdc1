"""Adapter growth: a new low-rank pair and magnitude per experience, frozen into a direction after it.

The growth plugin is also where the paper's Table 4 ablations live (``variant``, read in
:data:`~avalanche_sdlora.options.VARIANTS`): each is a row of :data:`RULES`, three answers to what happens
at a task boundary, so no other part of the library branches on the variant.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from avalanche.core import SupervisedPlugin
from avalanche.training.utils import _at_task_boundary

from ..model import SDLoRAViT, require_sdlora_model
from ..plugin_compat import announce_new_parameters
from ..options import VARIANTS, check_rank_schedule, check_variant, rank_for_task


@dataclass(frozen=True)
class GrowthRule:
    """What a variant does at the task boundaries."""

    every_task: bool  # a new pair and magnitude at every task (False: at the first task only)
    keep_pair: bool  # the pair stays trainable through later tasks, normalised at each task end (False: frozen)
    freeze_old: bool  # magnitudes of earlier tasks are held at their learned values while a task trains


RULES: dict[str, GrowthRule] = {
    "full": GrowthRule(every_task=True, keep_pair=False, freeze_old=False),
    "fixed-direction": GrowthRule(every_task=False, keep_pair=False, freeze_old=False),
    "single-component": GrowthRule(every_task=False, keep_pair=True, freeze_old=False),
    "frozen-old-magnitudes": GrowthRule(every_task=True, keep_pair=False, freeze_old=True),
}
assert set(RULES) == set(VARIANTS), "every variant in options.VARIANTS needs a growth rule"


class AdapterGrowthPlugin(SupervisedPlugin, supports_distributed=True):
    """Before each training experience add the new pair and alpha; after it freeze the pair.

    Arguments left at None come from the model's options (``sdlora_vit(options=...)``; by default the authors'
    code: rank 10, alpha 0.8, every earlier alpha reset to 0.8 at a new task, since their backbone is rebuilt each
    task and learned magnitudes are never reloaded; ``reset_alphas=False`` keeps learned magnitudes, as the paper's
    text describes). ``rank_schedule`` ``{first 0-based task: rank}`` gives later tasks other ranks (SD-LoRA-RR);
    without one every pair has ``rank``. ``variant`` (default ``"full"``) selects one of the paper's ablations
    (:data:`~avalanche_sdlora.options.VARIANTS`). A strategy holds one growth plugin: it is the only one that adds
    tasks. In an online stream with task boundaries (``split_online_stream(..., access_task_boundaries=True)``) a
    task is the original experience: the pair is added at its first sub-experience and frozen after its last.
    """

    def __init__(self, rank: int | None = None, alpha_init: float | None = None, reset_alphas: bool | None = None,
                 rank_schedule: Mapping[int, int] | None = None, variant: str = "full") -> None:
        super().__init__()
        if rank is not None and rank <= 0:
            raise ValueError(f"rank must be a positive integer, got {rank}")
        check_variant(variant, bool(reset_alphas))  # None: checked against the model's options when training
        self.rank = rank
        self.alpha_init = alpha_init
        self.reset_alphas = reset_alphas
        self.rank_schedule = None if rank_schedule is None else check_rank_schedule(rank_schedule)
        self.variant = variant
        self.rule = RULES[variant]
        self.task = 0  # 0-based index of the next task this plugin adds
        self._trained: dict[str, object] = {}  # trainable parameter name -> the tensor, when the last task ended

    def rank_for(self, task: int) -> int | None:
        """Rank of the pair of 0-based ``task`` (None: the model's rank)."""
        return self.rank if self.rank_schedule is None else rank_for_task(task, self.rank_schedule)

    def before_training_exp(self, strategy, **kwargs) -> None:
        model = require_sdlora_model(strategy.model, type(self).__name__)
        self._check_plugins(strategy.plugins)
        if not _at_task_boundary(strategy.experience, before=True):
            return  # a later sub-experience of an online task: same pair, same optimizer
        reset = model.options.reset_alphas if self.reset_alphas is None else self.reset_alphas
        check_variant(self.variant, reset)
        model.unmerge()  # a merged model's update is folded into W0; it must come out before the task changes
        if self.rule.every_task or self.task == 0:
            model.add_task(rank=self.rank_for(self.task), alpha_init=self.alpha_init, reset_alphas=self.reset_alphas)
        elif reset and not self.rule.keep_pair:
            # fixed-direction: its one magnitude belongs to a finished direction, reset as SD-LoRA resets alpha_1
            model.magnitudes.fill_(model.options.alpha_init if self.alpha_init is None else self.alpha_init)
        model.magnitudes.freeze(range(model.num_directions) if self.rule.freeze_old else [])
        # Avalanche builds the optimizer before this hook; re-point it at the new trainable set.
        strategy.make_optimizer(reset_optimizer_state=True)
        # The new pair has the finished pair's names and the new head rows new names; the magnitudes only grew.
        new = [n for n, p in model.named_parameters()
               if p.requires_grad and n != "magnitudes.alpha" and self._trained.get(n) is not p]
        announce_new_parameters(strategy.plugins, model, new)

    def after_update(self, strategy, **kwargs) -> None:
        strategy.model.magnitudes.restore_frozen_()  # a no-op unless some magnitudes are frozen

    def after_training_exp(self, strategy, **kwargs) -> None:
        if not _at_task_boundary(strategy.experience, before=False):
            return  # the online task goes on in its next sub-experience
        model: SDLoRAViT = strategy.model
        self._trained = {n: p for n, p in model.named_parameters() if p.requires_grad}  # held: ids get reused
        if self.rule.keep_pair:
            model.normalize_task()
        else:
            model.freeze_task()
        self.task += 1

    def _check_plugins(self, plugins) -> None:
        from .distillation import DistillationPlugin

        growth = [type(p).__name__ for p in plugins if isinstance(p, AdapterGrowthPlugin)]
        if len(growth) > 1:
            raise ValueError(f"the strategy has {len(growth)} adapter-growth plugins ({', '.join(growth)}); keep one: "
                             "RankReductionPlugin is itself the growth plugin, with a rank schedule")
        if self.variant != "full" and any(isinstance(p, DistillationPlugin) for p in plugins):
            raise ValueError(f"variant={self.variant!r} does not combine with knowledge distillation, which folds new "
                             "directions into old magnitudes; use SDLoRA (not SDLoRAKD) and no DistillationPlugin")

    def state_dict(self) -> dict:
        """What a resumed run needs: how many tasks this plugin has added (and its variant, if not 'full')."""
        return {"task": self.task} if self.variant == "full" else {"task": self.task, "variant": self.variant}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("variant", "full")  # written by 'full' or before variants existed
        if saved != self.variant:
            raise ValueError(f"the checkpoint was trained with variant={saved!r}, this growth plugin has "
                             f"variant={self.variant!r}; resume with the same variant")
        self.task = int(state["task"])
