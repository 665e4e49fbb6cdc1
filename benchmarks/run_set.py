"""Several run folders read as one experiment: their rows side by side, and the refusal of folders that differ.

A table pooling rows of several run folders (the class-order report, :mod:`benchmarks.orders`; the README
headline over several folders, :mod:`benchmarks.headline`) is only a table if the folders ran the same benchmark
under the same budget, so :meth:`RunSet.check` compares what each folder recorded (its identity,
:mod:`benchmarks.identity`) and refuses a difference naming the flag. Settings fall in three groups:

* the experiment (every protocol field but ``--lr``, ``--classes``, ``--test-per-class``, the inputs' content,
  and any setting not named below): must agree, except those a report varies on purpose (``free``, e.g. the
  class order);
* a method's own settings (``--lr``, SD-LoRA's options, ``--ewc-lambda``, ``--peer-recipe``, that method's
  ``--method-option``): may differ between folders whose rows stay apart (e.g. a folder of L2P at another lr
  beside the main run), are refused where one method's rows from two folders are pooled (``pooled=True``);
* how it ran (device, machine, torch, threads, workers): may differ.

Every difference that is not refused is returned as a note for the table to print, so a reader sees it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import pandas as pd

from avalanche_sdlora.options import SDLoRAOptions

from .identity import labels, saved_identity
from .methods import method_names
from .reports import run_records
from .run_folder import RunFolder

METHOD_KEYS = ("lr", "ewc_lambda", "peer_recipe", "method_options",
               *(f.name for f in dataclasses.fields(SDLoRAOptions)))
EXECUTION_KEYS = ("device", "device_name", "torch", "threads", "workers")
NAME_KEYS = ("protocol",)  # a preset's name: the settings it names are compared one by one
ORDER_KEYS = ("class_order", "class_order_seed")
_FILES = ("data", "checkpoint")
_MISSING = object()
UNRECORDED = "machine not recorded"

# a folder, or (folder, methods taken), or (folder, methods taken or None, class orders taken)
Spec = Union[str, Path, tuple[Union[str, Path], Optional[Sequence[str]]],
             tuple[Union[str, Path], Optional[Sequence[str]], Optional[Sequence[int]]]]


@dataclass(frozen=True)
class Member:
    """One run folder of a set: how tables name it, the methods taken from it, what it recorded."""

    folder: RunFolder
    label: str
    methods: tuple[str, ...]  # the methods of the folder the set takes (all of its methods unless told)
    config: dict
    settings: dict
    given: tuple[str, ...] | None = None  # the methods asked for (None: all)
    orders: tuple[int, ...] | None = None  # the class orders taken (None: all): e.g. one machine's orders of a folder

    @property
    def machine(self) -> str:
        """Where the folder's runs trained (one machine a folder: a resume is refused on another machine type)."""
        return self.config.get("device_name") or UNRECORDED

    def value(self, key: str, method: str | None = None) -> Any:
        """The recorded value of ``key`` (``method``: that method's ``--method-option`` keywords only)."""
        value = self.settings.get(key, _MISSING)
        if key == "method_options" and value is not _MISSING:
            value = {m: o for m, o in value.items() if m in ((method,) if method else self.methods)}
        return value


def folder_methods(folder: RunFolder) -> list[str]:
    """The methods a run folder holds rows of (from its part files), in file-name order."""
    return sorted({m for m, _ in folder.part_names()})


def recorded_settings(config: dict) -> dict:
    """What a run folder's config.json says it ran with, as identity keys."""
    return saved_identity(config)


