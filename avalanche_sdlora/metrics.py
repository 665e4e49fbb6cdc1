"""Continual-learning summary metrics and the Avalanche plugin metrics Avalanche lacks.

Avalanche 0.6 has accuracy, forgetting and BWT plugins but no Average Anytime Accuracy (AAA,
the mean over experiences of the seen-class accuracy) and no parameter accounting for adapters,
so both are written here as ``PluginMetric``s. The pure functions below compute the reported
numbers from an accuracy matrix ``R[i, j]`` = accuracy on experience j after training experience i
(NaN where j > i), so they can be checked against hand-computed values.
"""

from __future__ import annotations

import numpy as np
import torch
from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue
from avalanche.evaluation.metrics import Accuracy


def final_accuracy(R: np.ndarray, sizes: np.ndarray | None = None) -> float:
    """Acc: accuracy over all experiences after the last one (weighted by test-set sizes)."""
    last = np.asarray(R, float)[-1]
    w = np.ones_like(last) if sizes is None else np.asarray(sizes, float)
    return float(np.sum(last * w) / np.sum(w))


def seen_accuracy(R: np.ndarray, sizes: np.ndarray | None = None) -> np.ndarray:
    """Accuracy on all classes seen so far after each experience."""
    R = np.asarray(R, float)
    w = np.ones(R.shape[1]) if sizes is None else np.asarray(sizes, float)
    return np.array([np.sum(R[i, : i + 1] * w[: i + 1]) / np.sum(w[: i + 1]) for i in range(R.shape[0])])


def average_anytime_accuracy(R: np.ndarray, sizes: np.ndarray | None = None) -> float:
    """AAA: mean over experiences of the seen-class accuracy."""
    return float(np.mean(seen_accuracy(R, sizes)))


def forgetting(R: np.ndarray) -> float:
    """Mean over old experiences of (best earlier accuracy - final accuracy) (Chaudhry et al., 2018)."""
    R = np.asarray(R, float)
    T = R.shape[0]
    if T < 2:
        return 0.0
    return float(np.mean([np.max(R[j:T - 1, j]) - R[T - 1, j] for j in range(T - 1)]))


def backward_transfer(R: np.ndarray) -> float:
    """BWT: mean over old experiences of (final accuracy - accuracy right after learning it) (Lopez-Paz & Ranzato, 2017)."""
    R = np.asarray(R, float)
    T = R.shape[0]
    if T < 2:
        return 0.0
    return float(np.mean([R[T - 1, j] - R[j, j] for j in range(T - 1)]))


class AverageAnytimeAccuracy(PluginMetric[float]):
    """AAA as an Avalanche metric: after every ``eval`` call, the mean of the stream accuracies so far.

    Call ``strategy.eval`` once after each training experience on the experiences seen so far
    (the protocol of the paper); the emitted value is then AAA up to that experience.
    """

    def __init__(self) -> None:
        super().__init__()
        self._accuracy = Accuracy()
        self._history: list[float] = []

    def reset(self) -> None:
        self._history = []

    def result(self) -> float:
        return float(np.mean(self._history)) if self._history else 0.0

    def before_eval(self, strategy) -> None:
        self._accuracy.reset()

    def after_eval_iteration(self, strategy) -> None:
        self._accuracy.update(strategy.mb_output, strategy.mb_y)

    def after_eval(self, strategy):
        self._history.append(self._accuracy.result())
        return [MetricValue(self, "AAA/eval_phase/test_stream", self.result(), strategy.clock.train_iterations)]

    def __str__(self) -> str:
        return "AAA"


class ParameterCount(PluginMetric[int]):
    """Trainable parameters during the experience and adapter parameters stored after it."""

    def __init__(self) -> None:
        super().__init__()
        self._trainable = 0

    def reset(self) -> None:
        self._trainable = 0

    def result(self) -> int:
        return self._trainable

    def after_training_epoch(self, strategy) -> None:
        self._trainable = sum(p.numel() for p in strategy.model.parameters() if p.requires_grad)

    def after_training_exp(self, strategy):
        step = strategy.clock.train_iterations
        values = [MetricValue(self, "TrainableParams/train_phase/train_stream", self._trainable, step)]
        stored = getattr(strategy.model, "stored_adapter_params", None)
        if callable(stored):
            values.append(MetricValue(self, "StoredAdapterParams/train_phase/train_stream", int(stored()), step))
        return values

    def __str__(self) -> str:
        return "ParameterCount"


@torch.no_grad()
def count_params(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
