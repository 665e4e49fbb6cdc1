"""What a (method, seed) resumed from a checkpoint needs besides the model so that it equals an uninterrupted one.

The checkpoint restores the model, the RNG states and the strategy's plugins. Two things live outside it: the
Avalanche metrics that accumulate over experiences (forgetting and BWT keep each experience's accuracy right
after it was learned; AAA keeps every earlier seen-class accuracy) and the CSVLogger's files. Both are rebuilt
from what the run already wrote: the metric state from the kept rows of the run's part (each row holds exactly
the floats those metrics were fed: ``acc_exp_<j>`` of row j and ``acc_seen``; CSV round-trips them exactly), the
logger files by keeping their rows up to the checkpoint and appending after them.
"""

from __future__ import annotations

from pathlib import Path

from avalanche.evaluation.metrics.forgetting_bwt import GenericExperienceForgetting
from avalanche.logging import CSVLogger

from avalanche_sdlora.metrics import AverageAnytimeAccuracy

from .reports import atomic_write_text

LOG_FILES = ("training_results.csv", "eval_results.csv")


class ResumableCSVLogger(CSVLogger):
    """Avalanche's ``CSVLogger`` whose files survive a resume; its files open at ``start(keep_upto)``.

    ``CSVLogger.__init__`` always opens its files in write mode, so a resumed run would lose every row written
    before the interruption. ``start(k)`` keeps the rows of training experiences 0..k (rows of an experience the
    interruption cut short are dropped: it is trained again) and appends after them; ``start(None)`` is
    ``CSVLogger``'s own start (a run that restarts restarts its logs too). It opens late because which
    checkpoint a run resumes from is known only once the checkpoint has loaded into the strategy.
    """

    def __init__(self, log_folder: str | Path) -> None:
        super(CSVLogger, self).__init__()  # CSVLogger.__init__ would truncate the files now
        self.log_folder = str(log_folder)
        self.training_exp_id = None
        self.in_train_phase = None
        self.val_acc, self.val_loss = 0, 0

    def start(self, keep_upto: int | None = None) -> None:
        if keep_upto is None:
            CSVLogger.__init__(self, self.log_folder)
            return
        folder = Path(self.log_folder)
        for name in LOG_FILES:
            atomic_write_text(folder / name, _rows_upto(folder / name, keep_upto))
        self.training_file = open(folder / LOG_FILES[0], "a")
        self.eval_file = open(folder / LOG_FILES[1], "a")


def _rows_upto(path: Path, experience: int) -> str:
    """The header and the rows whose training experience is <= ``experience`` of one CSVLogger file."""
    if not path.exists():
        raise FileNotFoundError(f"'{path}' is missing; the run folder's logs cannot be continued (delete "
                                f"{path.parent} and the (method, seed)'s part and checkpoints to rerun it)")
    lines = path.read_text().splitlines(keepends=True)
    header, rows = lines[0], lines[1:]
    col = header.strip().split(",").index("training_exp")
    kept = [r for r in rows if r.strip() and r.split(",")[col] != "None" and int(r.split(",")[col]) <= experience]
    return header + "".join(kept)


def restore_metric_state(evaluator, rows: list[dict]) -> None:
    """Refill the accumulating metrics of ``evaluator`` from the rows of experiences 0..k (sorted).

    Forgetting and BWT (experience and stream) remember R[j, j], the accuracy on experience j right after
    training it (``acc_exp_<j>`` of row j); AAA remembers the seen-class accuracy after each experience.
    Every other metric of the harness's evaluator is reset at each evaluation or epoch.
    """
    rows = sorted(rows, key=lambda r: int(r["experience"]))
    for metric in evaluator.metrics:
        if isinstance(metric, GenericExperienceForgetting):
            metric.forgetting.initial = {int(r["experience"]): float(r[f"acc_exp_{int(r['experience'])}"])
                                         for r in rows}
        elif isinstance(metric, AverageAnytimeAccuracy):
            metric._history = [float(r["acc_seen"]) for r in rows]


def close_logs(evaluator) -> None:
    """Close the CSV loggers' files (Avalanche leaves them to the garbage collector)."""
    for logger in getattr(evaluator, "loggers", []):
        if isinstance(logger, CSVLogger) and hasattr(logger, "eval_file"):
            logger.close()

