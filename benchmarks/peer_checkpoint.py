"""Checkpoints of the peer methods, so a killed peer run resumes from its last finished experience, as SD-LoRA's does.

The library's checkpoint stores an ``SDLoRAViT``'s adapters; a peer's model is its own (prompt pools, per-task
adapters, class statistics, prototypes), so a peer strategy says what to store through three methods
(:class:`CheckpointableStrategy`) and :func:`avalanche_sdlora.checkpoint.save_state` writes them in the same files,
with the same checksum, RNG states and evaluator state (one format, no pickle). Whatever a peer grows per task
(new pairs, prompt rows, head rows) is rebuilt from the JSON ``structure`` before the tensors load strictly, so a
tensor left out or a shape that differs is an error, never a silently different model.

The frozen backbone is not stored again in every checkpoint: the harness passes :func:`base_digests` of the freshly
built strategy, tensors still equal to theirs are left out (their digests recorded), and :func:`load` takes them from
the freshly built strategy it restores, checking each digest. A ViT-Tiny peer's checkpoint shrinks from about 22 MB to
what the method trained; a strategy saved without ``base`` stores everything, as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from torch import Tensor

from avalanche_sdlora.checkpoint import load_checkpoint, load_state, restore_strategy_state, save_checkpoint, save_state
from avalanche_sdlora.checkpoint import strategy_state, tensor_digests
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


def base_digests(strategy) -> dict[str, str] | None:
    """Digests of a freshly built peer strategy's checkpoint tensors (its pretrained backbone), for :func:`save`'s
    ``base``; None for an SD-LoRA model, whose checkpoint never holds the backbone."""
    if isinstance(_model(strategy), SDLoRAViT) or not isinstance(strategy, CheckpointableStrategy):
        return None
    return tensor_digests(strategy.checkpoint_tensors())


def save(strategy, directory: str | Path, experience: int, config: dict, base: dict[str, str] | None = None) -> Path:
    """Checkpoint ``strategy`` after ``experience``: the library's format for SD-LoRA models, :func:`save_state`
    with the strategy's own tensors and structure for a peer (leaving out those equal to ``base``'s digests)."""
    model = _model(strategy)
    if isinstance(model, SDLoRAViT):
        return save_checkpoint(directory, experience, model, extra=strategy_state(strategy), config=config)
    if not isinstance(strategy, CheckpointableStrategy):
        raise TypeError(f"{type(strategy).__name__} cannot be checkpointed: it defines no checkpoint_tensors, "
                        "checkpoint_structure and restore_checkpoint (benchmarks.peer_checkpoint)")
    return save_state(directory, experience, strategy.checkpoint_tensors(), strategy.checkpoint_structure(),
                      extra=strategy_state(strategy), config=config, base=base)


def load(strategy, directory: str | Path, experience: int, config: dict) -> dict:
    """Restore ``strategy`` (freshly built) from checkpoint ``experience``; returns the saved strategy state, which
    the caller restores (:func:`avalanche_sdlora.checkpoint.restore_strategy_state`) after its own checks."""
    model = _model(strategy)
    if isinstance(model, SDLoRAViT):
        return load_checkpoint(directory, experience, model, config=config)
    fresh = strategy.checkpoint_tensors()  # the base any left-out tensor comes from, taken before restoring
    return load_state(directory, experience, config=config, restore=strategy.restore_checkpoint, base=fresh)[2]


__all__ = ["CheckpointableStrategy", "base_digests", "save", "load", "restore_strategy_state"]
