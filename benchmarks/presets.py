"""SD-LoRA's recipe by name (``--preset``): ``paper``, as the paper writes it; ``official``, as the authors' code runs.

A preset sets SD-LoRA's training recipe: the optimizer and learning rate of the SD-LoRA family
(``--sdlora-optimizer``, ``--sdlora-lr``) and its :class:`~avalanche_sdlora.SDLoRAOptions`. It never sets the
protocol's budget (data, epochs, batch size), so ``--preset paper`` on ``cifar100-tiny128`` still trains 3 epochs at
batch 32: the paper's epochs and batch size are those of the named paper protocols (``imagenet-r-10`` ...), and the
authors' 20 epochs are ``--epochs 20`` there. Flags given beside ``--preset`` override it. Each value carries its
source; :func:`preset_table` renders docs/reproducing.md's table of every difference from them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from avalanche_sdlora.options import AUTHORS_SCHEDULE, PAPER_SCHEDULE, SDLoRAOptions

from .protocols import AUTHORS_LR, PAPER_BATCH_SIZE, PAPER_EPOCHS, PROTOCOLS, authors_lr, canonical, dataset_of

OPTIMIZERS = ("sgd", "adam")  # sgd: momentum 0.9, no weight decay (the shared recipe); adam: torch's defaults
SOURCES = {"paper": "the paper (Wu et al., ICLR 2025, arXiv 2501.13198)",
           "official": "the authors' code, WuYichen-97/SD-Lora-CL at 8bacded (its released logs print each run's "
                       "config)"}


@dataclass(frozen=True)
class Setting:
    """One value of a recipe and where it was read (in the preset's source, ``SOURCES``)."""

    value: Any
    source: str


@dataclass(frozen=True)
class Preset:
    """A named SD-LoRA recipe: what it sets (``optimizer``, ``lr``, ``options``) and, for docs/reproducing.md's table, what
    it cannot set because the protocol owns it (``epochs``, ``batch_size``) or the harness has one form only
    (``schedule``, ``weight_decay``, ``normalization``)."""

    name: str
    summary: str
    optimizer: Setting
    lr: Setting  # a float, or None: the authors' lr of the protocol's benchmark (protocols.AUTHORS_LR)
    options: Mapping[str, Setting]  # SDLoRAOptions fields
    schedule: Setting
    weight_decay: Setting
    epochs: Setting  # a {benchmark: epochs} dict, "other" for the rest
    batch_size: Setting
    normalization: Setting

    def lr_for(self, protocol: str) -> float:
        """The SD-LoRA learning rate under ``protocol``."""
        if self.lr.value is not None:
            return float(self.lr.value)
        return authors_lr(dataset_of(protocol), PROTOCOLS[canonical(protocol)]["n_experiences"])[0]

    def sdlora_options(self) -> SDLoRAOptions:
        return SDLoRAOptions().replace(**{k: s.value for k, s in self.options.items()})

    def fields(self, protocol: str) -> dict[str, Any]:
        """The RunConfig fields the preset sets under ``protocol`` (flags given beside it override these)."""
        return {"preset": self.name, "sdlora_optimizer": self.optimizer.value, "sdlora_lr": self.lr_for(protocol),
                "sdlora": self.sdlora_options()}


PAPER = Preset(
    name="paper", summary="as the paper writes it",
    optimizer=Setting("adam", "Adam"),
    lr=Setting(8e-3, "learning rate 8e-3"),
    options=MappingProxyType({
        "alpha_init": Setting(1.0, "magnitudes \"initialised to ones\""),
        "reset_alphas": Setting(False, "\"all alpha_1..alpha_t are trainable\": learned values are kept"),
        "direction_norm": Setting("frobenius", "each direction is B A / ‖B A‖_F"),
        "normalize_current": Setting(True, "the current pair enters as alpha_t B A / ‖B A‖_F (B starts at 0 and "
                                     "the norm is clamped at 1e-6, so the first gradients are scaled by up to 1e6: "
                                     "Adam's steps stay bounded by its lr, SGD's do not)"),
        "rank_schedule": Setting(tuple(PAPER_SCHEDULE.items()), "RR: rank 8 from the 4th task, 6 from the 8th"),
    }),
    schedule=Setting("constant", "none stated"),
    weight_decay=Setting(0.0, "none stated"),
    epochs=Setting({**PAPER_EPOCHS, "other": 20}, "the paper protocols' epochs"),
    batch_size=Setting(PAPER_BATCH_SIZE, "the paper protocols' batch size"),
    normalization=Setting("not stated", ""),
)

OFFICIAL = Preset(
    name="official", summary="as the authors' code runs",
    optimizer=Setting("sgd", "models/sdlora.py `_train` builds SGD(momentum=0.9) for every task (the configs' "
                      "\"optimizer\" key is not read there)"),
    lr=Setting(None, "each released run's lr (`benchmarks.protocols.AUTHORS_LR`: logs/*.log, exps/sdlora_dom.json for "
               "DomainNet; for CUB no config or log was released, so their ImageNet-R/-A value)"),
    options=MappingProxyType({
        "alpha_init": Setting(0.8, "backbone/lora.py initialises every magnitude to 0.8"),
        "reset_alphas": Setting(True, "the backbone is rebuilt at each task; learned magnitudes are never reloaded"),
        "direction_norm": Setting("factors", "a finished direction is B A / (‖B‖_F ‖A‖_F)"),
        "normalize_current": Setting(False, "the current pair trains unnormalised"),
        "rank_schedule": Setting(tuple(AUTHORS_SCHEDULE.items()), "RR (models/sdlora.py `update_network`): rank 8 from "
                                 "task index 4, 6 from 8"),
    }),
    schedule=Setting("constant", "MultiStepLR with its milestones past the last epoch in every released log "
                     "(exps/sdlora_dom.json alone decays, x0.005 at epochs 4, 6 and 8: not reproduced here)"),
    weight_decay=Setting(0.0, "`weight_decay` is commented out in models/sdlora.py `_train`"),
    epochs=Setting({"domainnet": 10, "other": 20}, "20 in every released log, 10 in exps/sdlora_dom.json: pass "
                   "`--epochs 20` on imagenet-r-*"),
    batch_size=Setting(128, "128 in every log and config"),
    normalization=Setting("none", "utils/data.py: ToTensor only (or Normalize with mean 0, std 1): pixels in [0, 1]"),
)

PRESETS: Mapping[str, Preset] = MappingProxyType({p.name: p for p in (PAPER, OFFICIAL)})
PRESET_NAMES = tuple(PRESETS)


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"--preset '{name}' is not a preset; choose from {', '.join(PRESETS)}") from None


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, dict):
        return ", ".join(f"{v} {k}" for k, v in value.items())
    if isinstance(value, tuple):  # a rank schedule
        return "`" + ",".join(f"{k}:{r}" for k, r in value) + "`"
    return f"`{value:g}`" if isinstance(value, float) else f"`{value}`"


