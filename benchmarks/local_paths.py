"""What a results folder records of this machine's paths: nothing absolute (issue 35).

A committed run folder is read on other machines, where ``/home/me/runs/...`` means nothing and only leaks a local
layout. So everything the harness writes into a folder it may commit (``config.json``, a tuning's ``tuning.json``
and README, a findings ``sources.json``) goes through :func:`portable_record` or :func:`portable_text`:

* the inputs (``--data``, ``--checkpoint``, ``--lists``) are recorded by name, size and SHA-256, the record the run's
  identity holds (:func:`benchmarks.inputs.file_identity`): what makes a result the same elsewhere;
* a path inside the folder is written relative to it, a path below the working directory relative to that (the
  repository's ``results/...`` as the README names them);
* any other absolute path keeps its last part only (``.../runs``), in a command as in an error message.

A resume never needed the recorded paths (it finds its inputs as a new run does, and the identity compares them by
content), so nothing that reads a folder loses anything; :meth:`benchmarks.config.RunConfig.from_json` reads an input
recorded this way as "not given".
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import INPUT_FIELDS

# An absolute POSIX path inside text: a "/" that starts a token (not inside a word, a relative path or a URL).
_ABSOLUTE = re.compile(r"(?<![\w.:/~\-])/[^\s'\"`,;]+")


def portable_path(path: str, folder: str | Path | None = None) -> str:
    """``path`` as a committed folder may record it: relative to ``folder`` or the working directory when below
    one of them, otherwise ``.../<last part>``; a relative path is kept."""
    if not os.path.isabs(path):
        return path
    p = Path(os.path.normpath(path))
    for base in ([Path(folder).resolve()] if folder is not None else []) + [Path.cwd().resolve()]:
        try:
            rel = p.relative_to(base)
        except ValueError:
            continue
        return rel.as_posix() or "."
    return f".../{p.name}" if p.name else "..."


def portable_text(text: str, folder: str | Path | None = None) -> str:
    """``text`` (a command, a message) with every absolute path in it made portable (:func:`portable_path`)."""
    return _ABSOLUTE.sub(lambda m: portable_path(m.group(0), folder), text)


def input_record(value: Any, identity: Mapping[str, Any] | None = None) -> Any:
    """An input as a folder records it: the identity's record of it (name, size, SHA-256) when there is one, else
    its name; None (not given) and an already portable record are kept."""
    if not isinstance(value, str):
        return value
    if isinstance(identity, Mapping):
        return dict(identity)
    return {"name": Path(value).name}


def portable_record(record: Any, folder: str | Path | None = None) -> Any:
    """``record`` (a config.json-like dict) with no absolute path left: its top-level inputs by identity, every
    other string through :func:`portable_text`."""
    if not isinstance(record, Mapping):
        return _portable(record, folder)
    identity = record.get("identity") if isinstance(record.get("identity"), Mapping) else {}
    return {k: input_record(v, identity.get(k)) if k in INPUT_FIELDS else _portable(v, folder)
            for k, v in record.items()}


def _portable(value: Any, folder: str | Path | None) -> Any:
    if isinstance(value, str):
        return portable_text(value, folder)
    if isinstance(value, Mapping):
        return {k: _portable(v, folder) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_portable(v, folder) for v in value]
    return value
