"""Exact resume from the last finished experience: safetensors + JSON, never pickle.

Avalanche's own checkpointing pickles the whole strategy with dill, which fails on these models
and would execute code on load. Here a checkpoint is the model's state dict (safetensors), the
torch RNG state (a uint8 tensor in the same file) and a JSON file with the experience index, the
Python/NumPy RNG states and each plugin's own small state. Loading runs no code from the file.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import torch
from avalanche.core import SupervisedPlugin
from safetensors.torch import load_file, save_file

FORMAT = "avalanche-sdlora-checkpoint/1"


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def save_checkpoint(directory: str | Path, experience: int, model: torch.nn.Module, extra: dict | None = None,
                    config: dict | None = None) -> Path:
    """Write ``exp<k>.safetensors`` and ``exp<k>.json``; the JSON is written last and marks completeness."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors["rng.torch"] = torch.get_rng_state()
    _atomic(d / f"exp{experience}.safetensors", lambda p: save_file(tensors, str(p)))
    np_state = np.random.get_state()
    meta = {"format": FORMAT, "experience": experience, "config": config or {}, "extra": extra or {},
            "rng_python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
            "rng_numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])]}
    _atomic(d / f"exp{experience}.json", lambda p: p.write_text(json.dumps(meta)))
    return d / f"exp{experience}.json"


def latest_checkpoint(directory: str | Path, upto: int | None = None) -> int | None:
    """Index of the last experience (<= ``upto``) with a complete checkpoint (its JSON exists), or None."""
    d = Path(directory)
    found = [int(p.stem[3:]) for p in d.glob("exp*.json") if p.stem[3:].isdigit()] if d.is_dir() else []
    found = [k for k in found if upto is None or k <= upto]
    return max(found) if found else None


def load_checkpoint(directory: str | Path, experience: int, model: torch.nn.Module,
                    config: dict | None = None) -> dict:
    """Restore model weights and RNG states; returns the saved ``extra`` dict.

    A checkpoint written with another configuration is refused with the differing keys named.
    """
    d = Path(directory)
    meta = json.loads((d / f"exp{experience}.json").read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"'{d}/exp{experience}.json' is not an avalanche-sdlora checkpoint (format {meta.get('format')!r})")
    if config is not None:
        diff = {k: (meta["config"].get(k), v) for k, v in config.items() if meta["config"].get(k) != v}
        if diff:
            raise ValueError(f"checkpoint in '{d}' comes from another configuration: {diff} (saved, requested); "
                             "resume with the same settings or start a new run")
    tensors = load_file(str(d / f"exp{experience}.safetensors"))
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"checkpoint in '{d}' does not match this model ({' '.join(str(exc).split())[:300]}); "
                         "build the model with the same --model, --img-size and --rank") from exc
    torch.set_rng_state(tensors["rng.torch"])
    v, s, g = meta["rng_python"]
    random.setstate((v, tuple(s), g))
    kind, keys, pos, has_gauss, cached = meta["rng_numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    return meta["extra"]


class CheckpointPlugin(SupervisedPlugin):
    """For a plain Avalanche script: checkpoint after every training experience, resume with ``resume()``.

    Use: ``plugin = CheckpointPlugin(dir)``; build the strategy with it; ``start = plugin.resume(strategy)``;
    then train from ``benchmark.train_stream[start:]``.
    """

    def __init__(self, directory: str | Path, config: dict | None = None) -> None:
        super().__init__()
        self.directory = Path(directory)
        self.config = config or {}

    def after_training_exp(self, strategy, **kwargs) -> None:
        exp = strategy.experience.current_experience
        save_checkpoint(self.directory, exp, strategy.model, extra=strategy_state(strategy), config=self.config)

    def resume(self, strategy) -> int:
        """Load the latest checkpoint into ``strategy``; returns the index of the next experience to train."""
        last = latest_checkpoint(self.directory)
        if last is None:
            return 0
        extra = load_checkpoint(self.directory, last, strategy.model, config=self.config)
        restore_strategy_state(strategy, extra)
        return last + 1


def strategy_state(strategy) -> dict:
    """The small non-tensor state of an SD-LoRA strategy and its plugins (JSON-serialisable)."""
    from .plugins import DistillationPlugin, RankReductionPlugin

    state = {"seen_classes": sorted(getattr(strategy, "_seen_classes", set()))}
    for p in strategy.plugins:
        if isinstance(p, RankReductionPlugin):
            state["rank_reduction_task"] = p.task
        if isinstance(p, DistillationPlugin):
            state["distillation_history"] = p.history
    return state


def restore_strategy_state(strategy, state: dict) -> None:
    from .plugins import DistillationPlugin, RankReductionPlugin

    if hasattr(strategy, "_seen_classes"):
        strategy._seen_classes = set(state.get("seen_classes", []))
    for p in strategy.plugins:
        if isinstance(p, RankReductionPlugin):
            p.task = state.get("rank_reduction_task", 0)
        if isinstance(p, DistillationPlugin):
            p.history = state.get("distillation_history", [])
