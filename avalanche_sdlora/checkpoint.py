"""Exact resume from the last finished experience: safetensors + JSON, never pickle.

A checkpoint ``exp<k>`` is two files. ``exp<k>.safetensors`` holds the adapter state (stored directions,
current pair, magnitudes, head chunks: :func:`~avalanche_sdlora.adapter_format.adapter_state_dict`, never the
frozen backbone, which is rebuilt from its weights file) and the torch RNG states. ``exp<k>.json``, written
last, holds the experience index, the Python/NumPy RNG states, the strategy's state (classes seen, each
plugin's ``state_dict()``, Avalanche's clock and the evaluator's metric state), the adapter config with a
fingerprint of the base weights, and the sha256 of the tensor file, verified on load.

:func:`save_state` and :func:`load_state` write and read the same two files for a model that is not an
``SDLoRAViT`` (the harness's peer methods): its tensors under ``state.`` and, in the JSON, what rebuilds its
structure before they load.

A checkpoint holds every stored direction so far, so its size grows with the tasks (ViT-Tiny, rank 10: about
0.38 MB per task); keeping every one would make a run's checkpoints grow with the square of the tasks (about 480 MB
after 50). Resume needs only the latest: :func:`prune_checkpoints` keeps the newest ``keep`` complete ones (default
2: the one before is the fallback when the latest is damaged, and the harness's resume point while the latest
experience's row is not yet written), and :class:`CheckpointPlugin` prunes after each save unless told to keep all.

Avalanche's own ``save_checkpoint`` pickles the whole strategy with dill. The models pickle; in this
torch/dill combination the optimizer does not (``PicklingError: Can't pickle sentinel``, for any model and
strategy). More to the point, unpickling a file executes code from it, so this format stores only tensors
and JSON: loading a checkpoint cannot run code.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from avalanche.core import SupervisedPlugin
from avalanche.distributed import DistributedHelper
from safetensors.torch import save as save_bytes
from torch import Tensor

from .adapter_format import (adapter_config, adapter_state_dict, hash_tensor, load_adapter_state, read_checked_tensors,
                             require_sdlora, sha256_hex)
from .atomic import remove_stale_temps, write_bytes
from .evaluator_state import evaluator_state, has_state_dict, keyed_by_class, restore_evaluator_state
from .plugins import DistillationPlugin, RankReductionPlugin

FORMAT = "avalanche-sdlora-checkpoint/2"
FORMAT_V1 = "avalanche-sdlora-checkpoint/1"  # whole model state dict, no checksum: still loaded
KEEP_LAST = 2  # checkpoints a pruned folder keeps: the latest and its fallback
_CHECKPOINT_FILE = re.compile(r"exp(\d+)\.(?:json|safetensors)")


def _paths(directory: str | Path, experience: int) -> tuple[Path, Path]:
    d = Path(directory)
    return d / f"exp{experience}.json", d / f"exp{experience}.safetensors"


def clean_stale_temp(directory: str | Path) -> list[Path]:
    """Remove temporary files a killed writer left in a checkpoint folder; returns what was removed."""
    return remove_stale_temps(directory, ".exp*.tmp")


def save_checkpoint(directory: str | Path, experience: int, model: torch.nn.Module, extra: dict | None = None,
                    config: dict | None = None) -> Path:
    """Write ``exp<k>.safetensors`` then ``exp<k>.json`` (which marks completeness); returns the JSON path.

    ``model`` must be an ``SDLoRAViT``: only its adapters and head are stored. ``extra`` is any
    JSON-serialisable state (``strategy_state(strategy)``); ``config`` is checked on load.
    """
    require_sdlora(model, "save_checkpoint")
    tensors = {f"model.{k}": v for k, v in adapter_state_dict(model).items()}
    return _write(directory, experience, tensors, {"extra": extra or {}, "adapters": adapter_config(model)}, config)


def tensor_digest(tensor: Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes: equal digests, equal tensors (on any device)."""
    h = hashlib.sha256()
    hash_tensor(h, tensor)  # no copy on the CPU (RanPAC's Gram matrix is 0.8 GB)
    return h.hexdigest()


