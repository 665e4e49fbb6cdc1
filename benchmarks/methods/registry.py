"""The method registry: a name maps to its builder and traits, as timm's ``@register_model`` maps a model name.

A method is one module of :mod:`benchmarks.methods` whose builder is decorated with :func:`register_method`; the
harness asks the registry, never a ``method ==`` branch, what a method stores, whether it checkpoints, how it is
scheduled, how many forward passes it costs at inference and which optimizer and learning rate it trains with.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.templates import SupervisedTemplate

    from ..config import RunConfig

Builder = Callable[["RunConfig", int, "EvaluationPlugin", list], "SupervisedTemplate"]
SCHEDULES = ("each-experience", "joint")


@dataclass(frozen=True)
class Recipe:
    """The optimizer and learning rate a method trains with under a RunConfig, and where they come from."""

    optimizer: str | None  # None: nothing is trained by gradient (prototype and ridge classifiers)
    lr: float | None
    source: str  # "protocol" (the shared recipe), "reference" (the method's own), "--method-option", "none"


@dataclass(frozen=True)
class Method:
    """A compared method: how to build its strategy from a RunConfig, and the traits the harness needs.

    ``build(cfg, num_classes, evaluator, plugins)`` returns a ready Avalanche strategy; ``stored_params(strategy)``
    counts what the method keeps beyond the frozen pretrained backbone; ``checkpointable`` methods resume from
    their last finished experience, others restart; ``schedule`` "joint" trains once on the whole stream;
    ``recipe(cfg)`` says which optimizer and lr ``build`` uses; ``extra_columns(strategy, experience)`` adds
    per-experience columns (KD's decision); ``options`` are the builder keywords ``--method-option`` may set;
    ``reference_hparams`` maps a hyperparameter to (value, source); ``single_process_only`` says why the method
    cannot run data-parallel under torchrun (None: it can, see :mod:`benchmarks.distributed`); ``train_amp``: the
    builder honours ``--train-amp bf16`` itself (the runner gives the others :class:`benchmarks.train_amp.TrainingAutocastPlugin`).
    ``inference_forward_passes`` is a count, or a function of the number of tasks learned (CaRE's and MOS's grow
    with them); read it through :meth:`forward_passes`. ``inference_backbones``: backbones' worth of transformer
    blocks per test image after n tasks, where it differs from the passes (CL-LoRA: one embedding, its later blocks
    once per task); read it through :meth:`backbones_per_image`. ``recipe_of`` names the method whose tuned recipe a variant
    shares (SD-LoRA-RR and -KD train as SD-LoRA does, as in the paper).
    """

    name: str
    build: Builder
    summary: str
    stored_params: Callable[[Any], int]
    recipe: Callable[["RunConfig"], Recipe]
    checkpointable: bool = False
    schedule: str = "each-experience"
    inference_forward_passes: int | Callable[[int], int] = 1  # or, growing with the tasks learned, a function of them
    reference_hparams: Mapping[str, tuple[Any, str]] = field(default_factory=dict)
    extra_columns: Callable[[Any, int], dict] | None = None
    options: tuple[str, ...] = ()
    single_process_only: str | None = None  # issue 20
    train_amp: bool = False  # issue 20
    recipe_of: str | None = None  # a variant trained with another method's recipe: benchmarks.tune tunes that one
    inference_backbones: Callable[[int], float] | None = None  # None: the forward passes

    def forward_passes(self, n_tasks: int) -> int:
        """Backbone passes per image at inference after ``n_tasks`` tasks (most methods: a constant)."""
        passes = self.inference_forward_passes
        return int(passes(n_tasks) if callable(passes) else passes)

    def backbones_per_image(self, n_tasks: int) -> float:
        """Backbones' worth of transformer blocks one test image runs through after ``n_tasks`` tasks: the cost of
        inference in units of the frozen backbone's forward (prompts' longer sequences aside)."""
        worth = self.inference_backbones
        return float(worth(n_tasks)) if worth is not None else float(self.forward_passes(n_tasks))


_METHODS: dict[str, Method] = {}  # in registration order: the order of every table


def register_method(name: str, **traits: Any) -> Callable[[Builder], Builder]:
    """Register the decorated builder as method ``name`` with ``traits`` (the fields of :class:`Method`)."""

    def decorate(build: Builder) -> Builder:
        if name in _METHODS:
            raise ValueError(f"method '{name}' is registered twice ({_METHODS[name].build.__module__} and "
                             f"{build.__module__}); choose another name")
        method = Method(name=name, build=build, **traits)
        if method.schedule not in SCHEDULES:
            raise ValueError(f"method '{name}': schedule must be one of {SCHEDULES}, got {method.schedule!r}")
        _METHODS[name] = method
        return build

    return decorate


def get_method(name: str) -> Method:
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method '{name}'; choose from {', '.join(_METHODS)}") from None


def method_names() -> tuple[str, ...]:
    return tuple(_METHODS)


def methods() -> Mapping[str, Method]:
    return MappingProxyType(_METHODS)


def check_method_options(method_options) -> None:
    """Refuse a ``--method-option`` naming an unknown method or a keyword its builder does not take."""
    for method, name, value in method_options:
        if method not in _METHODS:
            raise ValueError(f"--method-option {method}.{name}={value}: unknown method '{method}'; choose from "
                             f"{', '.join(_METHODS)}")
        known = _METHODS[method].options
        if name not in known:
            takes = f"its options are {', '.join(known)}" if known else "it takes none"
            raise ValueError(f"--method-option {method}.{name}={value}: {method} has no option '{name}'; {takes}")
