"""A run folder of the harness: every path in it, one writer at a time, and the DONE / failure / calls bookkeeping.

Layout (one spelling for compare, study and the diagnostics): ``<out>/<protocol>/<run-id>/`` holds
``config.json`` (the RunConfig, the identity, every call that wrote here, failures), ``parts/<method>-seed<k>.csv``
(the rows of one (method, seed), written as each experience ends), ``per_task.csv`` (every part), ``summary.csv``,
``table.md``, the plots, ``csv/<method>/seed<k>/`` (Avalanche's CSVLogger), ``predictions/<method>-seed<k>.csv`` (each
test image's predicted class after the latest experience, :mod:`benchmarks.predictions`),
``checkpoints/<method>-seed<k>/`` and, last, ``DONE``.

A run folder is written by one command at a time (a second writer would train the same (method, seed) twice and
mix its rows into the first one's tables), so every writer holds an exclusive ``fcntl.flock`` on ``<run>/.lock``
for its lifetime; the lock file names the holder for the refusal message. The kernel drops the lock when its
holder dies (even by ``kill -9``), so a stale lock file never blocks the next writer.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from avalanche_sdlora.atomic import remove_stale_temps, write_text

from . import folder_checks, reports
from .config import RunConfig
from .local_paths import portable_record

LOCK_NAME = ".lock"
CALL_KEYS = ("command", "started_utc", "wall_seconds", "methods", "seeds", "device", "device_name", "threads",
             "workers", "world_size", "image_cache")


class RunFolderBusy(SystemExit):
    """Another process holds the run folder's lock."""


class RunLock:
    """Exclusive lock on a run folder for the lifetime of one writer (``with RunLock(run_dir, command):``)."""

    def __init__(self, run_dir: str | Path, command: str) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.command = command
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunFolderBusy(f"error: run folder '{self.path.parent}' is in use by {holder(self.path)}; "
                                    "wait for it to finish (or stop that process), then run again") from None
            # The previous holder unlinks the file when it releases; if it did so between our open and our lock,
            # we hold a lock on a file nobody else can see: take the one on the path instead.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(info) + "\n").encode())
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still locked: no other writer can be between these two
        finally:
            os.close(self._fd)
            self._fd = None


def holder(lock_path: Path) -> str:
    """Who holds a lock, from what it wrote into the lock file."""
    try:
        info = json.loads(Path(lock_path).read_text())
        return (f"pid {info['pid']} on {info['host']} since {info['started_utc']} "
                f"({info['command']})")
    except (OSError, ValueError, KeyError):
        return "another process (it has not written its name into the lock file yet)"


def check_run_id(run_id: str) -> None:
    """A run id names one folder inside ``<out>/<protocol>``: no separator, no ``..``, not absolute, not ``.`` nor
    empty (``--run-id ../x`` or an absolute path would write outside ``--out``)."""
    if not run_id or run_id == "." or any(c in run_id for c in ("/", "\\", "\0", "..")) or run_id.strip() != run_id:
        raise ValueError(f"--run-id {run_id!r} is not a plain folder name (no '/', '\\' or '..', not '.' nor empty); "
                         "the run goes to <out>/<protocol>/<run-id>: pass e.g. --run-id my-run, and --out for another "
                         "place")


