"""Each test image's predicted class after a run's latest experience, and the paired difference of two runs.

Two methods scored on the same test images make correlated errors, so the noise of their accuracy difference on one
class order is far smaller than that of two independent scores. Reports can only say whether a difference on one
order is beyond that noise when they hold what each method predicted for each image: accuracy alone cannot tell a
1-point lead that 100 images decide from one that 1000 decide. Avalanche keeps no per-image predictions (its metrics
reduce each minibatch to counts at once), so :class:`PredictionRecorder` is a plugin of our own that collects them
during the evaluation the run does anyway (nothing is evaluated twice), and the runner writes them beside the part:
``predictions/<method>-seed<k>.csv`` (:meth:`benchmarks.run_folder.RunFolder.predictions`), rewritten after every
experience, holding the labels and predictions on the seen classes' test images in the order the stream evaluates
them, and the experience they follow. Under torchrun every rank evaluates only its shard, so no file is written.

Runs written before runs kept predictions get them from their last checkpoint, where it is still there:
``python -m benchmarks.predictions RUN_DIR`` re-evaluates each finished (method, seed) without predictions from its
last experience's checkpoint, on the run's settings and one torch thread, and keeps the result only when it scores
exactly the accuracy the run recorded (the same evaluation; a run from another machine type may round otherwise,
and a method whose evaluation changes its model, as MOS's literal adapter pulls do, is evaluated from a later state
than the one its checkpoint followed, so it rarely reproduces: it is then not kept).

:func:`paired_difference` is the statistic the class-order report and the tuning use: accuracy of A minus that of B
on the same images, and twice its standard error from the images where exactly one of them is right.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

from .commands import print_kept_help

if __name__ == "__main__":  # --help before torch, timm and Avalanche load
    print_kept_help("benchmarks.predictions", sys.argv[1:])

import numpy as np  # noqa: E402
import torch  # noqa: E402
from avalanche.core import SupervisedPlugin  # noqa: E402

from avalanche_sdlora.atomic import write_text  # noqa: E402

from .folder_checks import DamagedRunFile  # noqa: E402

COLUMNS = "experience,label,predicted"  # a predictions file's header
_FIX = "delete it: the reports then show no paired bound for that run (rerun it to have one)"


@dataclass(frozen=True)
class Predictions:
    """What one run predicted for each test image it was evaluated on after ``experience`` (stream order)."""

    experience: int
    y_true: np.ndarray
    y_pred: np.ndarray

    @property
    def accuracy(self) -> float:
        return float((self.y_true == self.y_pred).mean()) if len(self.y_true) else float("nan")


class PredictionRecorder(SupervisedPlugin):
    """Collects the predicted class (argmax of the logits, as Avalanche's accuracy takes it) and the label of every
    image of each ``strategy.eval`` call; :attr:`last` holds the latest call's."""

    def __init__(self) -> None:
        super().__init__()
        self._true: list[torch.Tensor] = []
        self._pred: list[torch.Tensor] = []
        self.last: tuple[np.ndarray, np.ndarray] | None = None

    def before_eval(self, strategy, **kwargs) -> None:
        self._true, self._pred = [], []

    def after_eval_iteration(self, strategy, **kwargs) -> None:
        self._true.append(strategy.mb_y.detach().to("cpu", torch.int32))
        out = strategy.mb_output.detach()
        pred = out.argmax(dim=1) if out.ndim > 1 else out  # as Avalanche's Accuracy takes the predicted class
        self._pred.append(pred.to("cpu", torch.int32))

    def after_eval(self, strategy, **kwargs) -> None:
        cat = (lambda xs: torch.cat(xs).numpy()) if self._true else (lambda xs: np.zeros(0, np.int32))
        self.last = (cat(self._true), cat(self._pred))
        self._true, self._pred = [], []

    def taken(self, experience: int) -> Predictions:
        """The latest evaluation's predictions, recorded as following ``experience``."""
        if self.last is None:
            raise RuntimeError("PredictionRecorder.taken: no evaluation has run since the recorder was attached")
        return Predictions(experience, *self.last)


def save(path: str | Path, predictions: Predictions) -> None:
    """Write ``predictions`` to ``path`` as a CSV (``experience,label,predicted``, one row per image, stream order;
    results/ holds only CSVs, plots and tables), atomically: a crash leaves the previous file."""
    rows = "".join(f"{predictions.experience},{t},{q}\n" for t, q in zip(predictions.y_true.tolist(),
                                                                        predictions.y_pred.tolist()))
    write_text(path, COLUMNS + "\n" + rows)


def load(path: str | Path) -> Predictions:
    """The predictions in ``path``, or a refusal naming the file when it is not one :func:`save` wrote."""
    path = Path(path)
    try:
        text = path.read_text()
        header, *lines = text.splitlines()
        if header != COLUMNS or not text.endswith("\n"):
            raise ValueError(f"its header is not {COLUMNS!r} or its last row is cut")
        table = np.array([[int(v) for v in line.split(",")] for line in lines], dtype=np.int64).reshape(-1, 3)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DamagedRunFile(f"error: '{path}' is not a predictions file the harness wrote ({exc}); {_FIX}") from None
    experiences = set(table[:, 0].tolist())
    if len(experiences) > 1:
        raise DamagedRunFile(f"error: '{path}' holds rows of experiences {sorted(experiences)}, not one; {_FIX}")
    return Predictions(experiences.pop() if experiences else -1, table[:, 1], table[:, 2])


def load_of_run(path: str | Path, experience: int, acc: float) -> Predictions:
    """The predictions in ``path``, refused (naming the file) unless they follow ``experience`` and score ``acc``: the
    run's last row. Another run's file, or an edited one, would otherwise pair images it never answered."""
    p = load(path)
    if p.experience != experience or abs(p.accuracy - acc) > 1e-9:
        raise DamagedRunFile(f"error: '{path}' does not hold the predictions of its run's last experience (they follow "
                             f"experience {p.experience} and score {100 * p.accuracy:.2f} %, the part ends at "
                             f"experience {experience} with {100 * acc:.2f} %); {_FIX}")
    return p


@dataclass(frozen=True)
class PairedDifference:
    """Accuracy of A minus that of B on the same ``n`` images and twice its standard error (fractions, as the
    harness computes accuracies)."""

    diff: float
    bound: float
    n: int
    only_a: int  # images A classifies right and B wrong
    only_b: int

    @property
    def resolved(self) -> bool:
        """The difference is larger than twice its standard error."""
        return abs(self.diff) > self.bound


def paired_difference(a: Predictions, b: Predictions) -> PairedDifference:
    """A minus B on the same images: the difference ``d`` of their accuracies and twice the standard error of the
    mean of per-image differences, 2 sqrt(((only_a + only_b)/n - d^2) / n) (the paired form of the
    independent-scores bound the tuning otherwise uses; fractions). Refused when the two were not scored on the same
    labels in the same order (another class order, test subset or experience)."""
    if a.experience != b.experience or not np.array_equal(a.y_true, b.y_true):
        raise ValueError(f"paired_difference: the two runs were not scored on the same images (experiences "
                         f"{a.experience} and {b.experience}, {len(a.y_true)} and {len(b.y_true)} images); pass runs "
                         "of the same protocol and class order after the same experience")
    n = len(a.y_true)
    right_a, right_b = a.y_true == a.y_pred, b.y_true == b.y_pred
    only_a, only_b = int((right_a & ~right_b).sum()), int((right_b & ~right_a).sum())
    d = (only_a - only_b) / n
    var = max((only_a + only_b) / n - d * d, 0.0) / n
    return PairedDifference(d, 2 * math.sqrt(var), n, only_a, only_b)


def main(argv: list[str] | None = None) -> list[str]:
    """Re-evaluate the finished runs of a run folder that kept no predictions, from their last checkpoint; returns
    the ``method-seedN`` names whose predictions were written."""
    from . import compare, inputs, runner
    from .run_folder import RunFolder

    p = compare.Parser(prog="python -m benchmarks.predictions", description=main.__doc__.split(";")[0])
    p.add_argument("run", metavar="RUN_DIR", help="a run folder of benchmarks.compare (runs/<protocol>/<run-id>)")
    p.add_argument("--methods", nargs="+", help="only these methods' runs (default: every finished one)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as the harness's runs)")
    args = p.parse_args(argv)
    if args.threads <= 0:
        p.error(f"--threads must be a positive integer, got {args.threads}")
    from .methods import method_names

    unknown = sorted(set(args.methods or ()) - set(method_names()))
    if unknown:
        p.error(f"--methods: unknown method(s) {unknown}; choose from {', '.join(method_names())}")
    folder = RunFolder(args.run)
    if not folder.has_config():
        p.error(f"RUN_DIR '{folder.path}' is not a run folder of benchmarks.compare (no config.json)")
    # the run's own settings, its weights and data found as a resume finds them
    cfg = inputs.resolved(compare.parse_args(["--resume", str(folder.path), "--quiet"]).config)
    torch.set_num_threads(args.threads)
    written, missed = [], []
    for method, seed in folder.part_names():
        if args.methods and method not in args.methods:
            continue
        rows = folder.read_part(method, seed)
        last = max(rows, key=lambda r: r["experience"])
        if last["experience"] != last["n_experiences"] - 1 or folder.predictions(method, seed).exists():
            continue
        name = f"{method}-seed{seed}"
        try:
            kept, acc = runner.predict_again(method, seed, cfg, inputs.benchmark_for(cfg, seed), folder)
        except ValueError as exc:
            missed.append(f"{name}: {exc}")
            continue
        if abs(acc - float(last["acc_seen"])) > 1e-12 or abs(kept.accuracy - float(last["acc_seen"])) > 1e-12:
            missed.append(f"{name}: evaluated again it scores {100 * acc:.2f} %, the run recorded "
                          f"{100 * float(last['acc_seen']):.2f} % (another machine type or thread count rounds "
                          "otherwise): not kept")
            continue
        save(folder.predictions(method, seed), kept)
        written.append(name)
        print(f"{folder.path}: {name}: predictions after experience {kept.experience} ({len(kept.y_true)} images, "
              f"{100 * kept.accuracy:.2f} %, as recorded)", flush=True)
    for line in missed:
        print(f"note: {line}", file=sys.stderr, flush=True)
    print(f"{folder.path}: {len(written)} run(s) given predictions" + (f", {len(missed)} not" if missed else ""))
    return written


if __name__ == "__main__":
    from .compare import cli

    sys.exit(cli(main=main))