def tensor_digests(tensors: Mapping[str, Tensor]) -> dict[str, str]:
    """:func:`tensor_digest` of every tensor: what :func:`save_state`'s ``base`` takes."""
    return {k: tensor_digest(v) for k, v in tensors.items()}


def save_state(directory: str | Path, experience: int, tensors: dict[str, Tensor], state: dict,
               extra: dict | None = None, config: dict | None = None, base: Mapping[str, str] | None = None) -> Path:
    """A checkpoint of a model that is not an ``SDLoRAViT``, in the same files, checks and RNG capture.

    Why: the harness's peer methods (prompts, per-task adapters, class statistics) resume exactly as SD-LoRA does,
    from one format that never pickles. ``tensors`` are the model's (stored under ``state.``), ``state`` the JSON
    that rebuilds its structure before they load (how many tasks it grew, ...); :func:`load_state` reads both.

    ``base``: :func:`tensor_digests` of the freshly built model (its pretrained backbone). A tensor still equal to
    its base is left out and only its digest recorded, so a peer's checkpoint, like SD-LoRA's, does not hold the
    frozen backbone again (ViT-Tiny: 22 MB a checkpoint, ViT-B: 340 MB); :func:`load_state` takes it from the
    rebuilt model after checking the digest.
    """
    base = base or {}
    omitted = {k: d for k, v in tensors.items() if (d := base.get(k)) is not None and tensor_digest(v) == d}
    kept = {f"state.{k}": v.detach().contiguous() for k, v in tensors.items() if k not in omitted}
    meta = {"extra": extra or {}, "state": state, **({"omitted": omitted} if omitted else {})}
    return _write(directory, experience, kept, meta, config)


