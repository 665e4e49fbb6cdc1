"""Random labelled images as an Avalanche classification dataset: the tensor benchmarks of the tests that need no
CIFAR-100 (tests/test_dropin.py, tests/test_training_trace.py and tests/ddp_worker.py, which torchrun runs as a
script: a plain module beside it, not conftest, so that process imports no pytest fixtures)."""

from __future__ import annotations

import torch
from avalanche.benchmarks.utils import as_classification_dataset
from avalanche.benchmarks.utils.classification_dataset import TaskAwareClassificationDataset
from torch.utils.data import TensorDataset


class LabelledTensors(TensorDataset):
    """A TensorDataset with the ``targets`` list Avalanche's classification datasets read."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        super().__init__(x, y)
        self.targets = y.tolist()


def random_images(labels: torch.Tensor, generator: torch.Generator, size: int) -> TaskAwareClassificationDataset:
    """One N(0, 1) image of ``size`` x ``size`` pixels, drawn from ``generator``, per entry of ``labels``."""
    x = torch.randn(len(labels), 3, size, size, generator=generator)
    return as_classification_dataset(LabelledTensors(x, labels))