def check_out(out: str | Path) -> None:
    """``--out`` must be a folder this process can create run folders in (or one it can create)."""
    p = Path(out)
    existing = next((q for q in (p, *p.parents) if q.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "is a file" if existing == p else f"lies under the file '{existing}'"
        raise ValueError(f"--out '{out}' {where}, not a folder; pass --out a folder (created if missing), e.g. runs")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--out '{out}' is in a read-only place ('{existing}' is not writable by this user); pass "
                         "--out a folder you can write, e.g. runs")


class RunFolder:
    """One run folder: its paths, its lock, its parts and reports, and its DONE / failure / calls bookkeeping."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def new(cls, out: str | Path, protocol: str, run_id: str) -> RunFolder:
        """The folder of run ``run_id`` (a plain name, :func:`check_run_id`) of ``protocol`` under the root ``out``."""
        check_run_id(run_id)
        return cls(Path(out) / protocol / run_id)

    @classmethod
    def find(cls, root: str | Path) -> list[RunFolder]:
        """Every run folder (with a config.json) under ``root``, i.e. ``root/<protocol>/<run-id>``."""
        return [cls(c.parent) for c in sorted(Path(root).glob("*/*/config.json"))]

    def __repr__(self) -> str:
        return f"RunFolder('{self.path}')"

    def __str__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------ paths
    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def done_path(self) -> Path:
        return self.path / "DONE"

    @property
    def per_task_path(self) -> Path:
        return self.path / "per_task.csv"

    def report_path(self, name: str) -> Path:
        """``summary.csv``, ``table.md``, ``seen_accuracy.png``, ``final_accuracy.png``."""
        return self.path / name

    def part(self, method: str, seed: int) -> Path:
        return self.path / "parts" / f"{method}-seed{seed}.csv"

    def log_dir(self, method: str, seed: int) -> Path:
        return self.path / "csv" / method / f"seed{seed}"

    def predictions(self, method: str, seed: int) -> Path:
        return self.path / "predictions" / f"{method}-seed{seed}.csv"

    def checkpoints(self, method: str, seed: int) -> Path:
        return self.path / "checkpoints" / f"{method}-seed{seed}"

    # ------------------------------------------------------------------ one writer at a time
    def lock(self, command: str) -> RunLock:
        return RunLock(self.path, command)

    def clean(self, quiet: bool = False) -> list[Path]:
        """Remove temporary files a killed writer left (call while holding the lock)."""
        removed = remove_stale_temps(self.path, recursive=True)
        if removed and not quiet:
            print(f"removed {len(removed)} temporary file(s) an interrupted writer left in {self.path}", flush=True)
        return removed

    def holds_files(self) -> bool:
        return self.path.is_dir() and any(p.name != LOCK_NAME for p in self.path.iterdir())

    def refuse_existing(self) -> None:
        """A new run never writes into a finished folder, nor into one that holds files."""
        if self.is_done():
            raise SystemExit(f"error: run '{self.path}' is finished and is never overwritten; choose another --run-id, "
                             f"or add methods or seeds to it with --resume {self.path}")
        if self.holds_files():
            raise SystemExit(f"error: run folder '{self.path}' already holds files; resume it with --resume "
                             f"{self.path} or choose another --run-id")

    # ------------------------------------------------------------------ config.json, DONE, failures, calls
    def has_config(self) -> bool:
        return self.config_path.exists()

    def read_config(self) -> dict:
        return folder_checks.read_config(self.config_path)

    def write_config(self, config: dict) -> None:
        """Write ``config.json``, with no absolute local path in it (:mod:`benchmarks.local_paths`)."""
        write_text(self.config_path, json.dumps(portable_record(config, self.path), indent=2) + "\n")

    def is_done(self) -> bool:
        return self.done_path.exists()

    def mark_done(self) -> None:
        write_text(self.done_path, "")  # last: a folder with DONE has its reports

    def mark_unfinished(self) -> None:
        self.done_path.unlink(missing_ok=True)

    @staticmethod
    def call_record(config: dict) -> dict:
        """What one call that wrote into the folder did (read from its config.json fields); ``wall_seconds`` is null
        for a call that was killed, or is still running."""
        return {k: config.get(k) for k in CALL_KEYS}

    @staticmethod
    def calls_of(saved: dict) -> list[dict]:
        """Every earlier call, oldest first (a folder whose first call was killed before it recorded the history:
        that call, from the fields it wrote when it started)."""
        return saved.get("calls") or [RunFolder.call_record(saved)]

    @staticmethod
    def failures_after(saved: dict | None, retried: set[str], failed: dict[str, str]) -> dict[str, str]:
        """Failures on record after a call: earlier ones it did not retry stay (and keep the run unfinished)."""
        earlier = (saved or {}).get("failed", {})
        return {**{k: e for k, e in earlier.items() if k not in retried}, **failed}

    # ------------------------------------------------------------------ parts and reports
    def read_part(self, method: str, seed: int) -> list[dict]:
        """A part's rows as they were written (``alphas`` stays text: one magnitude would otherwise parse as a float)."""
        return folder_checks.read_part(self.part(method, seed), dtype={"alphas": str}).to_dict("records")

    def write_part(self, method: str, seed: int, rows: list[dict]) -> None:
        reports.write_csv(pd.DataFrame(rows), self.part(method, seed))

    def has_parts(self) -> bool:
        return any((self.path / "parts").glob("*.csv"))

    def part_names(self) -> list[tuple[str, int]]:
        """(method, seed) of every part on disk, finished or not, in file-name order (the inverse of :meth:`part`)."""
        return [folder_checks.part_name(f) for f in folder_checks.check_parts_folder(self.path / "parts")]

    def planned_runs(self) -> tuple[list[str], list[int]]:
        """The run's own methods and seeds: every one its config.json or a recorded call names, or a part holds.

        Parts count because a call killed before it recorded itself leaves only them; a resume without
        ``--methods``/``--seeds`` continues all of these (never the command's defaults, which may be other methods).
        """
        config = self.read_config() if self.has_config() else {}
        calls = [*self.calls_of(config), config] if config else []
        parts = self.part_names()
        methods = [m for c in calls for m in c.get("methods") or []] + [m for m, _ in parts]
        seeds = sorted({int(s) for c in calls for s in c.get("seeds") or []} | {s for _, s in parts})
        return list(dict.fromkeys(methods)), seeds

    def part_complete(self, method: str, seed: int, n_experiences: int) -> bool:
        part = self.part(method, seed)
        if not part.exists():
            return False
        return int(folder_checks.read_part(part)["experience"].max()) == n_experiences - 1

    def check(self) -> None:
        """Refuse, naming the file, a folder whose config, parts or logs were damaged or edited (nothing is read
        from it into numbers); call while holding the lock, after :meth:`clean`."""
        if self.has_config():
            self.read_config()
        for method, seed in self.part_names():
            rows = folder_checks.read_part(self.part(method, seed))
            finished = int(rows["experience"].max()) == int(rows["n_experiences"].iloc[0]) - 1
            for log in sorted(self.log_dir(method, seed).glob("*.csv")):
                folder_checks.check_log(log, finished)

    def parts_signature(self) -> tuple:
        """Names, mtimes and sizes of the parts: changes whenever a worker writes a row."""
        sig = []
        for f in sorted((self.path / "parts").glob("*.csv")):
            with contextlib.suppress(FileNotFoundError):
                st = f.stat()
                sig.append((f.name, st.st_mtime_ns, st.st_size))
        return tuple(sig)

    def read_parts(self) -> pd.DataFrame:
        """Every part's rows, in file-name order."""
        frames = [folder_checks.read_part(f) for f in folder_checks.check_parts_folder(self.path / "parts")]
        if not frames:
            raise SystemExit(f"error: '{self.path}' has no parts/*.csv to report on")
        return pd.concat(frames, ignore_index=True)

    def gather(self) -> pd.DataFrame:
        """Every (method, seed) part of the run, finished or not, in method order then seed and experience."""
        from .methods import method_names

        per_task = self.read_parts()
        order = {m: k for k, m in enumerate(method_names())}
        return (per_task.assign(_r=per_task["method"].map(order)).sort_values(["_r", "seed", "experience"])
                .drop(columns="_r"))

    def write_per_task(self) -> None:
        reports.write_csv(self.gather(), self.per_task_path)

    def write_reports(self) -> None:
        """per_task.csv, summary.csv, table.md and the plots (titled with the run's protocol), from the parts."""
        protocol = RunConfig.from_json(self.read_config()).protocol if self.has_config() else None
        reports.write_reports(self.gather(), self.path, title=None if protocol is None else f"protocol {protocol}")
