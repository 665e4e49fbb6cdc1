"""A run's finished (method, seed) runs, copied into a results folder: ``python -m benchmarks.publish RUN_DIR DEST``.

Long runs go on for hours, across sessions, in an ignored ``runs/`` folder (from a ``git worktree`` snapshot); what is
committed is each (method, seed) as it finishes, so that a session's end loses nothing already measured. This command
is that copy, so a committed folder is the output of a command the results README can name:

* only finished (method, seed) runs: a part whose rows reach the stream's last experience, with its CSV logs (read
  back whole, as ``--resume`` reads them) and its predictions when the run wrote them (a run of an older version did
  not); never checkpoints, the lock or the plots; ``DONE`` when the source has it;
* ``config.json`` is the source's (it holds no absolute local path, :mod:`benchmarks.local_paths`);
* a DEST that holds a run of other settings is refused, naming each setting; a finished part already in DEST is left
  as it is when equal and refused when it differs (a result is never overwritten; remove it first to replace it);
* then DEST's reports are redrawn, as ``benchmarks.compare --report-only DEST`` does.

The source may be running: this reads it only, and never takes its lock (parts are written atomically; a finished
run's logs are closed).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from avalanche_sdlora.atomic import write_bytes, write_text

from . import folder_checks, predictions
from .identity import identity_changes, saved_identity
from .run_folder import RunFolder

__all__ = ["publish", "main"]


def _finished(folder: RunFolder, method: str, seed: int) -> bool:
    rows = folder_checks.read_part(folder.part(method, seed))
    return int(rows["experience"].max()) == int(rows["n_experiences"].iloc[0]) - 1


def _copy_predictions(src: RunFolder, dest: RunFolder, method: str, seed: int) -> bool:
    """Copy a finished run's predictions into DEST when the source has them and DEST has not; True if copied. They
    must be those of the part's last row (they are written before it), else they are refused, naming the file."""
    path, there = src.predictions(method, seed), dest.predictions(method, seed)
    if not path.exists() or there.exists():
        return False
    last = folder_checks.read_part(src.part(method, seed)).sort_values("experience").iloc[-1]
    predictions.load_of_run(path, int(last["experience"]), float(last["acc_seen"]))
    write_bytes(there, path.read_bytes())
    return True


def _check_same_run(src: RunFolder, dest: RunFolder) -> None:
    changed, unrecorded = identity_changes(saved_identity(dest.read_config()), saved_identity(src.read_config()))
    if changed or unrecorded:
        raise SystemExit(f"error: '{dest.path}' holds a run of other settings than '{src.path}' "
                         f"({'; '.join(changed + unrecorded)}); pass DEST a new folder, or the folder this run was "
                         "published to before")


def publish(src: str | Path, dest: str | Path, methods: Sequence[str] | None = None) -> list[str]:
    """Copy ``src``'s finished (method, seed) runs (only ``methods``' when given) into ``dest``; returns the names of
    the parts copied (``method-seedN``). Redraws ``dest``'s reports when anything was copied."""
    src, dest = RunFolder(src), RunFolder(dest)
    if not src.has_config() or not (src.path / "parts").is_dir():
        raise SystemExit(f"error: RUN_DIR '{src.path}' is not a run folder of benchmarks.compare (no config.json or "
                         "parts/); pass runs/<protocol>/<run-id>")
    if src.path.resolve() == dest.path.resolve():
        raise SystemExit(f"error: DEST '{dest.path}' is RUN_DIR itself; pass DEST a results folder, e.g. "
                         f"results/<protocol>/{src.path.name}")
    if dest.has_config():
        _check_same_run(src, dest)
    copied, unfinished = [], []
    for method, seed in src.part_names():
        if methods is not None and method not in methods:
            continue
        name = src.part(method, seed).stem
        if not _finished(src, method, seed):
            unfinished.append(name)
            continue
        text = src.part(method, seed).read_text()
        there = dest.part(method, seed)
        if there.exists() and _finished(dest, method, seed):
            if there.read_text() == text:
                if _copy_predictions(src, dest, method, seed):  # published before the run's predictions were
                    copied.append(name)
                continue
            raise SystemExit(f"error: '{there}' holds another finished result of {method} seed {seed} than "
                             f"'{src.part(method, seed)}'; a result is never overwritten: remove it (and "
                             f"'{dest.log_dir(method, seed)}') first to replace it")
        if not copied:  # the settings first: a part in DEST always has the config.json it ran under
            write_text(dest.config_path, src.config_path.read_text())
        logs = sorted(src.log_dir(method, seed).glob("*.csv"))
        for log in logs:
            folder_checks.check_log(log, finished=True)
        for log in logs:
            write_text(dest.log_dir(method, seed) / log.name, log.read_text())
        _copy_predictions(src, dest, method, seed)
        write_text(there, text)  # after its logs: a part in DEST always has them
        copied.append(name)
    print(f"{dest.path}: copied {', '.join(copied) or 'nothing new'}"
          + (f"; unfinished in '{src.path}', left there: {', '.join(unfinished)}" if unfinished else ""), flush=True)
    if copied:
        from .compare import report_only

        report_only(dest, f"python -m benchmarks.publish {src.path} {dest.path}", quiet=True)
        if src.is_done() and not unfinished and methods is None:
            dest.mark_done()  # every run of the source is in DEST, and its reports are drawn
    return copied


def main(argv: list[str] | None = None) -> list[str]:
    from .compare import Parser
    from .methods import method_names

    p = Parser(prog="python -m benchmarks.publish", description=__doc__.split("\n\n")[0])
    p.add_argument("run", metavar="RUN_DIR", help="the run folder the runs go on in (runs/<protocol>/<run-id>)")
    p.add_argument("dest", metavar="DEST", help="the results folder they are copied into "
                   "(results/<protocol>/<name>; created when missing)")
    p.add_argument("--methods", nargs="+", default=None, help="copy only these methods' runs (default: every "
                   "finished one)")
    args = p.parse_args(argv)
    unknown = sorted(set(args.methods or ()) - set(method_names()))
    if unknown:
        p.error(f"--methods: unknown method(s) {unknown}; choose from {', '.join(method_names())}")
    return publish(args.run, args.dest, args.methods)


if __name__ == "__main__":
    from .compare import cli

    sys.exit(cli(main=main))
