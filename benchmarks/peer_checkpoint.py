"""Checkpoints of the peer methods, so a killed peer run resumes from its last finished experience, as SD-LoRA's does.

The library's checkpoint stores an ``SDLoRAViT``'s adapters; a peer's model is its own (prompt pools, per-task
adapters, class statistics, prototypes), so a peer strategy says what to store through three methods
(:class:`CheckpointableStrategy`) and :func:`avalanche_sdlora.checkpoint.save_state` writes them in the same files,
with the same checksum, RNG states and evaluator state (one format, no pickle). Whatever a peer grows per task
(new pairs, prompt rows, head rows) is rebuilt from the JSON ``structure`` before the tensors load strictly, so a
tensor left out or a shape that differs is an error, never a silently different model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from torch import Tensor

from avalanche_sdlora.checkpoint import load_checkpoint, load_state, restore_strategy_state, save_checkpoint, save_state
from avalanche_sdlora.checkpoint import strategy_state
from avalanche_sdlora.model import SDLoRAViT


@runtime_checkable
class CheckpointableStrategy(Protocol):
    """A strategy whose whole trained state is ``checkpoint_tensors()`` plus the JSON ``checkpoint_structure()``."""

    def checkpoint_tensors(self) -> dict[str, Tensor]:
        """Every tensor a resumed run needs (the model's state dict and any tensor the strategy holds)."""

    def checkpoint_structure(self) -> dict:
        """JSON that rebuilds, on a freshly built strategy, the modules the tensors fill (tasks grown, ...)."""

    def restore_checkpoint(self, tensors: dict[str, Tensor], structure: dict) -> None:
        """Grow a freshly built strategy to ``structure`` and load ``tensors`` strictly."""


def _model(strategy):
    return getattr(strategy.model, "module", strategy.model)  # a DistributedDataParallel wrapper's module


def save(strategy, directory: str | Path, experience: int, config: dict) -> Path:
    """Checkpoint ``strategy`` after ``experience``: the library's format for SD-LoRA models, :func:`save_state`
    with the strategy's own tensors and structure for a peer."""
    model = _model(strategy)
    if isinstance(model, SDLoRAViT):
        return save_checkpoint(directory, experience, model, extra=strategy_state(strategy), config=config)
    if not isinstance(strategy, CheckpointableStrategy):
        raise TypeError(f"{type(strategy).__name__} cannot be checkpointed: it defines no checkpoint_tensors, "
                        "checkpoint_structure and restore_checkpoint (benchmarks.peer_checkpoint)")
    return save_state(directory, experience, strategy.checkpoint_tensors(), strategy.checkpoint_structure(),
                      extra=strategy_state(strategy), config=config)


def load(strategy, directory: str | Path, experience: int, config: dict) -> dict:
    """Restore ``strategy`` (freshly built) from checkpoint ``experience``; returns the saved strategy state, which
    the caller restores (:func:`avalanche_sdlora.checkpoint.restore_strategy_state`) after its own checks."""
    model = _model(strategy)
    if isinstance(model, SDLoRAViT):
        return load_checkpoint(directory, experience, model, config=config)
    return load_state(directory, experience, config=config, restore=strategy.restore_checkpoint)[2]


__all__ = ["CheckpointableStrategy", "save", "load", "restore_strategy_state"]
