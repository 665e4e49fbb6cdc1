"""What a (method, seed) resumed from a checkpoint needs besides the checkpoint to equal an uninterrupted one.

The checkpoint restores the model, the RNG states, the plugins, Avalanche's clock and the evaluator's metric state
(``avalanche_sdlora.checkpoint.strategy_state``). The CSVLogger's files live outside it: they keep their rows up to
the checkpoint and the resumed run appends after them.
"""

from __future__ import annotations

from pathlib import Path

from avalanche.logging import CSVLogger

from avalanche_sdlora.atomic import write_text

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
            write_text(folder / name, _rows_upto(folder / name, keep_upto))
        self.training_file = open(folder / LOG_FILES[0], "a")
        self.eval_file = open(folder / LOG_FILES[1], "a")


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

