"""SD-LoRA's options, declared once: each with its default, allowed values, source and scope.

``SDLoRAOptions`` is a frozen, typed dataclass, one carrier as PEFT's ``LoraConfig``:

* the model owns one (``sdlora_vit(name, options=..., **changes)``, ``model.options``); ``changes`` are fields;
* a strategy starts from its model's (or the ``options=`` it is given) and applies the option keywords it is
  given (non-None) once, into ``strategy.options``; the growth plugins read ``strategy.options`` in their hooks;
* a field's ``scope`` says who may set it: ``"model"`` fields shape the adapters (normalisation, head and pair
  init) and are fixed when the model is built; ``"strategy"`` fields say how tasks are trained and may differ
  per strategy. :data:`MODEL_FIELDS` and :data:`STRATEGY_FIELDS` are read from the dataclass.

Each field's metadata holds ``help``, ``source`` (paper / authors' code, see ../shared/REFERENCE.md), ``scope``,
``used_by`` and, where the values are a fixed set, ``choices``: enough to generate command-line flags. A new option
is a field here and the line that reads it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .variants import PAIR_STARTS
from .variants import VARIANTS as VARIANT_RULES
from .variants import reading

# 0-based task index at which each rank starts. The paper: rank 10, 8 from the 4th task, 6 from the 8th.
# The authors' code switches one task later.
PAPER_SCHEDULE: dict[int, int] = {0: 10, 3: 8, 7: 6}
AUTHORS_SCHEDULE: dict[int, int] = {0: 10, 4: 8, 8: 6}
DIRECTION_NORMS = ("factors", "frobenius")
HEAD_INITS = ("linear", "zeros")
PAIR_INITS = tuple(PAIR_STARTS)
SCOPES = ("model", "strategy")

# The paper's Table 4 ablations as growth variants (``variant``), each one option away from SD-LoRA: {name: its exact
# reading} (the paper gives one line per row; its numbers are ImageNet-R 5 / 10 tasks Acc). Each is a class in
# variants.py, which the growth plugin calls; nothing else in the library branches on the name.
VARIANTS: dict[str, str] = {name: reading(cls) for name, cls in VARIANT_RULES.items()}


def check_rank_schedule(schedule: Mapping[int, int] | Iterable[tuple[int, int]]) -> dict[int, int]:
    """``{first 0-based task: rank}`` as a sorted dict; it must start at task 0 with positive ranks."""
    try:
        pairs = schedule.items() if isinstance(schedule, Mapping) else schedule
        out = {int(k): int(v) for k, v in sorted((int(k), int(v)) for k, v in pairs)}
    except (TypeError, ValueError) as exc:
        raise ValueError(f"rank_schedule must map first 0-based tasks to ranks, e.g. {PAPER_SCHEDULE}, "
                         f"got {schedule!r}") from exc
    if 0 not in out or any(r <= 0 for r in out.values()) or any(k < 0 for k in out):
        raise ValueError(f"rank schedule must start at task 0 with positive ranks, got {out}")
    return out


def rank_for_task(task: int, schedule: Mapping[int, int]) -> int:
    """Rank of the pair of 0-based ``task``: the entry with the largest start not after it."""
    starts = sorted(k for k in schedule if k <= task)
    if not starts:
        raise ValueError(f"rank schedule {dict(schedule)} has no entry for task {task}; add one starting at 0")
    return int(schedule[starts[-1]])


def check_variant(variant: Any, reset_alphas: bool) -> None:
    """One sentence for an unknown variant or for the combination no variant can honour."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(map(repr, VARIANTS))}, got {variant!r}")
    if variant == "frozen-old-magnitudes" and reset_alphas:
        raise ValueError("variant='frozen-old-magnitudes' keeps old magnitudes at their learned values, which "
                         "reset_alphas=True (the default) resets to alpha_init at every task; pass reset_alphas=False "
                         "with it")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _option(default: Any, help: str, source: str, used_by: str, choices: tuple | None = None, *,
            scope: str = "strategy") -> Any:
    return field(default=default, metadata={"help": help, "source": source, "used_by": used_by, "choices": choices,
                                            "scope": scope})


@dataclass(frozen=True)
class SDLoRAOptions:
    """Every SD-LoRA option with its default; validated on construction (one sentence per bad value)."""

    rank: int = _option(10, "rank of each new low-rank pair (SDLoRARR takes its ranks from rank_schedule)",
                        "paper and authors' code", "sdlora_vit, SDLoRA, SDLoRAKD")
    alpha_init: float = _option(0.8, "initial magnitude of a new task (and the value old ones are reset to)",
                                "authors' code (the paper does not say)", "SDLoRA, SDLoRARR, SDLoRAKD")
    reset_alphas: bool = _option(True, "reset every old magnitude to alpha_init at a new task (False keeps the "
                                 "learned values, as the paper's text says)",
                                 "authors' code (the backbone is rebuilt each task)", "SDLoRA, SDLoRARR, SDLoRAKD")
    alpha_lr: float | None = _option(None, "learning rate of the magnitudes in a parameter group of their own "
                                     "(None: the optimizer's)", "authors' code (one learning rate)",
                                     "SDLoRA, SDLoRARR, SDLoRAKD")
    normalize_current: bool = _option(False, "normalise the current pair while it trains (True: the paper's form)",
                                      "authors' code", "sdlora_vit", scope="model")
    direction_norm: str = _option("factors", "normalisation of a finished direction: B A / (||B|| ||A||) "
                                  "('factors') or B A / ||B A|| ('frobenius', the paper's)",
                                  "authors' code (reproduces their result)", "sdlora_vit", DIRECTION_NORMS,
                                  scope="model")
    head_init: str = _option("linear", "init of new classifier rows: nn.Linear's default ('linear') or zeros",
                             "authors' code", "sdlora_vit", HEAD_INITS, scope="model")
    pair_init: str = _option("random", "init of a new pair's input-side A: LoRA's Kaiming-uniform draw ('random') or "
                             "that draw projected onto the row span of the stored directions' A of its slice, each "
                             "row's norm kept ('span', off by default: a test of whether KD's near-orthogonal "
                             "directions come from A's random start); B = 0 either way",
                             "authors' code (LoRA's init); 'span' is this project's (issue 19)", "sdlora_vit",
                             PAIR_INITS, scope="model")
    kd_threshold: float = _option(9e-4, "SD-LoRA-KD absorbs a new direction when ||r||^2 / ||D_t||^2 is at most this",
                                  "paper", "SDLoRAKD")
    variant: str = _option("full", "SD-LoRA or one of the paper's Table 4 ablations; VARIANTS says exactly what each "
                           "trains", "paper (Table 4); readings in VARIANTS", "SDLoRA, SDLoRARR", tuple(VARIANTS))
    rank_schedule: tuple[tuple[int, int], ...] = _option(
        tuple(PAPER_SCHEDULE.items()), "SD-LoRA-RR: {first 0-based task: rank} (AUTHORS_SCHEDULE switches one task "
        "later)", "paper", "SDLoRARR")

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            raise ValueError(f"rank must be a positive integer, got {self.rank!r}")
        for name in ("reset_alphas", "normalize_current"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not _finite(self.alpha_init):
            raise ValueError(f"alpha_init must be a finite number, got {self.alpha_init!r}")
        put("alpha_init", float(self.alpha_init))
        if self.alpha_lr is not None:
            if not _finite(self.alpha_lr) or self.alpha_lr <= 0:
                raise ValueError(f"alpha_lr must be a positive number or None (the optimizer's learning rate), "
                                 f"got {self.alpha_lr!r}")
            put("alpha_lr", float(self.alpha_lr))
        for name, allowed in (("direction_norm", DIRECTION_NORMS), ("head_init", HEAD_INITS),
                              ("pair_init", PAIR_INITS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {getattr(self, name)!r}")
        if not _finite(self.kd_threshold) or self.kd_threshold < 0:
            raise ValueError(f"kd_threshold must be a number >= 0, got {self.kd_threshold!r}")
        put("kd_threshold", float(self.kd_threshold))
        put("rank_schedule", tuple(check_rank_schedule(self.rank_schedule).items()))
        check_variant(self.variant, self.reset_alphas)

    @property
    def schedule(self) -> dict[int, int]:
        """``rank_schedule`` as a dict."""
        return dict(self.rank_schedule)

    def replace(self, **changes: Any) -> SDLoRAOptions:
        """A copy with ``changes`` applied (validated again)."""
        unknown = sorted(set(changes) - set(FIELDS))
        if unknown:
            raise TypeError(f"SDLoRAOptions has no option {', '.join(unknown)}; the options are {', '.join(FIELDS)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (``rank_schedule`` as a list of [start, rank] pairs)."""
        out = dataclasses.asdict(self)
        out["rank_schedule"] = [list(p) for p in self.rank_schedule]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SDLoRAOptions:
        """Inverse of :meth:`to_dict`; an unknown key is refused by name."""
        return cls().replace(**dict(data))


FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SDLoRAOptions))
MODEL_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SDLoRAOptions) if f.metadata["scope"] == "model")
STRATEGY_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SDLoRAOptions)
                                         if f.metadata["scope"] == "strategy")
DEFAULTS = SDLoRAOptions()
MODEL_OPTIONS = MODEL_FIELDS  # the former name (deprecated; removed in the next version)


def check_options(options: Any, where: str) -> SDLoRAOptions:
    """``options`` if it is an :class:`SDLoRAOptions`, else one sentence naming ``where`` it was passed."""
    if not isinstance(options, SDLoRAOptions):
        raise TypeError(f"{where}(options=...) takes an avalanche_sdlora.SDLoRAOptions, got {type(options).__name__}; "
                        "build one with SDLoRAOptions(rank=..., ...) or pass the options as keywords")
    return options
