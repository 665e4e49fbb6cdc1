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
from avalanche.evaluation.metric_utils import default_metric_name_template, generic_get_metric_name, stream_type
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
    """AAA: mean over experiences of the seen-class accuracy; the one definition every report uses.

    ``R`` is the accuracy matrix (2-D; ``sizes`` weights its experiences) or, 1-D, the seen-class accuracies
    measured after each experience (the harness's ``acc_seen`` column, the metric plugin's history).
    """
    R = np.asarray(R, float)
    return float(np.mean(R if R.ndim == 1 else seen_accuracy(R, sizes)))


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
    """AAA as an Avalanche metric, per eval stream: the mean over training experiences of the seen-class accuracy.

    After training experience i, the value recorded for a stream is the accuracy, in the last eval of that
    stream before the next training experience starts, on its samples of the classes trained so far
    (experiences 0..i). Samples of classes not trained yet are left out, so evaluating on the whole test stream
    (``strategy.eval(benchmark.test_stream)``) gives the same AAA as the paper's protocol
    (``strategy.eval(benchmark.test_stream[: i + 1])``). Evals during training (periodic evaluation,
    ``eval_every >= 0``) and before the first experience record nothing. Emitted as ``AAA/eval_phase/<stream>``
    (``AAA/eval_phase/test_stream`` for the test stream) after every eval that records a value.
    """

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[int] = set()
        self._finished = 0  # training experiences finished
        self._training = False
        self._history: dict[str, dict[int, float]] = {}  # stream -> {training experience: seen-class accuracy}
        self._current: dict[str, Accuracy] = {}

    def reset(self) -> None:
        """Forget every accuracy measured so far."""
        self._history = {}

    def result(self, stream: str = "test") -> float:
        """AAA of ``stream`` over the evaluations so far (0 before the first)."""
        values = self._history.get(stream, {})
        return average_anytime_accuracy([values[k] for k in sorted(values)]) if values else 0.0

    def before_training_exp(self, strategy) -> None:
        """Evaluations while an experience trains do not count."""
        self._training = True

    def after_training_exp(self, strategy) -> None:
        """The experience is finished: its classes count as seen."""
        self._training = False
        self._finished += 1
        self._seen |= {int(c) for c in strategy.experience.classes_in_this_experience}

    def before_eval(self, strategy) -> None:
        """Start counting this evaluation's correct predictions."""
        self._current = {}

    def after_eval_iteration(self, strategy) -> None:
        """Count the minibatch's correct predictions on seen classes."""
        if self._training or not self._seen:
            return
        y = strategy.mb_y
        keep = torch.isin(y, torch.tensor(sorted(self._seen), device=y.device))
        if keep.any():
            stream = stream_type(strategy.experience)
            self._current.setdefault(stream, Accuracy()).update(strategy.mb_output[keep], y[keep])

    def after_eval(self, strategy):
        """Record this evaluation's seen-class accuracy and emit AAA."""
        values = []
        for stream, acc in self._current.items():
            self._history.setdefault(stream, {})[self._finished - 1] = acc.result()
            name = generic_get_metric_name(default_metric_name_template,
                                           {"metric_name": str(self), "phase_name": "eval", "stream_name": stream})
            values.append(MetricValue(self, name, self.result(stream), strategy.clock.train_iterations))
        return values

    def state_dict(self) -> dict:
        """JSON-serialisable state, so a resumed run continues the same average."""
        return {"seen": sorted(self._seen), "finished": self._finished,
                "history": {s: [[k, v] for k, v in sorted(h.items())] for s, h in self._history.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (a resumed run)."""
        self._seen = {int(c) for c in state["seen"]}
        self._finished = int(state["finished"])
        self._history = {s: {int(k): float(v) for k, v in h} for s, h in state["history"].items()}

    def __str__(self) -> str:
        return "AAA"


class ParameterCount(PluginMetric[int]):
    """Trainable parameters during the experience and adapter parameters stored after it."""

    def __init__(self) -> None:
        super().__init__()
        self._trainable = 0

    def reset(self) -> None:
        """Start the count at 0."""
        self._trainable = 0

    def result(self) -> int:
        """The last count."""
        return self._trainable

    def after_training_epoch(self, strategy) -> None:
        """Count the trainable parameters."""
        self._trainable = sum(p.numel() for p in strategy.model.parameters() if p.requires_grad)

    def after_training_exp(self, strategy):
        """Emit the trainable count and the adapter parameters stored after the experience."""
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
    """Number of parameters of ``module`` (only those with ``requires_grad`` if ``trainable_only``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
