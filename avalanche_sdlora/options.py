"""SD-LoRA's options, declared once: each with its default, allowed values and source.

``SDLoRAOptions`` is a frozen, typed dataclass (in the spirit of PEFT's ``LoraConfig``) accepted by
``sdlora_vit``, ``SDLoRAViT`` and the strategies beside their explicit keyword arguments:

* a keyword the caller passes overrides the options object (``None`` for an option that cannot be ``None``,
  such as ``rank``, counts as not passed);
* every other option comes from the options object; a strategy given none uses its model's options, so
  ``SDLoRA(model=sdlora_vit(..., rank=4), ...)`` trains rank-4 pairs;
* the defaults shown in those signatures are this class's defaults (``tests/test_dropin.py`` pins that).

Each field's metadata holds ``help``, ``source`` (paper / authors' code, see ../shared/REFERENCE.md),
``used_by`` and, where the values are a fixed set, ``choices``: enough to generate command-line flags.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# 0-based task index at which each rank starts. The paper: rank 10, 8 from the 4th task, 6 from the 8th.
# The authors' code switches one task later.
PAPER_SCHEDULE: dict[int, int] = {0: 10, 3: 8, 7: 6}
AUTHORS_SCHEDULE: dict[int, int] = {0: 10, 4: 8, 8: 6}
DIRECTION_NORMS = ("factors", "frobenius")
HEAD_INITS = ("linear", "zeros")
PAIR_INITS = ("random", "span")
# Options fixed when the model is built (its structure); a strategy cannot change them.
MODEL_OPTIONS = ("normalize_current", "direction_norm", "head_init", "pair_init")

# The paper's Table 4 ablations as growth variants (``variant``), each one option away from SD-LoRA. The name is the
# choice; the text is its exact reading (the paper gives one line per row; its numbers are ImageNet-R 5 / 10 tasks Acc).
# plugins/growth.py implements each name; nothing else in the library branches on it.
VARIANTS: dict[str, str] = {
    "full": "SD-LoRA: a new pair and magnitude at every task, the pair frozen into a normalised direction when its "
            "task ends, every magnitude trainable (paper 79.15 / 77.34).",
    "fixed-direction": "Table 4 (i), Finding 1(b): the first task is trained as in SD-LoRA and its pair frozen into a "
                       "normalised direction as SD-LoRA freezes any pair; later tasks add no pair and no magnitude and "
                       "train only that direction's magnitude (and the new head rows). The magnitude is treated as "
                       "SD-LoRA treats alpha_1: reset to alpha_init at each task when reset_alphas, else trained on from "
                       "its learned value, so the row differs from 'full' only by the missing later components "
                       "(paper 78.17 / 74.82).",
    "single-component": "Table 4 (ii): one pair and one magnitude, W = W0 + alpha * normalised(B A), trained through "
                        "every task and never frozen; the magnitude keeps its learned value across tasks (there is no "
                        "finished component for reset_alphas to reset). Normalised as SD-LoRA normalises its pairs: "
                        "with normalize_current=True (the paper's form) the pair is the unit-Frobenius B A / ||B A||_F "
                        "while it trains; with False (the authors' code) it trains as alpha * B A and its B is rescaled "
                        "at each task end to the direction direction_norm stores, so the network changes there as "
                        "SD-LoRA's does when it freezes a pair. It differs from sequential LoRA (one pair, alpha fixed "
                        "at 1, never normalised) exactly by that decoupling: the normalisation and a trainable magnitude "
                        "starting at alpha_init (paper 73.24 / 70.62).",
    "frozen-old-magnitudes": "Table 4 (iii), old components fixed without rescaling: as SD-LoRA, but when task t "
                             "starts every earlier magnitude is frozen at the value it had learned, so only the "
                             "current pair, alpha_t and the new head rows train; needs reset_alphas=False, since "
                             "resetting old magnitudes to alpha_init is a rescaling (paper 78.28 / 74.29).",
}


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


def _option(default: Any, help: str, source: str, used_by: str, choices: tuple | None = None) -> Any:
    return field(default=default, metadata={"help": help, "source": source, "used_by": used_by, "choices": choices})


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
                                      "authors' code", "sdlora_vit")
    direction_norm: str = _option("factors", "normalisation of a finished direction: B A / (||B|| ||A||) "
                                  "('factors') or B A / ||B A|| ('frobenius', the paper's)",
                                  "authors' code (reproduces their result)", "sdlora_vit", DIRECTION_NORMS)
    head_init: str = _option("linear", "init of new classifier rows: nn.Linear's default ('linear') or zeros",
                             "authors' code", "sdlora_vit", HEAD_INITS)
    pair_init: str = _option("random", "init of a new pair's input-side A: LoRA's Kaiming-uniform draw ('random') or "
                             "that draw projected onto the row span of the stored directions' A of its slice, each "
                             "row's norm kept ('span', off by default: a test of whether KD's near-orthogonal "
                             "directions come from A's random start); B = 0 either way",
                             "authors' code (LoRA's init); 'span' is this project's (issue 19)", "sdlora_vit",
                             PAIR_INITS)
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
DEFAULTS = SDLoRAOptions()
_NULLABLE = {"alpha_lr"}


def takes_options(base: Callable[[dict[str, Any]], SDLoRAOptions | None] | None = None,
                  refuse: Mapping[str, str] | None = None) -> Callable:
    """Decorator for a function with an ``options`` parameter and option keywords (the rule in the module doc).

    The function receives ``options`` resolved (never None) and its option keywords at their defaults: it
    reads options only from ``options``. ``base(arguments)`` gives the options used when the caller passes
    none (the strategies: the model's); ``refuse`` maps an option keyword this function does not use to the
    sentence raised when a caller passes it. Python cannot tell a keyword passed with its default value
    from one left out, hence a wrapper that sees the call as written.
    """

    def decorate(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        names = [n for n in sig.parameters if n in FIELDS]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bound = sig.bind(*args, **kwargs)
            given = bound.arguments
            options = given.get("options")
            if options is None:
                options = (base(given) if base is not None else None) or DEFAULTS
            elif not isinstance(options, SDLoRAOptions):
                raise TypeError(f"options must be an avalanche_sdlora.SDLoRAOptions, got {type(options).__name__}")
            explicit = {}
            for name in names:
                if name not in given:
                    continue
                value = given.pop(name)
                if value is None and name not in _NULLABLE:
                    continue
                if refuse and name in refuse:
                    raise ValueError(refuse[name])
                explicit[name] = value
            given["options"] = options.replace(**explicit) if explicit else options
            return fn(*bound.args, **bound.kwargs)

        return wrapper

    return decorate