class RunSet:
    """Run folders whose rows go into one table (read with :meth:`read`, checked with :meth:`check`)."""

    def __init__(self, members: Sequence[Member]) -> None:
        self.members = list(members)

    @classmethod
    def read(cls, specs: Iterable[Spec], root: str | Path | None = None) -> RunSet:
        """The folders of ``specs`` (paths relative to ``root`` if given), each a folder, (folder, methods) or
        (folder, methods or None, class orders)."""
        parsed = []
        for spec in specs:
            path, methods, orders = ((spec, None, None) if isinstance(spec, (str, Path))  # a tuple from JSON: a list
                                     else (*spec, None)[:3])
            full = Path(root) / path if root is not None else Path(path)
            folder = RunFolder(full)
            if not folder.has_config():
                raise SystemExit(f"error: '{full}' is not a run folder of benchmarks.compare (no config.json); pass "
                                 "folders such as results/<protocol>/<run-id>")
            present = folder_methods(folder)
            if not present:
                raise SystemExit(f"error: '{full}' has no parts/*.csv: it holds no rows to report")
            if methods is not None:
                absent = [m for m in methods if m not in present]
                if absent:
                    raise SystemExit(f"error: '{full}' has no rows of {', '.join(absent)}; it holds "
                                     f"{', '.join(present)}")
            if orders is not None:
                held = sorted({int(o) for o in folder.gather()["class_order_seed"]})
                missing = [int(o) for o in orders if int(o) not in held]
                if missing:
                    raise SystemExit(f"error: '{full}' has no rows on class order(s) "
                                     f"{', '.join(map(str, missing))}; it holds {', '.join(map(str, held))}")
                orders = tuple(int(o) for o in orders)
            parsed.append((str(path), folder, methods, orders))
        if not parsed:
            raise SystemExit("error: no run folders given")
        names = [Path(p).name for p, _, _, _ in parsed]
        members = []
        for (path, folder, methods, orders), name in zip(parsed, names):
            if [str(f.path.resolve()) for _, f, _, _ in parsed].count(str(folder.path.resolve())) > 1:
                raise SystemExit(f"error: run folder '{path}' is given twice")
            label = name if names.count(name) == 1 else path  # the folder's name, unless two share it
            config = folder.read_config()
            given = tuple(methods) if methods is not None else None
            members.append(Member(folder, label, given or tuple(folder_methods(folder)), config,
                                  recorded_settings(config), given, orders))
        return cls(members)

    # ------------------------------------------------------------------ rows
    def rows(self) -> pd.DataFrame:
        """Every member's per-experience rows (its methods only), each with its ``class_order_seed`` and ``run``."""
        frames = []
        for m in self.members:
            rows = m.folder.gather()
            rows = rows[rows["method"].isin(m.methods)]
            if m.orders is not None:
                rows = rows[rows["class_order_seed"].astype(int).isin(m.orders)]
            frames.append(rows.assign(run=m.label))
        return pd.concat(frames, ignore_index=True)

    def summaries(self) -> pd.DataFrame:
        """Every member's summary.csv rows (its methods only), each with its ``run``."""
        frames = []
        for m in self.members:
            if m.orders is not None:
                raise SystemExit(f"error: '{m.folder}' is taken for class orders {', '.join(map(str, m.orders))} "
                                 "only, and its summary.csv pools all of its orders; pass the whole folder here")
            path = m.folder.report_path("summary.csv")
            if not path.exists():
                raise SystemExit(f"error: '{m.folder}' has no summary.csv; write it with python -m "
                                 f"benchmarks.compare --report-only {m.folder}")
            s = pd.read_csv(path)
            frames.append(s[s["method"].isin(m.methods)].assign(run=m.label))
        return pd.concat(frames, ignore_index=True)

    # ------------------------------------------------------------------ settings
    def check(self, *, free: Sequence[str] = (), pooled: bool = False) -> list[str]:
        """Refuse folders that did not run the same experiment (``SystemExit`` naming each setting and folder);
        return the differences allowed, one line each, for the table to say.

        ``free``: settings the table varies on purpose (not compared); ``pooled``: a method's rows from several
        folders are pooled, so that method's own settings must agree among them.
        """
        names = labels()
        keys = [k for k in names if any(k in m.settings for m in self.members)]
        keys += sorted({k for m in self.members for k in m.settings} - set(keys))
        refused, notes = [], []
        for key in keys:
            if key in NAME_KEYS or key in free:
                continue
            flag = names.get(key, key).split(" (")[0]
            if key in METHOD_KEYS and pooled:
                own = {}  # method -> its value (the same in every folder holding it, else refused)
                for method in sorted({x for m in self.members for x in m.methods}):
                    sharing = [m for m in self.members if method in m.methods]
                    if _differ([m.value(key, method) for m in sharing]):
                        refused.append(f"{flag} differs for {method}, whose rows are pooled: "
                                       + _listing(key, [(m, m.value(key, method)) for m in sharing]))
                    own[method] = _own(key, sharing[0].value(key, method), method)
                # Folders holding different methods differ in ``method_options`` by construction; what a reader
                # needs is which rows trained under which value, so a note goes by method.
                if _differ([m.value(key) for m in self.members]) and _differ(list(own.values())):
                    notes.append(f"{flag}, by method: " + _by_method(own))
                continue
            values = [(m, m.value(key)) for m in self.members]
            recorded = [(m, v) for m, v in values if v is not _MISSING]
            if key not in METHOD_KEYS + EXECUTION_KEYS and _differ([v for _, v in recorded]):
                refused.append(f"{flag}: " + _listing(key, recorded))
            elif _differ([v for _, v in values]):
                notes.append(f"{flag}: " + _listing(key, values))
        if refused:
            raise SystemExit("error: these run folders did not run the same experiment, so one table cannot hold their "
                             "rows: " + "; ".join(refused) + "; pass folders of one protocol and budget, each "
                             "method's rows run with one setting")
        return notes

    def machines(self) -> dict[str, str]:
        """Each folder's label -> the machine its runs trained on (:attr:`Member.machine`)."""
        return {m.label: m.machine for m in self.members}

    def specs_relative_to(self, base: str | Path) -> list[str | list]:
        """The specs that read this set again from ``base`` (what an output records, to be read back anywhere):
        each folder relative to ``base``, with its methods if only some were asked for."""
        out: list[str | list] = []
        for m in self.members:
            path = os.path.relpath(m.folder.path.resolve(), Path(base).resolve())
            if m.orders is not None:
                out.append([path, None if m.given is None else list(m.given), list(m.orders)])
            else:
                out.append(path if m.given is None else [path, list(m.given)])
        return out

    def _here(self) -> list[str]:
        """Each folder as the working folder reaches it (symbolic links kept, unlike :meth:`specs_relative_to`)."""
        return [os.path.relpath(os.path.abspath(m.folder.path)) for m in self.members]

    def arguments(self) -> list[str]:
        """``RUN_DIR ... [--take RUN_DIR WHAT ...]`` that read this set again from the working folder: the command a
        report records once ``--again REPORT_DIR RUN_DIR ...`` added folders to it, so that it still rebuilds the
        report from nothing."""
        paths = self._here()
        takes = [["--take", path, *(m.given or ()), *map(str, m.orders or ())]
                 for path, m in zip(paths, self.members) if m.given is not None or m.orders is not None]
        return [*paths, *(word for take in takes for word in take)]

    def adding(self, runs: Sequence[str], take: Sequence[Sequence[str]] | None, report: str | Path) -> RunSet:
        """This set (a report's recorded folders) followed by the folders ``runs``, ``--take`` applied to them: what
        ``--again REPORT_DIR RUN_DIR ...`` reads, as if its folders had all been given to a first call.
        ``SystemExit`` naming the folder for one the report already reads."""
        held = {m.folder.path.resolve() for m in self.members}
        for run in runs:
            if Path(run).resolve() in held:
                raise SystemExit(f"error: {run} is already one of the folders {report} reads (its sources.json lists "
                                 f"them); pass only folders to add to it, or --again {report} alone to reread them")
        recorded = [(path, m.given, m.orders) for path, m in zip(self._here(), self.members)]
        return RunSet.read([*recorded, *taking(runs, take)])


