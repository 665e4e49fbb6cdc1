"""SD-LoRA strategies: thin ``SupervisedTemplate`` subclasses; behaviour comes from plugins."""

from __future__ import annotations

import inspect
import warnings
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from avalanche.benchmarks.scenarios.online import OnlineCLExperience
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins.evaluation import default_evaluator
from avalanche.training.templates import SupervisedTemplate
from avalanche.training.utils import _at_task_boundary
from torch import Tensor, nn
from torch.optim import Optimizer

from .distributed import DataParallelMixin
from .model import SDLoRAViT
from .options import MODEL_FIELDS, STRATEGY_FIELDS, SDLoRAOptions, check_options
from .plugin_compat import check_plugins
from .plugins import AdapterGrowthPlugin, DistillationPlugin, FiniteLossPlugin, InputCheckPlugin, RankReductionPlugin


def current_classes_view(logits: Tensor, targets: Tensor, classes: Tensor | None = None, *,
                         columns: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The logit columns of ``classes`` and of any other class among ``targets``, targets renumbered to them.

    What SD-LoRA's loss sees (the paper's cross-entropy over the current classes; replayed samples keep their
    own class): other columns are left out, not set to -inf, so any criterion taking (logits, targets) works.
    ``columns`` passes that sorted union when the caller already has it (the strategy computes it without a
    device sync).
    """
    cols = torch.unique(torch.cat([classes, targets])) if columns is None else columns  # sorted
    return logits.index_select(1, cols), torch.searchsorted(cols, targets)


def check_autocast_dtype(dtype: Any) -> torch.dtype | None:
    """None (float32 training) or torch.bfloat16; one sentence for anything else."""
    if dtype is None or dtype == torch.float32:
        return None
    if dtype == torch.float16:
        raise ValueError("autocast_dtype=torch.float16 needs loss scaling (torch.amp.GradScaler), which SDLoRA does "
                         "not do; pass autocast_dtype=torch.bfloat16, or None for float32")
    if dtype != torch.bfloat16:
        raise ValueError(f"autocast_dtype must be None (float32) or torch.bfloat16, got {dtype!r}")
    return torch.bfloat16


class SDLoRA(DataParallelMixin, SupervisedTemplate):
    """Scalable Decoupled LoRA (Wu et al., ICLR 2025), used exactly like ``avalanche.training.Naive``.

    Pass ``model.parameters()`` (or any parameters, in as many groups as you like) as the optimizer's: at each
    experience every group keeps its options (hyperparameters and scheduler keys) and the model's trainable
    parameters it holds, by name (the magnitudes stay in the group you put them in); a parameter no group holds yet
    (each task's new pair, each experience's new head rows) joins group ``new_params_group`` (an index, or a function
    of the parameter's name returning one, e.g. ``lambda n: 1 if n.startswith("head.") else 0``). Frozen parameters
    leave the groups; parameters that are not the model's stay unless ``remove_params=True`` is passed to
    ``make_optimizer`` (see :meth:`make_optimizer`). ``alpha_lr`` puts the magnitudes in a group of their own
    (added once, after the user's groups); a scheduler should then be built on an optimizer that already has that group, e.g.
    ``SGD([{"params": others}, {"params": [model.magnitudes.alpha], "lr": a}])``, which needs no ``alpha_lr``.
    The optimizer state is fresh at every experience.

    Loss (``current_classes_only=True``, the paper's): the criterion sees only the logit columns of the current
    experience's classes plus any other class among the minibatch's targets (replayed samples, e.g. from
    ``ReplayPlugin``), with targets renumbered to those columns; other classes are left out as if absent. Without
    replay this is cross-entropy over the current classes; replayed samples thus pull their own class up against
    the current classes and the other replayed classes present. ``current_classes_only=False``: the loss over
    every head column. Any criterion taking (logits, targets) works.

    Options: ``self.options`` is the model's :class:`~avalanche_sdlora.options.SDLoRAOptions` (or ``options=``) with
    the option keywords given here applied once (``rank``, ``alpha_init``, ``reset_alphas``, ``alpha_lr``,
    ``variant``; SDLoRARR adds ``rank_schedule``, SDLoRAKD ``kd_threshold``: together the strategy-scope fields,
    :data:`~avalanche_sdlora.options.STRATEGY_FIELDS`; None counts as not given); the growth plugins read it in their
    hooks. The model-scope options are the model's. ``variant`` selects one of the paper's Table 4 ablations
    (``"fixed-direction"``, ``"single-component"``, ``"frozen-old-magnitudes"``; read exactly in
    ``options.VARIANTS``); the default ``"full"`` is SD-LoRA.

    ``autocast_dtype=torch.bfloat16`` runs the training forward under ``torch.autocast`` (the weights, the optimizer
    and the loss stay float32; evaluation stays float32); the default None trains in float32, exactly. Under
    ``torchrun`` (after ``DistributedHelper.init_distributed``) training is data-parallel and evaluation covers the
    whole set on every rank (:mod:`avalanche_sdlora.distributed`); ``train_mb_size`` is then per rank.
    """

    def __init__(self, *, model: SDLoRAViT, optimizer: Optimizer, criterion: nn.Module | None = None,
                 train_mb_size: int = 1, train_epochs: int = 1, eval_mb_size: int | None = None,
                 device: str | torch.device = "cpu", plugins: Sequence[SupervisedPlugin] | None = None,
                 evaluator=default_evaluator, eval_every: int = -1, peval_mode: str = "epoch",
                 options: SDLoRAOptions | None = None, rank: int | None = None, alpha_init: float | None = None,
                 reset_alphas: bool | None = None, alpha_lr: float | None = None, variant: str | None = None,
                 current_classes_only: bool = True, autocast_dtype: torch.dtype | None = None,
                 growth: SupervisedPlugin | None = None, new_params_group: int | Callable[[str], int] = 0,
                 **base_kwargs: Any) -> None:
        given = {k: v for k, v in locals().items() if k in STRATEGY_FIELDS}  # the option keywords above, as passed
        if not isinstance(model, SDLoRAViT):
            raise TypeError(f"{type(self).__name__} needs a model built by sdlora_vit(...), got {type(model).__name__}")
        self.options = self._merge_options(model, options, {**given, **self._own_options()})
        if int(train_mb_size) <= 0:
            raise ValueError(f"train_mb_size must be a positive integer, got {train_mb_size}")
        if int(train_epochs) < 0:  # 0, as under Naive: the plugins run (e.g. fill a replay buffer), nothing trains
            raise ValueError(f"train_epochs must be 0 or more, got {train_epochs}")
        self.current_classes_only = current_classes_only
        self.autocast_dtype = check_autocast_dtype(autocast_dtype)
        user = list(plugins or [])
        user_growth = [p for p in user if isinstance(p, AdapterGrowthPlugin)]
        if len(user_growth) > 1 or (user_growth and growth is not None):
            raise ValueError("pass one adapter-growth plugin (growth= or one AdapterGrowthPlugin/RankReductionPlugin "
                             "in plugins=); each adds a task per experience")
        # A growth plugin in ``plugins`` (e.g. RankReductionPlugin) or ``growth`` replaces the default one
        # (the benchmarks' sequential-LoRA baseline passes ``growth``).
        # The growth plugin goes first (a user's one included), so every other plugin sees the experience's
        # parameters and, after the experience, the finished pair frozen into its direction, whatever the order given.
        own = user_growth or [growth or self._growth_plugin()]
        own += [FiniteLossPlugin(), InputCheckPlugin()] + self._extra_plugins()
        user = [p for p in user if not any(p is g for g in user_growth)]
        check_plugins(own + user, type(self).__name__)
        self.new_params_group = new_params_group
        self._placed: list[Tensor] = []  # what make_optimizer put in the groups last time (held: ids get reused)
        self._seen_classes: set[int] = set()
        self._trained_in: dict[int, int] = {}  # class -> experience that trained it (for error messages)
        self._param_group: dict[str, int] | None = None  # parameter name -> optimizer group index
        self._columns: Tensor | None = None  # the current experience's classes, as logit columns (on the device)
        self._columns_host: Tensor | None = None  # the same on the CPU
        self._targets: tuple[Tensor, Tensor] | None = None  # (targets on the device, the loader's CPU copy)
        super().__init__(model=model, optimizer=optimizer, criterion=criterion or nn.CrossEntropyLoss(),
                         train_mb_size=train_mb_size, train_epochs=train_epochs, eval_mb_size=eval_mb_size,
                         device=device, plugins=own + user, evaluator=evaluator,
                         eval_every=eval_every, peval_mode=peval_mode, **base_kwargs)

    def _merge_options(self, model: SDLoRAViT, options: SDLoRAOptions | None, given: dict) -> SDLoRAOptions:
        """``options`` (default: the model's) with the option keywords ``given`` (those not None) applied, once.

        Model-scope options are fixed when the model is built: ``options`` whose model-scope fields differ from the
        model's are refused by name, not silently ignored.
        """
        base = model.options if options is None else check_options(options, type(self).__name__)
        for name in MODEL_FIELDS:
            if getattr(base, name) != getattr(model.options, name):
                raise ValueError(f"options.{name}={getattr(base, name)!r} differs from the model's "
                                 f"{getattr(model.options, name)!r}; it is fixed when the model is built: pass it "
                                 "to sdlora_vit(...) instead")
        changes = {k: v for k, v in given.items() if v is not None}
        return base.replace(**changes) if changes else base

    def _own_options(self) -> dict[str, Any]:
        """A variant's own option keyword (SDLoRARR's ``rank_schedule``, SDLoRAKD's ``kd_threshold``), set before
        ``SDLoRA.__init__`` runs: Avalanche refuses keywords ``SDLoRA``'s signature does not name."""
        return {}

    @property
    def alpha_lr(self) -> float | None:
        """Learning rate of the magnitudes' own parameter group (``options.alpha_lr``; None: the optimizer's)."""
        return self.options.alpha_lr

    def _growth_plugin(self) -> AdapterGrowthPlugin:
        """The growth plugin this strategy adds when it is given none (it reads ``self.options`` in its hooks)."""
        return AdapterGrowthPlugin()

    def _extra_plugins(self) -> list[SupervisedPlugin]:
        return []

    def _before_training(self, **kwargs) -> None:
        check_plugins(self.plugins, type(self).__name__)  # plugins added after construction (strategy.plugins.append)
        super()._before_training(**kwargs)

    def _before_training_exp(self, **kwargs) -> None:
        # Class-incremental input is checked before anything changes in the model.
        exp = self.experience
        if len(exp.dataset) == 0:
            raise ValueError(f"experience {exp.current_experience} has no samples; every experience needs training data")
        classes = set(self._task_classes())
        if not _at_task_boundary(exp, before=True):  # a later sub-experience of an online task: checked at its first
            classes = set()
        shared = sorted(classes & self._seen_classes)
        if shared:
            where = sorted({self._trained_in[c] for c in shared if c in self._trained_in})
            raise ValueError(
                f"experience {exp.current_experience} shares classes {shared[:10]} with earlier experiences"
                f"{f' (trained in experience {where})' if where else ''}; SD-LoRA is class-incremental: every "
                "experience needs classes no earlier experience had (a class-incremental benchmark such as "
                "class_incremental_benchmark or nc_benchmark gives that), and training one experience twice "
                "needs a fresh model and strategy")
        if self.current_classes_only and len(classes) == 1:
            warnings.warn(f"experience {exp.current_experience} holds a single class ({next(iter(classes))}): the "
                          "current-classes loss over one class is 0 and trains nothing (unless replayed samples of "
                          "other classes are in a minibatch); use more classes per experience or "
                          "current_classes_only=False", UserWarning, stacklevel=2)
        self._columns = self._columns_host = None
        super()._before_training_exp(**kwargs)

    def _after_training_exp(self, **kwargs) -> None:
        if _at_task_boundary(self.experience, before=False):
            for c in self._task_classes():
                self._seen_classes.add(c)
                self._trained_in[c] = int(self._task_experience().current_experience)
        super()._after_training_exp(**kwargs)

    def _task_experience(self) -> Any:
        """The experience whose classes the current task learns (an online sub-experience's original one)."""
        exp = self.experience
        if isinstance(exp, OnlineCLExperience) and exp.access_task_boundaries:
            return exp.origin_experience
        return exp

    def _task_classes(self) -> list[int]:
        """The current task's classes; one sentence when the stream does not say them."""
        classes = getattr(self._task_experience(), "classes_in_this_experience", None)
        if classes is not None:
            return sorted(int(c) for c in classes)
        n = self.experience.current_experience
        if isinstance(self.experience, OnlineCLExperience):
            raise ValueError(f"online experience {n} has no class list and no task boundaries; SD-LoRA adds a pair and "
                             "head rows per task for its classes: build the stream with split_online_stream(stream, "
                             "experience_size, access_task_boundaries=True) from a class-incremental stream")
        raise ValueError(f"experience {n} has no classes_in_this_experience; SD-LoRA adds head rows for an "
                         "experience's classes and needs that list: use a class-incremental benchmark "
                         "(class_incremental_benchmark, nc_benchmark) or give each experience its classes")

    def make_optimizer(self, reset_optimizer_state: bool = True, remove_params: bool = False, **kwargs) -> None:
        """Put every trainable parameter of the model in its group; leave each group's options as they are.

        A parameter keeps the group it is in (by name: the magnitudes and the pair are new tensors at every task);
        one no group holds yet (a new pair, new head rows) joins group ``new_params_group``. Frozen parameters of the
        model (their stale gradients cleared), and tensors the model no longer holds (a finished pair), leave the
        groups; a parameter that is not
        the model's (the user's own) stays unless ``remove_params=True``, as in Avalanche's ``update_optimizer``.

        Not Avalanche's ``update_optimizer``: it places a parameter it has never seen by the groups of its known
        neighbours in the module tree, and ours are new at every experience while their neighbours are frozen; with
        the magnitudes in a group of their own it put the new pair and head rows into the magnitudes' group
        (measured: groups of 0 and 27 parameters), training them at the magnitudes' rate.
        """
        groups = self.optimizer.param_groups
        named = dict(self.model.named_parameters())
        ours = {id(p) for p in list(named.values()) + self._placed}
        first = self._param_group is None
        self._param_group = self._param_group or {}
        for g, group in enumerate(groups):  # where the parameters are now (the user may have moved some)
            held = {id(p) for p in group["params"]}
            self._param_group.update({n: g for n, p in named.items() if id(p) in held})
        if first and self.alpha_lr is not None:
            self._alpha_group(groups)
        for group in groups:
            group["params"] = [p for p in group["params"] if id(p) not in ours and not remove_params]
        trainable = {n: p for n, p in named.items() if p.requires_grad}
        for p in named.values():
            if not p.requires_grad:  # a frozen head row keeps its last gradient, and no optimizer clears it any more:
                p.grad = None        # plugins reading .grad (GEM, EWC, RWalk) would count it as the current one
        for n, p in trainable.items():
            g = self._param_group.get(n)
            if g is None:
                g = self._param_group[n] = self._new_group(n, len(groups))
            groups[g]["params"].append(p)
        self._placed = list(trainable.values())
        if reset_optimizer_state:
            self.optimizer.state = defaultdict(dict)
        else:
            keep = {id(p) for group in groups for p in group["params"]}
            self.optimizer.state = defaultdict(dict, {p: s for p, s in self.optimizer.state.items() if id(p) in keep})
        self.optimized_param_id = trainable

    def _new_group(self, name: str, n_groups: int) -> int:
        """The optimizer group a parameter no group holds yet joins (``new_params_group``)."""
        rule = self.new_params_group
        g = rule(name) if callable(rule) else rule
        if not isinstance(g, int) or not -n_groups <= g < n_groups:
            raise ValueError(f"new_params_group gave {g!r} for the new parameter '{name}', and the optimizer has "
                             f"{n_groups} parameter groups; pass an index below {n_groups} (or a function of the "
                             "parameter's name returning one)")
        return g % n_groups

    def _alpha_group(self, groups: list[dict]) -> None:
        """Give the magnitudes ``alpha_lr``: in their own group if the user made one, else in a new last group."""
        alpha = "magnitudes.alpha"
        g = self._param_group.get(alpha)
        if g is not None and all(v != g for n, v in self._param_group.items() if n != alpha):
            group = groups[g]
        else:  # a copy of the group they shared, hyperparameters and scheduler keys included
            group = {k: v for k, v in groups[0 if g is None else g].items() if k != "params"} | {"params": []}
            groups.append(group)
            self._param_group[alpha] = len(groups) - 1
        group["lr"] = self.alpha_lr
        if "initial_lr" in group:
            group["initial_lr"] = self.alpha_lr

    def forward(self) -> Tensor:
        """The model's logits (under ``autocast_dtype`` while training, returned as float32)."""
        if self.autocast_dtype is None or not self.is_training:
            return super().forward()
        with torch.autocast(self.device.type, dtype=self.autocast_dtype):
            out = super().forward()
        return out.float()  # the criterion (and any loss a plugin adds) sees float32 logits

    def _unpack_minibatch(self) -> None:
        y = self.mbatch[1] if len(self.mbatch) > 1 else None
        super()._unpack_minibatch()
        self._targets = (self.mbatch[1], y) if isinstance(y, Tensor) and y.device.type == "cpu" else None

    def criterion(self) -> Tensor:
        """The loss over the current classes' columns (and replayed classes'), or over all of them."""
        out, y = self.mb_output, self.mb_y
        if self.is_training and self.current_classes_only and self.experience is not None:
            out, y = current_classes_view(out, y, columns=self._loss_columns(y, out.device))
        return self._criterion(out, y)

    def _loss_columns(self, y: Tensor, device: torch.device) -> Tensor:
        """The current classes and any other class among the targets (replay), sorted, as logit columns on ``device``.

        ``torch.unique`` of a device tensor waits for the device (its size is data), so on an accelerator the union is
        taken on the loader's CPU copy of the targets when they are unchanged since unpacking; on the CPU the two
        are one tensor and this is the union of the current columns and the targets, as it always was.
        """
        host = self._targets[1] if self._targets is not None and self._targets[0] is y else None
        current = self._current_columns(device)
        if device.type == "cpu" or host is None:
            return torch.unique(torch.cat([current, y]))
        cols = torch.unique(torch.cat([self._columns_host, host]))
        if len(cols) == len(current):  # no class outside the current ones: the cached device columns
            return current
        return (cols.pin_memory() if device.type == "cuda" else cols).to(device, non_blocking=True)

    def _current_columns(self, device: torch.device) -> Tensor:
        if self._columns is None or self._columns.device != device:  # reset at every training experience
            classes = self._task_classes()
            self._columns_host = torch.tensor(classes, dtype=torch.long)
            self._columns = self._columns_host.to(device)
        return self._columns


def _with_sdlora_signature_of(own: str) -> Callable[[type[SDLoRA]], type[SDLoRA]]:
    return lambda cls: _with_sdlora_signature(cls, own)


def _with_sdlora_signature(cls: type[SDLoRA], own: str) -> type[SDLoRA]:
    """``cls`` whose ``__init__`` shows SDLoRA's keywords, in SDLoRA's order, then its own ``own`` keyword.

    Why: the variants take ``**kwargs`` and pass them to SDLoRA, but Avalanche reads a strategy's signature: it warns
    on every construction of a class whose ``__init__`` has ``*args``, and maps a legacy positional call
    (``SDLoRARR(model, optimizer, ...)``, with its deprecation warning, as for ``Naive``) onto the keyword-only
    parameters in signature order. With this signature the call maps as SDLoRA's does, and ``help()`` lists every
    argument the variant takes.
    """
    base = [p for p in inspect.signature(SDLoRA.__init__).parameters.values() if p.kind is not p.VAR_KEYWORD]
    var_keyword = [p for p in inspect.signature(SDLoRA.__init__).parameters.values() if p.kind is p.VAR_KEYWORD]
    init = getattr(cls.__init__, "__wrapped__", cls.__init__)  # the function Avalanche's wrapper inspects and calls
    init.__signature__ = inspect.Signature([*base, inspect.signature(init).parameters[own], *var_keyword])
    return cls


@_with_sdlora_signature_of("rank_schedule")
class SDLoRARR(SDLoRA):
    """SD-LoRA-RR: SD-LoRA whose later tasks get lower-rank pairs (``rank_schedule``, default the paper's).

    Takes every SDLoRA keyword argument; the ranks come from ``rank_schedule`` {first 0-based task:
    rank} (default: ``options.rank_schedule``, the paper's), so ``rank`` is refused.
    """

    def __init__(self, *, rank_schedule: Mapping[int, int] | None = None, **kwargs: Any) -> None:
        if kwargs.get("rank") is not None:
            raise ValueError("SDLoRARR takes each task's rank from rank_schedule; pass rank_schedule={0: r} for a "
                             "constant rank r, not rank=r")
        self._rank_schedule = rank_schedule
        super().__init__(**kwargs)

    def _own_options(self) -> dict[str, Any]:
        return {"rank_schedule": self._rank_schedule}

    def _growth_plugin(self) -> AdapterGrowthPlugin:
        return RankReductionPlugin(self.options.schedule)


@_with_sdlora_signature_of("kd_threshold")
class SDLoRAKD(SDLoRA):
    """SD-LoRA-KD: a new direction the old ones already span is folded into their magnitudes.

    ``kd_threshold`` (default: ``options.kd_threshold``, the paper's 9e-4) is the largest ||r||^2 / ||D_t||^2 of a
    direction that is absorbed (:class:`~avalanche_sdlora.plugins.DistillationPlugin`).
    """

    def __init__(self, *, kd_threshold: float | None = None, **kwargs: Any) -> None:
        self._kd_threshold = kd_threshold
        super().__init__(**kwargs)

    def _own_options(self) -> dict[str, Any]:
        return {"kd_threshold": self._kd_threshold}

    def _extra_plugins(self) -> list[SupervisedPlugin]:
        return [DistillationPlugin(self.options.kd_threshold)]
