"""Adapter growth: a new low-rank pair and magnitude per experience, frozen into a direction after it.

The growth plugin reads the options in its hooks (its strategy's ``options``: :class:`~avalanche_sdlora.SDLoRA`
merged them once; under any other strategy, its model's), and owns the variant rule of the paper's Table 4 ablations
(``options.variant``, a class of :mod:`avalanche_sdlora.variants`), so no other part of the library branches on it.
"""

from __future__ import annotations

import warnings
from typing import Any

from avalanche.core import SupervisedPlugin
from avalanche.training.utils import _at_task_boundary

from ..model import SDLoRAViT, require_sdlora_model
from ..options import SDLoRAOptions
from ..plugin_compat import announce_new_parameters
from ..variants import VARIANTS, GrowthVariant
from .distillation import DistillationPlugin


def options_of(strategy: Any) -> SDLoRAOptions:
    """The options a growth plugin trains with: its strategy's (SDLoRA's), else its model's (a plain Avalanche one)."""
    options = getattr(strategy, "options", None)
    return options if isinstance(options, SDLoRAOptions) else strategy.model.options


class AdapterGrowthPlugin(SupervisedPlugin, supports_distributed=True):
    """Before each training experience add the new pair and alpha; after it freeze the pair.

    Every option comes from the strategy's :class:`~avalanche_sdlora.options.SDLoRAOptions` (:func:`options_of`): by
    default the authors' code, rank 10, alpha 0.8, every earlier alpha reset to 0.8 at a new task (their backbone is
    rebuilt each task and learned magnitudes are never reloaded; ``reset_alphas=False`` keeps learned magnitudes, as
    the paper's text describes), and ``variant`` one of the paper's ablations (:mod:`avalanche_sdlora.variants`).
    A strategy holds one growth plugin: it is the only one that adds tasks. In an online stream with task boundaries
    (``split_online_stream(..., access_task_boundaries=True)``) a task is the original experience: the pair is added
    at its first sub-experience and frozen after its last.

    Option keywords given here (``AdapterGrowthPlugin(variant=...)``, the former way) still override the strategy's
    options, with a DeprecationWarning: pass them to the strategy instead.
    """

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self._changes = {k: v for k, v in options.items() if v is not None}
        if self._changes:
            warnings.warn(f"AdapterGrowthPlugin({', '.join(self._changes)}=...) is deprecated: pass the options to the "
                          "strategy (SDLoRA(..., variant=...)) or to sdlora_vit; the growth plugin reads them there",
                          DeprecationWarning, stacklevel=2)
            # unknown names and bad values refused now, by name; a variant without reset_alphas meets the strategy's
            SDLoRAOptions(reset_alphas=False).replace(**self._changes)
        self.task = 0  # 0-based index of the next task this plugin adds
        self.variant: GrowthVariant = VARIANTS["full"]()  # the rule of the last task started (set from the options)
        self._resumed_variant: str | None = None  # the variant a loaded checkpoint was trained with
        self._trained: dict[str, object] = {}  # trainable parameter name -> the tensor, when the last task ended

    def options(self, strategy: Any) -> SDLoRAOptions:
        """The options of the next task: the strategy's (:func:`options_of`) with this plugin's deprecated keywords."""
        options = options_of(strategy)
        return options.replace(**self._changes) if self._changes else options

    def rank_for(self, task: int, options: SDLoRAOptions) -> int:
        """Rank of the pair of 0-based ``task``: ``options.rank`` (RankReductionPlugin: its schedule's)."""
        return options.rank

    def before_training_exp(self, strategy, **kwargs) -> None:
        """Add the task's pair and magnitude (as its variant says) and point the optimizer at them."""
        model = require_sdlora_model(strategy.model, type(self).__name__)
        options = self.options(strategy)
        self._check_plugins(strategy.plugins, options)
        if not _at_task_boundary(strategy.experience, before=True):
            return  # a later sub-experience of an online task: same pair, same optimizer
        if self._resumed_variant not in (None, options.variant):
            raise ValueError(f"the checkpoint was trained with variant={self._resumed_variant!r}, this strategy has "
                             f"variant={options.variant!r}; resume with the same variant")
        if type(self.variant).name != options.variant:
            self.variant = VARIANTS[options.variant]()
        model.unmerge()  # a merged model's update is folded into W0; it must come out before the task changes
        self.variant.start_task(model, self.task, self.rank_for(self.task, options), options)
        # Avalanche builds the optimizer before this hook; re-point it at the new trainable set.
        strategy.make_optimizer(reset_optimizer_state=True)
        # The new pair has the finished pair's names and the new head rows new names; the magnitudes only grew.
        new = [n for n, p in model.named_parameters()
               if p.requires_grad and n != "magnitudes.alpha" and self._trained.get(n) is not p]
        announce_new_parameters(strategy.plugins, model, new)

    def after_update(self, strategy, **kwargs) -> None:
        """The variant's step rule (frozen-old-magnitudes writes its held magnitudes back)."""
        self.variant.after_update(strategy.model)

    def after_training_exp(self, strategy, **kwargs) -> None:
        """End the task as its variant says (SD-LoRA: freeze the pair into a stored direction)."""
        if not _at_task_boundary(strategy.experience, before=False):
            return  # the online task goes on in its next sub-experience
        model: SDLoRAViT = strategy.model
        self._trained = {n: p for n, p in model.named_parameters() if p.requires_grad}  # held: ids get reused
        self.variant.end_task(model)
        self.task += 1

    def _check_plugins(self, plugins, options: SDLoRAOptions) -> None:
        growth = [type(p).__name__ for p in plugins if isinstance(p, AdapterGrowthPlugin)]
        if len(growth) > 1:
            raise ValueError(f"the strategy has {len(growth)} adapter-growth plugins ({', '.join(growth)}); keep one: "
                             "RankReductionPlugin is itself the growth plugin, with a rank schedule")
        if options.variant != "full" and any(isinstance(p, DistillationPlugin) for p in plugins):
            raise ValueError(f"variant={options.variant!r} does not combine with knowledge distillation, which folds "
                             "new directions into old magnitudes; use SDLoRA (not SDLoRAKD) and no DistillationPlugin")

    def state_dict(self) -> dict:
        """What a resumed run needs: how many tasks this plugin has added (and its variant, if not 'full')."""
        name = type(self.variant).name
        return {"task": self.task} if name == "full" else {"task": self.task, "variant": name}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; the variant is checked against the strategy's when training resumes."""
        self._resumed_variant = state.get("variant", "full")  # written by 'full' or before variants existed
        if self._resumed_variant in VARIANTS:
            self.variant = VARIANTS[self._resumed_variant]()
        self.task = int(state["task"])
