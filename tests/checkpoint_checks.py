"""What the peers' checkpoint tests compare (tests/test_peer_checkpoint_<peer>.py): tensors to the bit, predictions."""

from __future__ import annotations

import torch


def cloned(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A copy that later training cannot change."""
    return {k: v.detach().clone() for k, v in tensors.items()}


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Same names and every tensor equal to the bit, naming the first that differ."""
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ: {different[:5]}"


@torch.no_grad()
def predictions(strategy, images: torch.Tensor) -> torch.Tensor:
    """The strategy's model's outputs in eval mode."""
    return strategy.model.eval()(images)