def add_take_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--take RUN_DIR WHAT [WHAT ...]`` flag of the commands that pool run folders (read with :func:`taking`)."""
    parser.add_argument("--take", nargs="+", action="append", metavar=("RUN_DIR", "WHAT"),
                        help="take only these methods and/or class orders of RUN_DIR (one of the run folders given; "
                             "WHAT: a method or an order seed), e.g. the orders a machine finished when another "
                             "folder holds the rest; once per folder")


def add_again_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """The ``--again REPORT_DIR [RUN_DIR ...]`` flag of the commands whose reports record their folders (``what``: how
    the help names them); checked with :func:`check_again`."""
    parser.add_argument("--again", metavar="REPORT_DIR", help=f"rebuild a report from {what} its sources.json names; "
                        "with RUN_DIR ...: those folders added to them (--take applies to the added ones)")


def check_again(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse a call with neither run folders nor ``--again``, and a ``--take`` that ``--again`` alone would ignore."""
    if not args.runs and not args.again:
        parser.error("pass run folders (RUN_DIR ...) with --out, or --again REPORT_DIR (and run folders to add to it)")
    if args.again and args.take and not args.runs:
        parser.error(f"--take reads an added folder in part; with --again {args.again} alone nothing is added (its "
                     "recorded --take stays): pass the RUN_DIR to add too, or drop --take")


def taking(runs: Sequence[str], take: Sequence[Sequence[str]] | None, flag: str = "--take") -> list[Spec]:
    """The specs of the ``RUN_DIR`` arguments ``runs`` with ``--take RUN_DIR WHAT [WHAT ...]`` applied: that folder
    read for those methods and/or class orders only (each WHAT a method name or an order seed), e.g. the orders one
    machine finished when another folder holds the rest, or the methods of a folder run under the recipe the table
    compares. ``SystemExit`` naming the flag for a folder not among ``runs`` or a WHAT that is neither."""
    known = set(method_names())
    chosen: dict[str, Spec] = {}
    for item in take or ():
        folder, *what = item
        if folder not in runs:
            raise SystemExit(f"error: {flag} {folder}: not one of the run folders given ({', '.join(runs)}); "
                             f"pass the folder as a RUN_DIR too, spelt the same")
        if folder in chosen:
            raise SystemExit(f"error: {flag} {folder} is given twice; name everything to take from it in one {flag}")
        if not what:
            raise SystemExit(f"error: {flag} {folder}: name the methods or class orders to take (e.g. {flag} "
                             f"{folder} 1993, or {flag} {folder} sdlora seq-lora)")
        methods = [w for w in what if w in known]
        others = [w for w in what if w not in known]
        bad = [w for w in others if not w.isdigit()]
        if bad:
            raise SystemExit(f"error: {flag} {folder} {' '.join(bad)}: neither a method nor a class order (the "
                             f"order seed, e.g. 1993); methods: {', '.join(sorted(known))}")
        chosen[folder] = (folder, methods or None, tuple(int(o) for o in others) or None)
    return [chosen.get(r, r) for r in runs]


