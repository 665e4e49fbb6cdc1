"""What a run folder's files must hold before any of them becomes a number; each refusal is one sentence naming
the file.

Every number of a report comes from ``parts/<method>-seed<k>.csv`` (one row per finished experience), and a resume
continues from them, from ``config.json`` and from Avalanche's CSV logs. A duplicated row, a stray CSV in ``parts/``,
an empty part, a config that is not a JSON object or a truncated log would otherwise be merged into the tables (or
fail deep inside pandas); here they are refused, naming the file and what to do, before anything is written.
Atomic writes (:mod:`avalanche_sdlora.atomic`) mean a crash never leaves such files: only a person or another tool
does, and the fix is theirs to choose.
"""

from __future__ import annotations

import json
import re
from fnmatch import fnmatch
from pathlib import Path

import pandas as pd

from avalanche_sdlora.atomic import TEMP_GLOB

from .resume import AVALANCHE_TRAINING_HEADER, LOG_HEADERS

PART_NAME = re.compile(r"^(?P<method>[A-Za-z0-9_.-]+)-seed(?P<seed>\d+)\.csv$")
PART_COLUMNS = ("method", "seed", "experience", "n_experiences", "acc_seen")  # every part has these


class DamagedRunFile(SystemExit):
    """A file of a run folder that cannot be trusted: the command stops before reading numbers from it."""


def _refuse(path: Path, problem: str, fix: str) -> DamagedRunFile:
    return DamagedRunFile(f"error: '{path}' {problem}; {fix}")


_FIX_PART = ("nothing was read from it: restore it, or delete it to rerun that (method, seed) with --resume")
_FIX_STRAY = "parts/ holds only the <method>-seed<k>.csv files a run writes: move it out of the run folder"


def read_config(path: Path) -> dict:
    """``config.json`` as the dict compare wrote, or a refusal naming the file."""
    try:
        data = json.loads(Path(path).read_text())
    except UnicodeDecodeError:
        raise _refuse(path, "is not text (a binary file)", "restore the run's config.json, or start a new run with "
                      "another --run-id") from None
    except json.JSONDecodeError as exc:
        raise _refuse(path, f"is not valid JSON ({exc})", "restore the run's config.json, or start a new run with "
                      "another --run-id") from None
    if not isinstance(data, dict):
        raise _refuse(path, f"holds a JSON {type(data).__name__}, not the object benchmarks.compare writes",
                      "restore the run's config.json, or start a new run with another --run-id")
    identity = data.get("identity")
    if isinstance(data.get("protocol"), dict) or not isinstance(identity, dict) or "name" in identity:
        raise _refuse(path, "is in the format of an older version of the harness (before 0.2.0)",
                      f"convert the folder once with python -m benchmarks.migrate {Path(path).parent}")
    return data


def part_name(path: Path) -> tuple[str, int]:
    """(method, seed) a part's file name stands for, or a refusal of a file that is not a part."""
    m = PART_NAME.match(Path(path).name)
    if m is None:
        raise _refuse(path, "is not a part of this run (its name is not <method>-seed<k>.csv)", _FIX_STRAY)
    return m["method"], int(m["seed"])


