"""What a resumed run needs besides its checkpoints to equal an uninterrupted one.

A ``--resume`` call takes the run's own settings for every flag it leaves out (:func:`resumed_flags`). For each
(method, seed), the checkpoint restores the model, the RNG states, the plugins, Avalanche's clock and the evaluator's
metric state (``avalanche_sdlora.checkpoint.strategy_state``). The CSVLogger's files live outside it: they keep
their rows up to the checkpoint and the resumed run appends after them.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from avalanche.logging import CSVLogger

from avalanche_sdlora.atomic import write_text

from .config import RunConfig, run_flags

LOG_FILES = ("training_results.csv", "eval_results.csv")
# The files' headers. Avalanche's training file also has val_accuracy and val_loss, filled only by evaluation during
# training (eval_every with eval streams), which the harness never runs: they would be columns of constant zeros.
LOG_HEADERS = {"training_results.csv": "training_exp,epoch,training_accuracy,training_loss",
               "eval_results.csv": "eval_exp,training_exp,eval_accuracy,eval_loss,forgetting"}
# Avalanche's own training header, which run folders before 0.4.0 hold (``python -m benchmarks.migrate`` converts
# them; a column such a run never filled, e.g. its training loss, becomes empty cells: not recorded, not 0).
AVALANCHE_TRAINING_HEADER = "training_exp,epoch,training_accuracy,val_accuracy,training_loss,val_loss"


class ResumableCSVLogger(CSVLogger):
    """Avalanche's ``CSVLogger`` whose files survive a resume; its files open at ``start(keep_upto)``; its training
    file has no validation columns (:data:`LOG_HEADERS`).

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
        folder = Path(self.log_folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name in LOG_FILES:
            kept = LOG_HEADERS[name] + "\n" if keep_upto is None else _rows_upto(folder / name, keep_upto)
            write_text(folder / name, kept)
        self.training_file = open(folder / LOG_FILES[0], "a")
        self.eval_file = open(folder / LOG_FILES[1], "a")

    def after_training_epoch(self, strategy, metric_values, **kwargs) -> None:
        """Avalanche's row, except for an epoch with no training iteration (ncm's training-free pass over the
        experience): it has no accuracy or loss, and a row of zeros would read as if it had."""
        if strategy.clock.train_epoch_iterations:
            super().after_training_epoch(strategy, metric_values, **kwargs)

    def print_train_metrics(self, training_exp, epoch, train_acc, val_acc, train_loss, val_loss) -> None:
        """One row of the training file, without the validation values (always 0 here: see ``LOG_HEADERS``)."""
        print(training_exp, epoch, self._val_to_str(train_acc), self._val_to_str(train_loss), sep=",",
              file=self.training_file, flush=True)


def _rows_upto(path: Path, experience: int) -> str:
    """The header and the rows whose training experience is <= ``experience`` of one CSVLogger file."""
    if not path.exists():
        raise FileNotFoundError(f"'{path}' is missing; the run folder's logs cannot be continued (delete "
                                f"{path.parent} and the (method, seed)'s part and checkpoints to rerun it)")
    lines = path.read_text().splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines = lines[:-1]  # a line a kill cut short: its experience is trained again (run_folder.check refuses any other)
    header, rows = lines[0], lines[1:]
    col = header.strip().split(",").index("training_exp")
    kept = [r for r in rows if r.strip() and r.split(",")[col] != "None" and int(r.split(",")[col]) <= experience]
    return header + "".join(kept)


def close_logs(evaluator) -> None:
    """Close the CSV loggers' files (Avalanche leaves them to the garbage collector)."""
    for logger in getattr(evaluator, "loggers", []):
        if isinstance(logger, CSVLogger) and hasattr(logger, "eval_file"):
            logger.close()


# Input paths are taken from a resumed run only where they exist here: a run resumed on another machine finds its
# inputs as a new run does (the identity compares them by content, so a moved file is the same input). Folders
# written since issue 35 record no path at all (benchmarks.local_paths), only the inputs' identity.
_RESUMED_PATHS = ("data", "checkpoint")


def _is_identity(name: str) -> bool:
    return any(f.name == name and f.metadata["identity"] for f in dataclasses.fields(RunConfig))


def resumed_flags(args: argparse.Namespace, saved: Mapping[str, Any]) -> list[str]:
    """Fill the run flags a ``--resume`` call left out with the run's own values (``saved``: its config.json).

    A resumed run keeps its settings, so a flag left out means "as the run", not "the default": resuming a run made
    with ``--epochs 10`` needs no ``--epochs 10``. Flags given stay as given, and the identity check refuses any
    that differ from the run's, naming them. Returns the flags filled in (to say so); none when ``saved`` is no
    RunConfig (the identity check then names what differs).
    """
    try:
        run = RunConfig.from_json(saved)
    except (TypeError, ValueError, KeyError):
        return []
    filled: list[str] = []
    for f in run_flags():
        if getattr(args, f.dest, None) is not None or not (f.sdlora or _is_identity(f.dest)):
            continue  # given, or a setting that changes no number (e.g. --lists)
        if f.dest == "class_order_seed" and getattr(args, "class_order", None) == "seed":
            continue  # a call that changes the mode is refused for --class-order, not for a flag it never gave
        value = getattr(run.sdlora if f.sdlora else run, f.dest)
        if value is None or (f.repeat and not value) or (f.dest in _RESUMED_PATHS and not Path(value).exists()):
            continue
        setattr(args, f.dest, list(value) if f.repeat else value)
        filled.append(f.flag)
    return filled