def one_run_per_order(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """``rows`` (:meth:`RunSet.rows`) with one run per (method, class order), its records
    (:func:`~benchmarks.reports.run_records`), and a label per run left out as superseded.

    A run that stopped where another folder finished the same (method, order) is superseded, not a second run: runs
    of a machine whose time ran out are redone in a new folder (a resume is refused on another machine). Two runs of
    one (method, order) otherwise are refused: a class-order table takes one each (and two seeds of a fixed-order
    run share its order)."""
    records = run_records(rows, ["method", "class_order_seed", "seed", "run"])
    key = ["method", "class_order_seed"]
    done_keys = pd.MultiIndex.from_frame(records.loc[records["finished"], key])
    superseded = records[~records["finished"] & pd.MultiIndex.from_frame(records[key]).isin(done_keys)]
    if len(superseded):
        run_key = ["method", "seed", "run"]
        records = records.drop(index=superseded.index)
        rows = rows[~pd.MultiIndex.from_frame(rows[run_key]).isin(pd.MultiIndex.from_frame(superseded[run_key]))]
    twice = records[records.duplicated(key, keep=False)]
    if len(twice):
        (method, order), g = next(iter(twice.groupby(key)))
        where = ", ".join(f"seed {s} in {r}" for s, r in zip(g["seed"], g["run"]))
        raise SystemExit(f"error: {method} has {len(g)} runs on class order {order} ({where}); a class-order table "
                         "takes one run per method and order (the seeds of a fixed-order run share its order): pass "
                         "folders holding one each, or take some orders of a folder only (--take RUN_DIR ORDER ...)")
    labels = [f"{r.method} order {r.class_order_seed} ({r.run})" for r in superseded.itertuples()]
    return rows, records.reset_index(drop=True), labels


def _comparable(value: Any) -> Any:
    if value is _MISSING:
        return "\0missing"
    if isinstance(value, dict) and "sha256" in value:
        return (value.get("sha256"), value.get("size"))
    return json.dumps(value, sort_keys=True)


def _differ(values: list[Any]) -> bool:
    return len({_comparable(v) for v in values}) > 1


def _show(key: str, value: Any) -> str:
    if value is _MISSING:
        return "not recorded"
    if key in _FILES and isinstance(value, dict):
        return f"'{value.get('name')}' (sha256 {str(value.get('sha256'))[:12]}...)"
    if key == "method_options":
        return ", ".join(f"{m}.{k}={json.dumps(v)}" for m, kv in sorted(value.items()) for k, v in sorted(kv.items())) \
            or "none"
    return json.dumps(value)


def _own(key: str, value: Any, method: str) -> Any:
    """A method's own value of ``key``: for ``method_options``, its keywords without the method's name."""
    return value.get(method, {}) if key == "method_options" and isinstance(value, dict) else value


def _brief(value: Any) -> str:
    """A value as a note shows it: floats to 6 significant digits (config.json keeps them exact)."""
    if value is _MISSING:
        return "not recorded"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_brief(v)}" for k, v in sorted(value.items())) or "none"
    return json.dumps(value)


def _by_method(own: dict[str, Any]) -> str:
    """``sdlora, sdlora-rr: lr=0.008, optimizer="sgd"; simplecil: none``: each value once, after its methods."""
    groups: dict[Any, list[str]] = {}
    for method, value in own.items():
        groups.setdefault(_comparable(value), []).append(method)
    shown = {_comparable(v): _brief(v) for v in own.values()}
    return "; ".join(f"{', '.join(who)}: {shown[c]}" for c, who in groups.items())


def _listing(key: str, values: list[tuple[Member, Any]]) -> str:
    """``0.01 (cpu-3seeds, peers), 0.03 (l2p-lr0.03)``: each value once, with the folders that have it."""
    groups: dict[Any, tuple[str, list[str]]] = {}
    for m, v in values:
        groups.setdefault(_comparable(v), (_show(key, v), []))[1].append(m.label)
    return ", ".join(f"{shown} ({', '.join(who)})" for shown, who in groups.values())