def _write(directory: str | Path, experience: int, tensors: dict[str, Tensor], meta: dict,
           config: dict | None) -> Path:
    """The RNG states added to ``tensors`` and ``meta``, the tensors written, then the JSON (completeness)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    clean_stale_temp(d)
    tensors = dict(tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    data = save_bytes(tensors)
    py = random.getstate()
    np_state = np.random.get_state()
    meta = {"format": FORMAT, "experience": experience, "config": config or {}, **meta, "sha256": sha256_hex(data),
            "rng_python": [py[0], list(py[1]), py[2]],
            "rng_numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])]}
    try:
        text = json.dumps(meta)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"a checkpoint's extra and state must be JSON-serialisable ({exc})") from exc
    json_path, tensor_path = _paths(d, experience)
    write_bytes(tensor_path, data)
    write_bytes(json_path, text.encode())
    return json_path


def _read_meta(json_path: Path) -> dict:
    try:
        meta = json.loads(json_path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint '{json_path}'; latest_checkpoint(directory) names the last one") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"checkpoint '{json_path}' is damaged ({exc}); resume from an earlier one "
                         "(latest_checkpoint skips damaged ones) or start a new run") from exc
    if not isinstance(meta, dict) or meta.get("format") not in (FORMAT, FORMAT_V1):
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ValueError(f"'{json_path}' is not an avalanche-sdlora checkpoint (format {found!r})")
    return meta


def _read_tensors(json_path: Path, tensor_path: Path, meta: dict) -> dict:
    fix = "resume from an earlier checkpoint (latest_checkpoint skips damaged ones) or start a new run"
    if meta["format"] == FORMAT and "sha256" not in meta:
        raise ValueError(f"checkpoint '{json_path}' records no sha256 for its tensors; {fix}")
    return read_checked_tensors(tensor_path, meta.get("sha256"), fix)


def checkpoint_problem(directory: str | Path, experience: int) -> str | None:
    """Why checkpoint ``experience`` cannot be loaded (damaged, truncated, checksum mismatch), or None."""
    json_path, tensor_path = _paths(directory, experience)
    try:
        _read_tensors(json_path, tensor_path, _read_meta(json_path))
    except (OSError, ValueError) as exc:
        return str(exc)
    return None


def checkpoint_experiences(directory: str | Path) -> list[int]:
    """Experience indices with a checkpoint in ``directory`` (its ``exp<k>.json`` or ``exp<k>.safetensors``), sorted."""
    d = Path(directory)
    names = (_CHECKPOINT_FILE.fullmatch(p.name) for p in d.iterdir()) if d.is_dir() else ()
    return sorted({int(m[1]) for m in names if m})


def prune_checkpoints(directory: str | Path, keep: int = KEEP_LAST) -> list[int]:
    """Delete every checkpoint but the newest ``keep`` complete, undamaged ones (and any newer than those, such as
    one being written); returns the experiences removed. What resume needs stays: :func:`latest_checkpoint`'s answer
    and the ``keep - 1`` before it. Each JSON file goes first, so a pruning cut short leaves no checkpoint that looks
    complete without its tensors."""
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
        raise ValueError(f"keep must be a positive integer (the checkpoints kept), got {keep!r}")
    d = Path(directory)
    found = checkpoint_experiences(d)
    kept: list[int] = []
    for k in reversed(found):
        if len(kept) == keep:
            break
        if checkpoint_problem(d, k) is None:
            kept.append(k)
    if len(kept) < keep:  # fewer usable ones than asked: remove nothing
        return []
    removed = [k for k in found if k < kept[-1]]
    for k in removed:
        for path in _paths(d, k):
            path.unlink(missing_ok=True)
    return removed


def latest_checkpoint(directory: str | Path, upto: int | None = None) -> int | None:
    """Index of the last experience (<= ``upto``) with a complete, undamaged checkpoint, or None.

    A damaged one (unreadable JSON, truncated tensors, checksum mismatch) is skipped with a warning naming
    its file, so one bad file does not block every resume.
    """
    d = Path(directory)
    found = sorted((int(p.stem[3:]) for p in d.glob("exp*.json") if p.stem[3:].isdigit()), reverse=True) \
        if d.is_dir() else []
    for k in found:
        if upto is not None and k > upto:
            continue
        problem = checkpoint_problem(d, k)
        if problem is None:
            return k
        warnings.warn(f"skipping checkpoint exp{k} in '{d}': {problem}", RuntimeWarning, stacklevel=2)
    return None


def load_checkpoint(directory: str | Path, experience: int, model: torch.nn.Module,
                    config: dict | None = None) -> dict:
    """Restore the adapters into ``model`` and the RNG states; returns the saved ``extra`` dict.

    ``model`` is built as for the saved run (same timm model, image size, options and base weights file):
    the base is checked against the recorded fingerprint and the adapter tensors are loaded strictly. A
    checkpoint written with another ``config`` is refused with the differing keys named; a damaged one with
    its file named. The file, the configuration and the base are checked before anything is changed.
    """
    json_path, tensor_path = _paths(directory, experience)
    meta = _read_meta(json_path)
    if "state" in meta:
        raise ValueError(f"checkpoint '{json_path}' holds another model's state (written by save_state), not an "
                         "SDLoRAViT's; load it with load_state")
    _check_config(json_path, meta, config)
    tensors = _read_tensors(json_path, tensor_path, meta)
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    if meta["format"] == FORMAT:
        load_adapter_state(model, state, meta["adapters"], str(tensor_path))
    else:  # format 1: the whole model, backbone included
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"checkpoint '{tensor_path}' does not match this model ({' '.join(str(exc).split())[:300]}); "
                             "build the model as the saved run did (same sdlora_vit(model_name, img_size=..., "
                             "rank=...))") from exc
    _restore_rngs(tensors, meta)
    return meta["extra"]


def load_state(directory: str | Path, experience: int, config: dict | None = None,
               restore: Callable[[dict[str, Tensor], dict], None] | None = None,
               base: Mapping[str, Tensor] | None = None) -> tuple[dict[str, Tensor], dict, dict]:
    """Read a checkpoint written by :func:`save_state` and restore the RNG states; returns ``(tensors, state, extra)``.

    The file and ``config`` are checked before anything changes. ``restore(tensors, state)`` rebuilds the caller's
    model (this library does not know it) and runs before the RNG states are set: growing modules draws random
    initialisations, which must not shift the streams the resumed run continues with. ``base``: the freshly built
    model's tensors, which supply those the checkpoint left out (each checked against its recorded digest).
    """
    json_path, tensor_path = _paths(directory, experience)
    meta = _read_meta(json_path)
    if "state" not in meta:
        raise ValueError(f"checkpoint '{json_path}' holds an SDLoRAViT's adapters; load it with load_checkpoint")
    _check_config(json_path, meta, config)
    tensors = _read_tensors(json_path, tensor_path, meta)
    own = {k[len("state."):]: v for k, v in tensors.items() if k.startswith("state.")}
    own.update(_base_tensors(json_path, meta.get("omitted", {}), base or {}))
    if restore is not None:
        restore(own, meta["state"])
    _restore_rngs(tensors, meta)
    return own, meta["state"], meta["extra"]


def _base_tensors(json_path: Path, omitted: dict[str, str], base: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The tensors a checkpoint left out (equal to the base model's), from ``base``, each checked by its digest."""
    if not isinstance(omitted, dict) or not all(isinstance(d, str) for d in omitted.values()):
        raise ValueError(f"checkpoint '{json_path}' is damaged (its 'omitted' entry is not a map of tensor names to "
                         "digests); resume from an earlier checkpoint or start a new run")
    absent = sorted(k for k in omitted if k not in base)
    differ = sorted(k for k in omitted if k in base and tensor_digest(base[k]) != omitted[k])
    if absent or differ:
        names = (absent + differ)[:3]
        raise ValueError(f"checkpoint '{json_path}' leaves out {len(omitted)} tensors equal to the base model it was "
                         f"trained from, and this model {'lacks' if absent else 'differs in'} some of them "
                         f"({', '.join(names)}{' ...' if len(absent) + len(differ) > 3 else ''}); build the model "
                         "from the same weights file and settings as the saved run")
    return {k: base[k] for k in omitted}


