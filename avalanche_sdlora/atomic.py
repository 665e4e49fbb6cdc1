"""Files a crash never leaves half-written: the one way every writer of the project (library and harness) writes.

Each file goes to a temporary name beside it (``.<name>.<random>.tmp``, unique so that two processes writing the
same file do not share one), is fsynced, renamed over the target, and the folder is fsynced so that the rename
itself survives a power loss. A reader sees the old file or the new one, never part of one; a killed writer
leaves at most a temporary file, which :func:`remove_stale_temps` clears.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

TEMP_GLOB = ".*.tmp"  # every temporary name write_with uses
_GUARDS: list[Callable[[], None]] = []  # called before every write of this process (guard_writes)


def guard_writes(check: Callable[[], None]) -> None:
    """Call ``check()`` before every later write of this process, and again before its rename; it refuses a write by
    raising (the temporary file is removed). A pool worker uses it to stop writing the moment its parent is gone."""
    _GUARDS.append(check)


def _check_guards() -> None:
    for check in _GUARDS:
        check()


def write_with(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """``write(binary file)`` to a temporary file beside ``path``, fsync it, rename it over ``path``, fsync the folder."""
    path = Path(path)
    _check_guards()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; results and checkpoints are meant to be shared
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        _check_guards()
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`write_with`)."""
    write_with(path, lambda f: f.write(data))


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`write_with`)."""
    write_with(path, lambda f: f.write(text.encode()))


@contextlib.contextmanager
def remove_temps_on_termination() -> Iterator[None]:
    """While open, SIGTERM and SIGHUP raise ``KeyboardInterrupt``, so a writer stopped by them removes its temporary
    file (``write_with``'s cleanup) instead of dying with it on disk; the previous handlers come back on exit.
    ``kill -9`` cannot be caught: what it leaves, the next writer of the folder clears (:func:`remove_stale_temps`).
    Signal handlers belong to the main thread: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"stopped by signal {signal.Signals(signum).name}")


def fsync_dir(folder: str | Path) -> None:
    """Make renames and new entries in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temps(folder: str | Path, pattern: str = TEMP_GLOB, recursive: bool = False) -> list[Path]:
    """Remove temporary files a killed writer left (only safe while no other writer uses ``folder``)."""
    folder = Path(folder)
    found = folder.rglob(pattern) if recursive else folder.glob(pattern)
    removed = []
    for p in sorted(found):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed
