"""The settings of a run, declared once: ``RunConfig``'s fields make the flags, ``config.json`` and the run's identity.

Each field carries its help, its checks and how it enters the identity (:mod:`benchmarks.identity`); the commands
(compare, study, ewc_trace, speed) generate their flags from these fields with :func:`add_run_flags`, so a flag
has one name, one help and one check everywhere. SD-LoRA's own options are the library's
:class:`~avalanche_sdlora.SDLoRAOptions`, nested as ``RunConfig.sdlora``; their flags come from its fields.

Conventions: a flag is the field's name with dashes (``--batch-size``); a boolean setting is ``--name true|false``
(a setting whose default is true can be turned off, and a recorded value can be passed back as written); a flag
left out takes the protocol's value (protocol fields) or the field's default.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from avalanche_sdlora.options import SDLoRAOptions

from .presets import OPTIMIZERS, PRESET_NAMES, get_preset
from .protocols import ALIASES, DEFAULT_PROTOCOL, PROTOCOL_FIELDS, PROTOCOLS, canonical

SEED_MAX = 2**32 - 1  # numpy's limit
PEER_RECIPES = ("reference", "shared")
# issue 22: how a run's class order is chosen, and the seeds of a run whose class order is its seed's.
CLASS_ORDERS = ("fixed", "seed")
ORDER_SEEDS = (1993, 1994, 1995)  # the first three of the paper's seeds 1993-1997 (../shared/REFERENCE.md)
TRAIN_AMPS = ("float32", "bf16")  # issue 20
KEEP_CHECKPOINTS = ("last", "all")  # issue 32
GPU_WORKERS = 4  # issue 20: --workers' default on a GPU (0 on CPU, where the training process converts the images)


def default_workers(device: str) -> int:
    """DataLoader workers when --workers is not given: a few on a GPU (the per-sample conversion and flip then overlap
    the device's work), none on CPU (they would compete with the training threads for the cores)."""
    return GPU_WORKERS if device.startswith("cuda") else 0


# ------------------------------------------------------------------------------------------- checks
def _positive_int(v: Any) -> str | None:
    return None if isinstance(v, int) and not isinstance(v, bool) and v > 0 else "a positive integer"


def _nonneg_int(v: Any) -> str | None:
    return None if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else "0 or more"


def _positive_number(v: Any) -> str | None:
    return None if isinstance(v, (int, float)) and math.isfinite(v) and v > 0 else "a positive number"


def _nonneg_number(v: Any) -> str | None:
    return None if isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 else "0 or more"


def _seed(v: Any) -> str | None:
    ok = isinstance(v, int) and 0 <= v <= SEED_MAX
    return None if ok else f"integers from 0 to {SEED_MAX} (numpy's seed range)"


def _class_order(v: Any) -> str | None:
    return None if v in CLASS_ORDERS else " or ".join(CLASS_ORDERS)


def check_seeds(seeds: Iterable[int], flag: str = "--seeds") -> None:
    """Seeds of ``(method, seed)`` runs: numpy's range; the error names ``flag``."""
    for s in seeds:
        if _seed(s):
            raise ValueError(f"{flag} must be {_seed(s)}, got {s}")


# ------------------------------------------------------------------------------------------- fields
def setting(default: Any, help: str, *, flag: str | None | bool = True, label: str | None = None,
            choices: tuple | None = None, check: Callable[[Any], str | None] | None = None, identity: bool = True,
            legacy: Any = dataclasses.MISSING, parse: Callable[[str], Any] | None = None) -> Any:
    """A RunConfig field. ``flag``: True (the field's name with dashes), a flag name, or None (no flag: a protocol's
    own constant); ``label``: how a changed value is named when a resume is refused (default: the flag);
    ``legacy``: for a field added since 0.2.0, the value a 0.2.0 run folder (which did not record it) ran with; older
    folders are converted once by :mod:`benchmarks.migrate`."""
    return field(default=default, metadata={"help": help, "flag": flag, "label": label, "choices": choices,
                                            "check": check, "identity": identity, "legacy": legacy, "parse": parse})


def _protocol(name: str, help: str, **kw: Any) -> Any:
    return setting(PROTOCOLS[DEFAULT_PROTOCOL][name], help, **kw)


def parse_bool(value: str) -> bool:
    v = value.lower()
    if v in ("1", "true", "yes"):
        return True
    if v in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def parse_rank_schedule(value: str) -> tuple[tuple[int, int], ...]:
    """``0:10,3:8,7:6`` -> ((0, 10), (3, 8), (7, 6))."""
    try:
        return tuple((int(k), int(r)) for k, r in (p.split(":") for p in value.split(",")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FIRST_TASK:RANK pairs such as 0:10,3:8,7:6, got {value!r}") from None


def parse_method_option(value: str) -> tuple[str, str, Any]:
    """``METHOD.NAME=VALUE``: VALUE is read as JSON or a Python literal (``64``, ``true``, ``(2, 3)``), else text."""
    head, eq, raw = value.partition("=")
    method, dot, name = head.partition(".")
    if not (eq and dot and method and name):
        raise argparse.ArgumentTypeError(f"expected METHOD.NAME=VALUE (e.g. ranpac.M=2000), got {value!r}")
    for read in (json.loads, ast.literal_eval):
        try:
            return method, name, _json_normal(read(raw))
        except (ValueError, SyntaxError):
            pass
    return method, name, raw


def _json_normal(value: Any) -> Any:
    """The value as it reads back from config.json (tuples become lists), so saved and new values compare equal."""
    return json.loads(json.dumps(value))



# The fields that name local input files or folders: a run folder records them by identity, never by path (issue 35).
INPUT_FIELDS = ("data", "checkpoint", "lists")


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a run of the harness (what to run and where to write it are the commands' arguments)."""

    protocol: str = setting(DEFAULT_PROTOCOL, "named preset of the protocol's fields below, each of which its own "
                            "flag overrides", choices=tuple(PROTOCOLS) + tuple(ALIASES))
    model: str = _protocol("model", "timm model name (any timm ViT)")
    img_size: int = _protocol("img_size", "input size in pixels, a multiple of the model's patch size",
                              check=_positive_int)
    train_per_class: int | None = _protocol("train_per_class", "training images per class (None: all)",
                                            check=_positive_int)
    epochs: int = _protocol("epochs", "training epochs per experience", check=_positive_int)
    batch_size: int = _protocol("batch_size", "training minibatch size", check=_positive_int)
    lr: float = _protocol("lr", "learning rate of the shared recipe (SGD, momentum 0.9; L2P: Adam)",
                          check=_positive_number)
    n_experiences: int = _protocol("n_experiences", "experiences the classes are split into", check=_positive_int)
    class_order_seed: int | None = _protocol("class_order_seed", "seed of the class order (with --class-order "
                                             "fixed; None with --class-order seed)", check=_seed)
    eval_batch_size: int = _protocol("eval_batch_size", "evaluation minibatch size", flag=None, check=_positive_int,
                                     label="the protocol's eval_batch_size (no flag: the protocol's definition changed)")
    eval_amp: bool = _protocol("eval_amp", "bfloat16 autocast for evaluation (training stays float32)")
    # issue 30: tuning on validation images carved from the training images, on the first experiences of the stream
    validation_per_class: int | None = setting(
        None, "hold out N training images per class (seeded, the same for every method and order: "
        "avalanche_sdlora.data.validation_split) and evaluate on them instead of the test images, which are then "
        "never read (what benchmarks.tune runs; the training images are the rest)", check=_positive_int, legacy=None)
    first_experiences: int | None = setting(None, "train and evaluate only the first N experiences of the stream "
                                            "(the rest of the protocol unchanged; what benchmarks.tune runs)",
                                            check=_positive_int, legacy=None)
    classes: int | None = setting(None, "use only the first N classes of the order-free label set (quick runs; on a "
                                  "paper protocol the folder's class count is then not checked)", check=_positive_int)
    test_per_class: int | None = setting(None, "test images per class (default: all)", check=_positive_int)
    data: str | None = setting(None, "the data: the CIFAR-100 npz (or torchvision's cifar-100-python folder) of the "
                               "cifar100-tiny*/cifar100-paper protocols (default: cifar100.npz in the assets folder "
                               "or $SDLORA_CACHE, else torchvision's download, once); the dataset's folder for a paper "
                               "protocol (default: the loaders' variables, e.g. $SDLORA_IMAGENET_R or "
                               "$SDLORA_DATA/imagenet-r)",
                               label="--data (the data's content)")
    checkpoint: str | None = setting(None, "local weights file (default: <model>.safetensors in the assets folder "
                                     "or $SDLORA_CACHE, else timm's pretrained weights, fetched once; required by a "
                                     "paper protocol)", label="--checkpoint (the weights' content)")
    sdlora: SDLoRAOptions = setting(SDLoRAOptions(), "SD-LoRA's options (flags from SDLoRAOptions' fields; --rank is "
                                    "also the rank of the one LoRA pair of seq-lora and the Avalanche baselines)",
                                    flag=None)
    ewc_lambda: float = setting(100.0, "ewc: penalty strength (1000 diverges at lr 0.01 on cifar100-tiny128)",
                                check=_nonneg_number)
    peer_recipe: str = setting("reference", "optimizer and lr of the peer methods (dualprompt ... aper): each "
                               "method's 'reference' recipe, or the protocol's 'shared' one (SGD, momentum 0.9, "
                               "--lr; the rest of each recipe unchanged)", choices=PEER_RECIPES)
    method_options: tuple[tuple[str, str, Any], ...] = setting(
        (), "METHOD.NAME=VALUE: a keyword of that method's builder (e.g. ranpac.M=2000, dualprompt.lr=0.01); "
        "several after one flag or the flag repeated", flag="--method-option", parse=parse_method_option)
    device: str = setting("cuda" if torch.cuda.is_available() else "cpu",
                          "torch device (default: cuda when torch sees a GPU, else cpu)")
    workers: int | None = setting(None, "DataLoader worker processes per run (per rank under torchrun) for the "
                                  "per-sample conversion and flip (0: in the training process) (default: 0 on CPU, "
                                  f"{GPU_WORKERS} on a GPU; config.json records the value)", check=_nonneg_int,
                                  label="--workers (worker processes draw other random flips)")
    threads: int | None = setting(None, "torch CPU threads (one per process when running two at once; --jobs 2 or "
                                  "more runs each (method, seed) on one)", check=_positive_int,
                                  label="--threads (torch threads per (method, seed); --jobs 2 or more means 1)")
    # issue 22: the class order tied to the run's seed, as the paper's code does it.
    class_order: str = setting("fixed", "'fixed': every seed runs on the class order of --class-order-seed; 'seed': "
                               "seed s runs on class order s (numpy.random.seed(s); permutation(n), as the paper's "
                               "code, whose runs are seeds 1993-1997), and --seeds defaults to "
                               + " ".join(map(str, ORDER_SEEDS)), choices=CLASS_ORDERS, check=_class_order)
    # ---- issue 20: GPU precision, and settings that make a torchrun run comparable with one process
    train_amp: str = _protocol("train_amp", "training precision: float32, or bf16 autocast of the training forward "
                               "(weights, optimizer and loss stay float32; every method: benchmarks.train_amp; "
                               "evaluation: --eval-amp)", choices=TRAIN_AMPS)
    train_shuffle: bool = setting(True, "shuffle the training images every epoch (false: each experience's own order; "
                                  "with --augment false a torchrun run then trains the minibatches one process "
                                  "trains)")
    augment: bool = setting(True, "random horizontal flip of the training images")
    # ---- issue 18: SD-LoRA's recipe by name, and the paper protocols' data (benchmarks/presets.py, protocols.py)
    preset: str | None = setting(None, "SD-LoRA's recipe by name: 'paper' (Adam 8e-3; magnitudes from 1, kept; "
                                 "||B A||_F directions; normalised current pair) or 'official' (the authors' code: SGD "
                                 "at their lr; magnitudes reset to 0.8; ||B|| ||A||); it sets --sdlora-optimizer, "
                                 "--sdlora-lr and SD-LoRA's options (flags given beside it override it), never the "
                                 "protocol's epochs or batch size; none: the library's defaults with the shared recipe",
                                 choices=PRESET_NAMES)
    sdlora_optimizer: str = setting("sgd", "optimizer of sdlora, sdlora-rr and sdlora-kd: 'sgd' (momentum 0.9, no "
                                    "weight decay: the shared recipe) or 'adam' (torch's defaults, no weight decay)",
                                    choices=OPTIMIZERS)
    sdlora_lr: float | None = setting(None, "learning rate of sdlora, sdlora-rr and sdlora-kd (default: the "
                                      "protocol's --lr)", check=_positive_number)
    split: str | None = setting(None, "published split of a paper protocol's data: imagenet-r 'aper' (the archive "
                                "SD-LoRA's code reads) or 'coda' (the original tree with CODA-Prompt's lists); "
                                "default: the benchmark's own (CIFAR-100: 'official' for torchvision's folder, 'npz')")
    lists: str | None = setting(None, "folder of CODA-Prompt's split lists, for imagenet-r --split coda and domainnet "
                                "(default: $SDLORA_SPLIT_LISTS, then beside the data; their content is part of "
                                "--data's identity)",
                                identity=False)
    # issue 32: a checkpoint holds every direction so far, so keeping one per experience grows with tasks squared
    keep_checkpoints: str = setting("last", "checkpoints kept per (method, seed): 'last' (the latest two, what --resume "
                                    "needs) or 'all' (one per experience, which benchmarks.findings reads)",
                                    choices=KEEP_CHECKPOINTS, identity=False)

    def __post_init__(self) -> None:
        if canonical(self.protocol) not in PROTOCOLS:
            raise ValueError(f"--protocol '{self.protocol}' is not a protocol; choose from {', '.join(PROTOCOLS)}")
        object.__setattr__(self, "protocol", canonical(self.protocol))
        if self.workers is None:
            object.__setattr__(self, "workers", default_workers(str(self.device)))
        if not isinstance(self.sdlora, SDLoRAOptions):
            raise ValueError(f"sdlora must be an SDLoRAOptions, got {type(self.sdlora).__name__}")
        for f in dataclasses.fields(self):
            value, check = getattr(self, f.name), f.metadata["check"]
            need = check(value) if check is not None and value is not None else None
            if need:
                raise ValueError(f"{flag_of(f)} must be {need}, got {value}")
        if self.class_order == "seed":  # each seed's own order: no run-wide one to record
            object.__setattr__(self, "class_order_seed", None)
        elif self.class_order_seed is None:
            raise ValueError("--class-order-seed is needed with --class-order fixed (or pass --class-order seed)")
        if self.first_experiences is not None and self.first_experiences > self.n_experiences:
            raise ValueError(f"--first-experiences {self.first_experiences} is more than the stream's "
                             f"{self.n_experiences} experiences (--n-experiences); pass at most {self.n_experiences}")
        if self.validation_per_class is not None and self.test_per_class is not None:
            raise ValueError("--test-per-class has no effect with --validation-per-class (no test image is read); "
                             "drop one of the two")
        merged = {(m, k): _json_normal(v) for m, k, v in self.method_options}
        object.__setattr__(self, "method_options", tuple((m, k, v) for (m, k), v in sorted(merged.items())))

    @classmethod
    def for_protocol(cls, name: str = DEFAULT_PROTOCOL, **changes: Any) -> RunConfig:
        """The protocol's preset with ``changes`` (any field) applied; ``preset="paper"`` (or ``"official"``) also
        fills the fields the SD-LoRA preset sets (optimizer, lr, ``sdlora``) that ``changes`` does not give."""
        if canonical(name) not in PROTOCOLS:
            raise ValueError(f"--protocol '{name}' is not a protocol; choose from {', '.join(PROTOCOLS)}")
        recipe = get_preset(changes["preset"]).fields(name) if changes.get("preset") is not None else {}
        return cls(protocol=name, **{**PROTOCOLS[canonical(name)], **recipe, **changes})

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def order_seed(self, seed: int | None) -> int:
        """The class-order seed of the (method, seed) run with ``seed`` (issue 22)."""
        if self.class_order == "fixed":
            return self.class_order_seed
        if seed is None:
            raise ValueError("class_order 'seed' gives each seed its own class order: pass the run's seed")
        return seed

    def fixed_order(self, seed: int | None) -> RunConfig:
        """This config with the class order of the run with ``seed`` made fixed: what builds that run's benchmark."""
        return self if self.class_order == "fixed" else self.replace(class_order="fixed",
                                                                     class_order_seed=self.order_seed(seed))
    @property
    def experiences_run(self) -> int:
        """How many experiences each (method, seed) trains: ``--first-experiences`` or the whole stream."""
        return self.first_experiences or self.n_experiences

    @property
    def train_autocast_dtype(self) -> torch.dtype | None:
        """``--train-amp`` as the library's ``autocast_dtype`` (None: float32)."""
        return torch.bfloat16 if self.train_amp == "bf16" else None

    def options_for(self, method: str) -> dict[str, Any]:
        """The ``--method-option`` keywords given for ``method``."""
        return {k: v for m, k, v in self.method_options if m == method}

    def to_json(self) -> dict[str, Any]:
        """The fields as JSON (``sdlora`` as a dict, ``method_options`` as {method: {name: value}})."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["sdlora"] = self.sdlora.to_dict()
        options: dict[str, dict] = {}
        for m, k, v in self.method_options:
            options.setdefault(m, {})[k] = v
        out["method_options"] = options
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunConfig:
        """Inverse of :meth:`to_json`; also reads a run folder's ``config.json`` (other keys ignored; a folder of an
        older format is converted once by :mod:`benchmarks.migrate`)."""
        names = {f.name for f in dataclasses.fields(cls)}
        given = {k: v for k, v in data.items() if k in names}
        for k in INPUT_FIELDS:  # recorded by identity, not path (benchmarks.local_paths): found as a new run finds it
            if isinstance(given.get(k), Mapping):
                given[k] = None
        given["sdlora"] = SDLoRAOptions.from_dict(given.get("sdlora", {}))
        given["method_options"] = tuple((m, k, v) for m, kv in dict(given.get("method_options") or {}).items()
                                        for k, v in kv.items())
        protocol = given.pop("protocol", DEFAULT_PROTOCOL)
        preset = PROTOCOLS[canonical(protocol)]
        return cls(protocol=protocol, **{**preset, **given})


def default_seeds(cfg: RunConfig, fixed: Sequence[int] = (0,)) -> list[int]:
    """A command's seeds when ``--seeds`` is not given: ``fixed`` (the command's own), or ORDER_SEEDS for a run whose
    class order is its seed's (issue 22)."""
    return list(ORDER_SEEDS if cfg.class_order == "seed" else fixed)


def flag_of(f: dataclasses.Field) -> str:
    flag = f.metadata.get("flag", True)
    return "--" + f.name.replace("_", "-") if flag is True or flag is None else flag


# ------------------------------------------------------------------------------------------- flags
@dataclass(frozen=True)
class Flag:
    dest: str
    flag: str
    parse: Callable[[str], Any]
    help: str
    default: str  # as the help shows it
    choices: tuple | None
    repeat: bool = False
    sdlora: bool = False


def _value_type(hint: Any) -> Any:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def run_flags() -> list[Flag]:
    """Every flag a RunConfig field (or an SD-LoRA option) has, in declaration order."""
    flags = []
    hints = typing.get_type_hints(RunConfig)
    for f in dataclasses.fields(RunConfig):
        if f.name == "sdlora":
            flags += _sdlora_flags()
        if f.metadata["flag"] is None:
            continue
        kind = _value_type(hints[f.name])
        parse = f.metadata["parse"] or (parse_bool if kind is bool else kind)
        default = "the protocol's" if f.name in PROTOCOL_FIELDS else json.dumps(f.default)
        if f.name == "method_options":
            default = "none"
        flags.append(Flag(f.name, flag_of(f), parse, f.metadata["help"], default, f.metadata["choices"],
                          repeat=f.name == "method_options"))
    return flags


def _sdlora_flags() -> list[Flag]:
    hints = typing.get_type_hints(SDLoRAOptions)
    out = []
    for f in dataclasses.fields(SDLoRAOptions):
        kind = _value_type(hints[f.name])
        parse = parse_rank_schedule if f.name == "rank_schedule" else parse_bool if kind is bool else kind
        default = ",".join(f"{k}:{r}" for k, r in f.default) if f.name == "rank_schedule" else json.dumps(f.default)
        out.append(Flag(f.name, "--" + f.name.replace("_", "-"), parse, f"SD-LoRA: {f.metadata['help']}",
                        f"{default}; {f.metadata['source']}", f.metadata["choices"], sdlora=True))
    return out


def add_run_flags(parser: argparse.ArgumentParser, *, only: Iterable[str] | None = None,
                  lists: Iterable[str] = (), defaults: Mapping[str, Any] | None = None) -> None:
    """Add the RunConfig flags (``only`` those fields, if given); fields in ``lists`` take one or more values.

    ``defaults`` gives a command's own default for a flag (e.g. speed's image sizes); otherwise a flag left out
    is None and :func:`config_from_flags` takes the protocol's value or the field's default.
    """
    only, lists, defaults = (None if only is None else set(only)), set(lists), dict(defaults or {})
    for f in run_flags():
        if only is not None and f.dest not in only:
            continue
        shown = json.dumps(defaults[f.dest]) if f.dest in defaults else f.default
        text = f.help if "(default:" in f.help and f.dest not in defaults else f"{f.help} (default: {shown})"
        kw: dict[str, Any] = {"dest": f.dest, "type": f.parse, "help": text, "default": defaults.get(f.dest)}
        if f.choices:
            kw["choices"] = f.choices
        if f.parse is parse_bool:
            kw["metavar"] = "true|false"
        elif f.parse is parse_rank_schedule:
            kw["metavar"] = "TASK:RANK,..."
        if f.repeat:  # several after one flag or the flag repeated: both read as one list
            kw["action"], kw["nargs"] = "extend", "+"
            kw["metavar"] = "METHOD.NAME=VALUE"
        elif f.dest in lists:
            kw["nargs"] = "+"
        parser.add_argument(f.flag, **kw)


def config_from_flags(args: argparse.Namespace, **fixed: Any) -> RunConfig:
    """The RunConfig the parsed flags ask for: given flags over the SD-LoRA preset (``--preset``), the protocol's
    fields and the defaults.

    ``fixed`` sets fields regardless of the flags (a study's cell). Errors name the flag (``ValueError``).
    """
    changes, sdlora = {}, {}
    for f in run_flags():
        value = fixed.get(f.dest, getattr(args, f.dest, None))
        if value is None or f.dest == "protocol":
            continue
        (sdlora if f.sdlora else changes)[f.dest] = tuple(value) if f.repeat else value
    if changes.get("class_order") == "seed" and "class_order_seed" in changes:
        raise ValueError("--class-order-seed has no effect with --class-order seed (seed s runs on class order s); "
                         "drop one of the two")
    base = get_preset(changes["preset"]).sdlora_options() if "preset" in changes else SDLoRAOptions()
    try:
        options = base.replace(**sdlora)
    except ValueError as exc:  # the library names its argument; the command line names the flag
        msg = str(exc)
        name = next((n for n in sdlora if msg.startswith(n + " ")), None)
        raise ValueError(msg.replace(name, "--" + name.replace("_", "-"), 1) if name else msg) from None
    return RunConfig.for_protocol(getattr(args, "protocol", None) or DEFAULT_PROTOCOL, sdlora=options, **changes)


def flags_for(args: argparse.Namespace, **fixed: Any) -> list[str]:
    """The command-line flags :func:`config_from_flags` reads from ``args`` (and ``fixed``), as a command would pass
    them: the inverse of the parse for the flags that were given (issue 20: a study's cells as commands).

    Only given flags are written, so a printed command takes each default where it runs (the device, its workers).
    """
    out: list[str] = []
    for f in run_flags():
        value = fixed.get(f.dest, getattr(args, f.dest, None))
        if value is None:
            continue
        if f.repeat:
            out += [a for m, k, v in value for a in (f.flag, f"{m}.{k}={json.dumps(v)}")]
        elif f.parse is parse_bool:
            out += [f.flag, "true" if value else "false"]
        elif f.parse is parse_rank_schedule:
            out += [f.flag, ",".join(f"{k}:{r}" for k, r in value)]
        else:
            out += [f.flag, str(value)]
    return out