def _check_config(json_path: Path, meta: dict, config: dict | None) -> None:
    if config is not None:
        diff = {k: (meta["config"].get(k), v) for k, v in config.items() if meta["config"].get(k) != v}
        if diff:
            raise ValueError(f"checkpoint '{json_path}' comes from another configuration: {diff} (saved, requested); "
                             "resume with the same settings or start a new run")


def _restore_rngs(tensors: dict[str, Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = []
    while f"rng.cuda.{len(cuda)}" in tensors:
        cuda.append(tensors[f"rng.cuda.{len(cuda)}"])
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[:torch.cuda.device_count()])
    v, s, g = meta["rng_python"]
    random.setstate((v, tuple(s), g))
    kind, keys, pos, has_gauss, cached = meta["rng_numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


class CheckpointPlugin(SupervisedPlugin, supports_distributed=True):
    """Checkpoints for a plain Avalanche script; ``resume()`` continues exactly where the last one was taken.

    Use: ``plugin = CheckpointPlugin(dir)``; build the strategy with it; ``start = plugin.resume(strategy)``;
    then ``for t, exp in enumerate(benchmark.train_stream[start:], start): strategy.train(exp); strategy.eval(...)``.

    The checkpoint of experience k is written when the next ``train`` call starts, not when experience k ends:
    whatever the script does between the two calls (evaluations, which draw from the torch RNG and update the
    forgetting, BWT and AAA metrics) is then part of it, and a resumed run continues with the same RNG and
    metric state as an uninterrupted one. A run killed between ``train`` calls resumes from the experience
    before (it is trained again, to the same result). ``save(strategy)`` writes the last one on demand (after
    the loop, for instance). Only the newest ``keep`` checkpoints stay (default 2, what resume needs:
    :func:`prune_checkpoints`); ``keep=None`` keeps one per experience (to analyse the model after each).

    Under torch.distributed only rank 0 writes (the ranks hold the same state); ``resume`` loads, on every rank, the
    checkpoint rank 0 finds, so the folder must be one every rank can read (one node, or a shared file system).
    """

    def __init__(self, directory: str | Path, config: dict | None = None, keep: int | None = KEEP_LAST) -> None:
        super().__init__()
        if keep is not None and (not isinstance(keep, int) or isinstance(keep, bool) or keep < 1):
            raise ValueError(f"keep must be a positive integer (checkpoints kept) or None (every one), got {keep!r}")
        self.directory = Path(directory)
        self.config = config or {}
        self.keep = keep
        self._finished: int | None = None  # last experience trained in this process
        self._saved: int | None = None

    def after_training_exp(self, strategy, **kwargs) -> None:
        """Note the finished experience: it is saved when the next ``train`` call starts (or by :meth:`save`)."""
        self._finished = strategy.experience.current_experience

    def before_training(self, strategy, **kwargs) -> None:
        """Save the experience the last ``train`` call finished, with the evaluator's state of that call."""
        # Runs before Avalanche's evaluator and periodic-eval hooks of this call (they follow user plugins).
        if self._finished is not None and self._finished != self._saved:
            self.save(strategy)

    def save(self, strategy) -> Path | None:
        """Checkpoint the state now, as the end of the last trained experience; None if none was trained.

        On ranks other than 0 nothing is written and None is returned.
        """
        if self._finished is None:
            return None
        if not DistributedHelper.is_main_process:
            self._saved = self._finished
            return None
        path = save_checkpoint(self.directory, self._finished, strategy.model, extra=strategy_state(strategy),
                               config=self.config)
        self._saved = self._finished
        if self.keep is not None:
            prune_checkpoints(self.directory, self.keep)
        return path

    def resume(self, strategy) -> int:
        """Load the latest valid checkpoint into ``strategy``; returns the index of the next experience to train."""
        last = latest_checkpoint(self.directory) if DistributedHelper.is_main_process else None
        last = DistributedHelper.broadcast_object(last)  # every rank resumes from the one rank 0 chose
        if last is None:
            return 0
        extra = load_checkpoint(self.directory, last, strategy.model, config=self.config)
        restore_strategy_state(strategy, extra)
        self._finished = self._saved = last
        return last + 1


def strategy_state(strategy) -> dict:
    """The small non-tensor state of a strategy (JSON-serialisable).

    Classes seen so far (``strategy._seen_classes``), every plugin's ``state_dict()`` (any plugin with both
    ``state_dict`` and ``load_state_dict``), Avalanche's clock counters and the evaluator's metric state.
    """
    state: dict = {"seen_classes": sorted(int(c) for c in getattr(strategy, "_seen_classes", set()))}
    plugins = {}
    for key, p in keyed_by_class(strategy.plugins):
        if has_state_dict(p):
            plugins[key] = p.state_dict()
            try:
                json.dumps(plugins[key])
            except (TypeError, ValueError) as exc:
                raise TypeError(f"{key}.state_dict() must return JSON-serialisable data for a checkpoint ({exc})") from exc
        elif isinstance(p, RankReductionPlugin):  # plugins written before they had state_dict()
            state["rank_reduction_task"] = p.task
        elif isinstance(p, DistillationPlugin):
            state["distillation_history"] = p.history
    state["plugins"] = plugins
    clock = getattr(strategy, "clock", None)
    if clock is not None:
        state["clock"] = {k: v for k, v in vars(clock).items() if type(v) is int}
    evaluator = getattr(strategy, "evaluator", None)
    if evaluator is not None:
        state["evaluator"] = evaluator_state(evaluator)
    return state


def restore_strategy_state(strategy, state: dict) -> None:
    """Inverse of :func:`strategy_state`; also reads checkpoints written before plugins had ``state_dict()``."""
    if hasattr(strategy, "_seen_classes"):
        strategy._seen_classes = set(state.get("seen_classes", []))
    saved = dict(state.get("plugins", {}))
    for key, p in keyed_by_class(strategy.plugins):
        if has_state_dict(p) and key in saved:
            p.load_state_dict(saved.pop(key))
        elif isinstance(p, RankReductionPlugin) and "rank_reduction_task" in state:
            p.task = state["rank_reduction_task"]
        elif isinstance(p, DistillationPlugin) and "distillation_history" in state:
            p.history = state["distillation_history"]
    if saved:
        warnings.warn(f"the checkpoint holds state of plugins this strategy does not have: {sorted(saved)}; "
                      "build the strategy with the same plugins to restore it", RuntimeWarning, stacklevel=2)
    clock = getattr(strategy, "clock", None)
    if clock is not None:
        for k, v in state.get("clock", {}).items():
            setattr(clock, k, v)
    evaluator = getattr(strategy, "evaluator", None)
    if evaluator is not None and "evaluator" in state:
        restore_evaluator_state(evaluator, state["evaluator"])