def read_part(path: Path, dtype: dict | None = None) -> pd.DataFrame:
    """A part's rows (``pd.read_csv(path, dtype=dtype)``), checked: its columns and types, its (method, seed), one
    row per experience."""
    path = Path(path)
    method, seed = part_name(path)
    try:
        df = pd.read_csv(path, dtype=dtype)
    except pd.errors.EmptyDataError:
        raise _refuse(path, "is empty", _FIX_PART) from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise _refuse(path, f"is not a readable CSV ({' '.join(str(exc).split())[:200]})", _FIX_PART) from None
    missing = [c for c in PART_COLUMNS if c not in df.columns]
    if missing:
        raise _refuse(path, f"lacks the column(s) {missing} every part has", _FIX_PART)
    if df.empty:
        raise _refuse(path, "has a header but no rows", _FIX_PART)
    numeric = ["seed", "experience", "n_experiences", "acc_seen"] + [c for c in df.columns if c.startswith("acc_exp_")]
    for col in numeric:
        bad = pd.to_numeric(df[col], errors="coerce").isna() & (df[col].notna() | (col in PART_COLUMNS))
        if bad.any():
            raise _refuse(path, f"has a non-numeric or empty {col} ({df[col].tolist()[:5]})", _FIX_PART)
    for col in ("seed", "experience", "n_experiences"):
        if (df[col] != df[col].round()).any():
            raise _refuse(path, f"has a {col} that is not a whole number ({df[col].tolist()[:5]})", _FIX_PART)
    if set(df["method"].astype(str)) != {method} or set(df["seed"].astype(int)) != {seed}:
        raise _refuse(path, f"holds rows of {sorted(set(zip(df['method'].astype(str), df['seed'].astype(int))))[:3]}, "
                      f"not only of ({method!r}, {seed}) as its name says", _FIX_PART)
    exps = df["experience"].astype(int)
    twice = sorted(set(exps[exps.duplicated()]))
    if twice:
        raise _refuse(path, f"holds experience(s) {twice} more than once (one row per experience)", _FIX_PART)
    n = set(df["n_experiences"].astype(int))
    if len(n) != 1 or exps.min() < 0 or exps.max() >= min(n):
        raise _refuse(path, f"has experiences {sorted(exps)} for n_experiences {sorted(n)}", _FIX_PART)
    return df


def check_parts_folder(parts: Path) -> list[Path]:
    """The part files of ``parts/`` (every file there must be one; a killed writer's temporary files, which the lock's
    holder clears, are left out), in file-name order."""
    files = sorted(p for p in Path(parts).iterdir() if not fnmatch(p.name, TEMP_GLOB)) if Path(parts).is_dir() else []
    for p in files:
        if not p.is_file() or p.suffix != ".csv":
            raise _refuse(p, "is not a part of this run", _FIX_STRAY)
        part_name(p)
    return files


def check_log(path: Path, finished: bool) -> None:
    """One of Avalanche's CSV logs of a (method, seed): its header and every row whole.

    The logger writes a line at a time, so a kill can cut only the last line of an unfinished (method, seed): that one
    is dropped by the resume (:mod:`benchmarks.resume`); anywhere else a cut line is damage.
    """
    path = Path(path)
    fix = (f"restore it, or delete '{path.parent}' with the (method, seed)'s part and checkpoints to rerun it with "
           "--resume")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise _refuse(path, "is not text", fix) from None
    lines = text.splitlines()
    header = LOG_HEADERS.get(path.name)
    if not finished and len(lines) <= 1 and (header or "").startswith(text.rstrip("\n")):
        return  # killed while the logger wrote its header: the (method, seed) starts its logs again
    if lines and lines[0] == AVALANCHE_TRAINING_HEADER:
        raise _refuse(path, "has the validation columns of a version before 0.4.0",
                      f"run `python -m benchmarks.migrate {path.parents[3]}` once")
    if not lines or (header is not None and lines[0] != header):
        raise _refuse(path, f"does not start with the CSVLogger's header {header!r}", fix)
    width = lines[0].count(",") + 1
    rows = lines[1:]
    cut_last = bool(rows) and not text.endswith("\n")
    # The columns a version before 0.3.0 never filled are empty in each of its rows; rows a resume appended after
    # them are whole. Any other empty cell is damage.
    blank: set[int] | None = None
    for k, row in enumerate(rows):
        if cut_last and k == len(rows) - 1 and not finished:
            break
        fields = row.split(",")
        empty = {j for j, f in enumerate(fields) if f == ""}
        if (len(fields) != width or not all(_number_or_none(f) for f in fields if f != "")
                or (blank is not None and empty != blank and empty)):
            raise _refuse(path, f"is truncated or damaged at line {k + 2} ({row[:80]!r})", fix)
        blank = empty


def _number_or_none(field: str) -> bool:
    if field == "None":
        return True
    try:
        float(field)
        return True
    except ValueError:
        return False