def preset_table() -> str:
    """docs/reproducing.md's table of every difference between the presets, each value with its source (markdown)."""
    official_lr = ", ".join(f"{lr:g} ({b}{'' if t is None else f'-{t}'})" for (b, t), (lr, _) in AUTHORS_LR.items())
    rows = [("optimizer (`--sdlora-optimizer`)", PAPER.optimizer, OFFICIAL.optimizer),
            ("learning rate (`--sdlora-lr`)", PAPER.lr, Setting(official_lr, OFFICIAL.lr.source))]
    rows += [(f"`{k}` (`--{k.replace('_', '-')}`)", PAPER.options[k], OFFICIAL.options[k]) for k in PAPER.options]
    rows += [("lr schedule", PAPER.schedule, OFFICIAL.schedule),
             ("weight decay", PAPER.weight_decay, OFFICIAL.weight_decay),
             ("epochs per task (set by the protocol, not the preset)", PAPER.epochs, OFFICIAL.epochs),
             ("batch size (set by the protocol)", PAPER.batch_size, OFFICIAL.batch_size),
             ("input normalisation (here both use the weights' timm config)", PAPER.normalization,
              OFFICIAL.normalization)]
    lines = [f"| setting | `paper`: {SOURCES['paper']} | `official`: {SOURCES['official']} |", "|---|---|---|"]
    for name, p, o in rows:
        cell = (lambda x: (x.value if isinstance(x.value, str) and " " in x.value else _show(x.value))
                + (f": {x.source}" if x.source else ""))
        lines.append(f"| {name} | {cell(p)} | {cell(o)} |")
    return "\n".join(lines)
