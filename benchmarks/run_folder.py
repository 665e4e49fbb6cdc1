"""What guards a run folder of ``benchmarks.compare``: one writer at a time, stale temp files, file identities.

A run folder is written by one command at a time (a second writer would train the same (method, seed) twice
and mix its rows into the first one's tables), so every writer holds an exclusive ``fcntl.flock`` on
``<run>/.lock`` for its lifetime; the lock file names the holder for the refusal message. The kernel drops the
lock when its holder dies (even by ``kill -9``), so a stale lock file never blocks the next writer.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path

LOCK_NAME = ".lock"
TEMP_GLOB = ".*.tmp"  # every temporary file the harness writes (reports.atomic_write_text, plots, checkpoints)


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


def clean_stale_temps(run_dir: str | Path) -> list[Path]:
    """Remove temporary files a killed writer left in the run folder; only safe while holding its lock."""
    removed = []
    for p in sorted(Path(run_dir).rglob(TEMP_GLOB)):
        if p.is_file() and p.name != LOCK_NAME:
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


_HASHES: dict[tuple, str] = {}


def file_identity(path: str | Path) -> dict:
    """What identifies an input file: its content's SHA-256 (and size); the name is kept for the reader only.

    Content, not name, size or mtime: the same file moved or copied elsewhere is the same input (a copy gets a
    new mtime), and a file replaced under the same name is not. Hashing the 167 MB CIFAR-100 npz takes ~0.2 s;
    the result is memoised per process by (path, size, mtime, inode).
    """
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        _HASHES[key] = h.hexdigest()
    return {"sha256": _HASHES[key], "size": st.st_size, "name": p.name}


def same_file_content(a: dict, b: dict) -> bool:
    return a.get("sha256") == b.get("sha256") and a.get("size") == b.get("size")
