"""``python -m benchmarks.migrate FOLDER...``: bring result folders written by earlier versions of the harness to
today's format, in place, once; the harness itself reads only today's format.

Below each given folder it rewrites

* every run folder's ``config.json`` the way ``benchmarks.compare`` writes it today: the :class:`RunConfig` fields
  flat (a folder from before RunConfig held the protocol's fields in a ``protocol`` dict and SD-LoRA's options as
  ``sdlora_options``/``sdlora_effective`` and ``rank``), the ``identity`` under today's keys (a folder from before
  identities: what it did record; a protocol's former name under its current one), the launch (one process) and
  the history of calls (a folder from before it: its one call);
* every part (``parts/*.csv``) and ``per_task.csv`` of a run folder with a ``class_order_seed`` column: rows written
  before rows recorded their class order (issue 22) ran on the run's fixed ``--class-order-seed`` (under
  ``--class-order seed``: the row's seed); every other character of the file is kept;
* every (method, seed)'s CSVLogger files (``csv/<method>/seed<k>/``): the training file without Avalanche's
  validation columns (never filled: the harness does not evaluate during training), and a column a version before
  0.3.0 never filled (training accuracy and loss, test loss: 0 in every row) as empty cells, not recorded rather
  than 0;
* every run folder whose rows hold SD-LoRA's magnitudes gets its ``magnitudes.csv`` (the long table
  ``benchmarks.compare`` writes beside per_task.csv since 0.3.0), from its per_task.csv;
* a findings folder's ``sources.json`` with the history of its calls (one from before it: its one command);
* every ``config.json``, ``sources.json`` (a findings or class-order report) and ``tuning.json`` with no absolute
  local path left (:mod:`benchmarks.local_paths`, issue 35);
* every derived report CSV (``summary.csv``, a class-order report's, tuning's ``candidates.csv``, a study's; not
  ``per_task.csv`` nor a part) with its accuracy-like columns in percent under names that say so (``acc_mean`` ->
  ``acc_mean_pct``, a difference ``acc_diff`` -> ``acc_diff_pts``; :mod:`benchmarks.units`, issue 35): the values
  the command would write today, every other cell's text kept; a findings folder's measurements
  (``f1b_runs.csv``, ``f1b_per_task.csv``, ``f3_interpolation.csv``) alike, and the rest of that folder rebuilt
  from them as ``python -m benchmarks.findings --report-only`` does.

What a folder never recorded is not made up: an identity key it did not hold stays out (a resume then records that
call's value, with a note, as it always did), and a folder without ``recipes`` or an image cache gets none. Numbers,
recorded values and the settings a resume is refused for stay as they were. Running it twice changes nothing the
second time.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .commands import print_kept_help

if __name__ == "__main__":  # --help before torch, timm and Avalanche load
    print_kept_help("benchmarks.migrate", sys.argv[1:])

import pandas as pd  # noqa: E402

from avalanche_sdlora.atomic import write_text  # noqa: E402
from avalanche_sdlora.options import SDLoRAOptions  # noqa: E402

from .config import INPUT_FIELDS, RunConfig  # noqa: E402
from .findings import report as findings_report  # noqa: E402
from .identity import added_since_0_2, labels  # noqa: E402
from .local_paths import portable_record  # noqa: E402
from .protocols import PROTOCOL_FIELDS, canonical  # noqa: E402
from .reports import magnitudes, write_csv  # noqa: E402
from .resume import AVALANCHE_TRAINING_HEADER, LOG_FILES  # noqa: E402
from .run_folder import CALL_KEYS  # noqa: E402
from .units import DECIMALS, DERIVED_CSVS, FINDINGS_CSVS, PERCENT, POINTS, file_name, in_file_units  # noqa: E402

RECORDS = ("config.json", "sources.json", "tuning.json")
_SDLORA_FIELDS = tuple(f.name for f in dataclasses.fields(SDLoRAOptions))
_FILES = ("data", "checkpoint")

# What a folder that did not record a setting ran with: the setting did not exist yet (each issue that added one
# kept the earlier behaviour as one of its values). Fields added since 0.2.0 are RunConfig's own
# (:func:`benchmarks.identity.added_since_0_2`): the harness still reads a 0.2.0 folder without them.
RAN_WITHOUT: dict[str, Any] = {
    "eval_amp": False,  # before the field, evaluation ran in float32
    "peer_recipe": "reference", "method_options": {}, "workers": 0, "class_order": "fixed",
    "train_amp": "float32", "train_shuffle": True, "augment": True,  # issue 20
    "preset": None, "sdlora_optimizer": "sgd", "sdlora_lr": None, "split": None,  # issue 18
}
# Settings that became protocol fields (issue 30: a protocol sets its training precision): a folder that did not
# record one ran with the value above, as for a run field.
FORMER_RUN_FIELDS = ("train_amp",)
# The launch before issue 20 recorded it: one process, no backend.
_LAUNCH = {"world_size": 1, "backend": None}
_NOT_RECORDED = "not recorded"  # a protocol field an old folder did not record, with no earlier value: refused


def _ran_without() -> dict[str, Any]:
    return {**RAN_WITHOUT, **added_since_0_2()}


def _is_protocol_dict(saved: Mapping) -> bool:
    return isinstance(saved.get("protocol"), Mapping)


def is_current(saved: Mapping) -> bool:
    """Whether a run folder's config.json is already in today's format (what the harness reads)."""
    identity = saved.get("identity")
    return (not _is_protocol_dict(saved) and isinstance(identity, Mapping) and "name" not in identity
            and "sdlora" in saved and all(k in identity for k in _LAUNCH) and all(k in saved for k in RunConfig.__dataclass_fields__))


def old_run_config(saved: Mapping[str, Any]) -> RunConfig:
    """The settings an old ``config.json`` records, as :class:`RunConfig` (inputs as "not given")."""
    data = dict(saved)
    if _is_protocol_dict(data):  # before RunConfig: {"protocol": {"name": ..., fields}}
        proto = dict(data.pop("protocol"))
        data.update({k: v for k, v in proto.items() if k in PROTOCOL_FIELDS}, protocol=proto["name"])
        sdlora = {**data.get("sdlora_effective", data.get("sdlora_options", {}))}
        if "rank" in data:
            sdlora["rank"] = data["rank"]
        data["sdlora"] = sdlora
    for name in PROTOCOL_FIELDS:  # a protocol field the folder did not record ran with its earlier value
        if name not in data and name in _ran_without():
            data[name] = _ran_without()[name]
    names = set(RunConfig.__dataclass_fields__)
    return RunConfig.from_json({k: None if k in INPUT_FIELDS and isinstance(v, str) else v
                                for k, v in data.items() if k in names})


def old_identity(saved: Mapping[str, Any]) -> dict[str, Any]:
    """The identity an old folder recorded, under today's keys; a setting it never recorded is left out."""
    ran_without = _ran_without()
    run_fields = {k: v for k, v in ran_without.items() if k not in PROTOCOL_FIELDS or k in FORMER_RUN_FIELDS}
    if "identity" in saved:
        old = dict(saved["identity"])
        if "name" in old:  # the protocol's name, before RunConfig
            old["protocol"] = old.pop("name")
        for key, value in {**SDLoRAOptions().to_dict(), **run_fields}.items():
            old.setdefault(key, value)
    elif not _is_protocol_dict(saved):  # a RunConfig without its identity (edited by hand)
        as_json = old_run_config(saved).to_json()
        old = {k: v for k, v in {**as_json, **as_json["sdlora"]}.items() if k in labels() and k not in _FILES}
        old.pop("threads", None)  # the flag's value, not the threads each (method, seed) ran on
        old.update({k: saved[k] for k in ("device_name", "torch") if k in saved})
    else:
        # A protocol field added since is not unknown: the run ran without it, so it is refused as a change.
        proto = saved["protocol"]
        old = {k: proto.get(k, ran_without.get(k, _NOT_RECORDED)) for k in PROTOCOL_FIELDS}
        old["protocol"] = proto["name"]
        for k in ("classes", "test_per_class", "rank", "ewc_lambda", "device", "device_name", "torch"):
            if k in saved:
                old[k] = saved[k]
        # Options recorded with their defaults ("sdlora_effective"), or only those given (older runs), which ran with
        # the behaviour today's defaults keep; an option added later (e.g. head_init) ran as its default.
        old.update({n: v for n, v in SDLoRAOptions().to_dict().items() if n != "rank"})
        old.update(saved.get("sdlora_effective", saved.get("sdlora_options", {})))
        old["workers"] = saved.get("workers", 0)  # before --workers existed, data loading ran in the training process
        if saved.get("threads") == 1:  # the parent's thread count: the runs' only when it was 1 (a worker always has 1)
            old["threads"] = 1
        old.update(run_fields)
    if "protocol" in old:
        old["protocol"] = canonical(old["protocol"])
    for key, value in _LAUNCH.items():
        old.setdefault(key, value)
    order = list(labels())
    return dict(sorted(old.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


def migrate_config(saved: Mapping[str, Any]) -> dict[str, Any]:
    """A run folder's ``config.json`` in today's format (keys in the order ``benchmarks.compare`` writes them)."""
    if is_current(saved):
        return dict(saved)
    fields = old_run_config(saved).to_json()
    for k in INPUT_FIELDS:  # what the folder recorded of its inputs (benchmarks.local_paths makes it portable)
        fields[k] = saved.get(k)
    identity = old_identity(saved)
    config: dict[str, Any] = {**fields}
    for k in ("methods", "seeds", "recipes", "device_name", "torch"):
        if k in saved:
            config[k] = saved[k]
    config["identity"] = identity
    for k in ("command", "started_utc"):
        if k in saved:
            config[k] = saved[k]
    config["world_size"] = saved.get("world_size", identity["world_size"])
    dropped = {"protocol", "rank", "sdlora_options", "sdlora_effective", "identity", "calls", "failed",
               "wall_seconds", "world_size"}
    config.update({k: v for k, v in saved.items() if k not in config and k not in dropped})
    if "wall_seconds" in saved:
        config["wall_seconds"] = saved["wall_seconds"]
    # Every call that wrote into the folder; a folder from before the history: its one call, from its own fields.
    config["calls"] = saved.get("calls") or [{k: saved.get(k) for k in CALL_KEYS}]
    config["failed"] = saved.get("failed", {})
    return config


def migrate_findings_sources(sources: Mapping[str, Any]) -> dict[str, Any]:
    """A findings folder's ``sources.json`` with its ``calls`` (one from before them: its one command, for every
    finding); a class-order report's (no ``settings``) is kept."""
    if "settings" not in sources or "calls" in sources or "command" not in sources:
        return dict(sources)
    return {**sources, "calls": [{"command": sources["command"], "only": None}]}


def _order_seed_of(config: Mapping[str, Any]) -> tuple[str, int | None]:
    cfg = RunConfig.from_json(config)
    return cfg.class_order, cfg.class_order_seed


def migrate_rows(text: str, class_order: str, class_order_seed: int | None) -> str:
    """A part's or per_task.csv's text with a filled ``class_order_seed`` column right after ``seed``."""
    lines = text.splitlines(keepends=True)
    if not lines:
        return text
    header = lines[0].rstrip("\r\n").split(",")
    if "seed" not in header:
        return text
    seed_at = header.index("seed")
    has = "class_order_seed" in header
    at = header.index("class_order_seed") if has else seed_at + 1
    out = []
    for k, line in enumerate(lines):
        body = line.rstrip("\r\n")
        end = line[len(body):]
        cells = body.split(",")
        if k == 0:
            value = "class_order_seed"
        elif not body:
            out.append(line)
            continue
        else:
            value = cells[seed_at] if class_order == "seed" else str(class_order_seed)
        if has:
            if cells[at] == "":
                cells[at] = value
        else:
            cells.insert(at, value)
        out.append(",".join(cells) + end)
    return "".join(out)


# Columns of the CSVLogger files that versions before 0.3.0 left at 0 (their metrics were not in the evaluator).
_NEVER_FILLED = {"training_results.csv": ("training_accuracy", "training_loss"), "eval_results.csv": ("eval_loss",)}


def migrate_log(text: str, name: str) -> str:
    """A CSVLogger file (``name``: training_results.csv or eval_results.csv) in today's columns; other text as is."""
    lines = text.splitlines(keepends=True)
    if not lines:
        return text
    header = lines[0].rstrip("\n").split(",")
    keep = list(range(len(header)))
    if name == LOG_FILES[0] and lines[0].rstrip("\n") == AVALANCHE_TRAINING_HEADER:
        keep = [j for j, h in enumerate(header) if h not in ("val_accuracy", "val_loss")]
    rows = [line.rstrip("\n").split(",") for line in lines[1:]]

    def zero(cell: str) -> bool:
        try:
            return float(cell) == 0.0
        except ValueError:
            return False

    never = {header.index(c) for c in _NEVER_FILLED[name] if c in header}
    never = {j for j in never if rows and all(len(r) > j and zero(r[j]) for r in rows)}
    out = [",".join(header[j] for j in keep) + "\n"]
    for line, cells in zip(lines[1:], rows):
        end = "\n" if line.endswith("\n") else ""
        out.append(",".join("" if j in never else cells[j] for j in keep if j < len(cells)) + end)
    return "".join(out)


def _migrate_run_folder(folder: Path) -> list[Path]:
    changed = []
    path = folder / "config.json"
    saved = json.loads(path.read_text())
    config = migrate_config(saved)
    if config != saved:
        write_text(path, json.dumps(config, indent=2) + "\n")
        changed.append(path)
    class_order, seed = _order_seed_of(config)
    for table in [*sorted((folder / "parts").glob("*.csv")), folder / "per_task.csv"]:
        if not table.exists():
            continue
        before = table.read_text()
        after = migrate_rows(before, class_order, seed)
        if after != before:
            write_text(table, after)
            changed.append(table)
    if (folder / "per_task.csv").exists():
        long = magnitudes(pd.read_csv(folder / "per_task.csv"))
        path = folder / "magnitudes.csv"
        if len(long) and (not path.exists() or path.read_text() != long.to_csv(index=False)):
            write_csv(long, path)  # as write_reports writes it
            changed.append(path)
    for name in LOG_FILES:
        for log in sorted((folder / "csv").glob(f"*/*/{name}")):
            before = log.read_text()
            after = migrate_log(before, name)
            if after != before:
                write_text(log, after)
                changed.append(log)
    return changed


def _is_run_folder(folder: Path) -> bool:
    return (folder / "config.json").exists() and ((folder / "parts").is_dir() or "methods" in
                                                  json.loads((folder / "config.json").read_text()))


def migrate(root: str | Path) -> list[Path]:
    """Rewrite every record and run table below ``root`` that is not in today's format; returns the files changed."""
    changed = []
    for config in sorted(Path(root).rglob("config.json")):
        if _is_run_folder(config.parent):
            changed += _migrate_run_folder(config.parent)
    for name in RECORDS:
        for path in sorted(Path(root).rglob(name)):
            before = json.loads(path.read_text())
            after = portable_record(migrate_findings_sources(before) if name == "sources.json" else before,
                                    path.parent)
            if after != before:
                write_text(path, json.dumps(after, indent=2) + "\n")
                if path not in changed:
                    changed.append(path)
    changed += _migrate_derived_csvs(Path(root))  # issue 35: units in the derived CSVs' column names
    return changed


def migrate_units(text: str) -> str:
    """A derived CSV's text with its accuracy-like columns (fractions, under the names before units) in percent under
    today's names (:func:`benchmarks.units.in_file_units`, as the writer converts); the other cells' text is kept. A
    file already in today's names comes back unchanged."""
    if not text.strip():
        return text
    table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    old = [c for c in table.columns if file_name(c) != c]
    if not old:
        return _rounded_units(table, text)
    for column in old:  # float() reads back exactly the float64 the writer wrote (shortest repr round-trips)
        table[column] = [float(v) if v != "" else float("nan") for v in table[column]]
    converted = in_file_units(table[old])
    table = table.rename(columns=file_name)
    for column in converted.columns:
        table[column] = converted[column]
    return table.to_csv(index=False)


def _rounded_units(table: pd.DataFrame, text: str) -> str:
    """A derived CSV already in today's names, with its percent and point cells as :func:`benchmarks.units.
    in_percent` writes them since 0.4.1 (rounded to 10 decimals; 0.4.0 wrote 83.89999999999999 for 83.9); a file
    whose cells need no rounding comes back unchanged, byte for byte."""
    units = [c for c in table.columns if c.endswith((PERCENT, POINTS))]
    changed = False
    for column in units:
        cells = list(table[column])
        rounded = [repr(round(float(v), DECIMALS)) if v not in ("", "nan") else v for v in cells]
        if rounded != cells:
            table[column] = [float(v) if v not in ("", "nan") else float("nan") for v in rounded]
            changed = True
    return table.to_csv(index=False) if changed else text


def _migrate_derived_csvs(root: Path) -> list[Path]:
    changed = []
    for name in (*DERIVED_CSVS, *FINDINGS_CSVS):
        for path in sorted(Path(root).rglob(name)):
            before = path.read_text()
            after = migrate_units(before)
            if after != before:
                write_text(path, after)
                changed.append(path)
    # A findings folder's summaries, verdicts.csv and README are computed from its measurements: rebuilt from the
    # converted ones (what --report-only does), so they are what the command writes today.
    for folder in sorted({p.parent for p in changed if p.name in FINDINGS_CSVS}):
        before = {p: p.read_bytes() for p in folder.iterdir() if p.is_file()}
        findings_report.write(folder)
        changed += [p for p in sorted(folder.iterdir()) if p.is_file() and p not in changed
                    and before.get(p) != p.read_bytes()]
    return changed


def main(argv: list[str] | None = None) -> list[Path]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.migrate", description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", help="result folders to rewrite in place (e.g. results)")
    args = p.parse_args(argv)
    missing = [f for f in args.folders if not Path(f).is_dir()]
    if missing:
        p.error(f"not a folder: {', '.join(missing)}; pass result folders (e.g. results)")
    changed = [c for f in args.folders for c in migrate(f)]
    for c in changed:
        print(f"rewritten: {c}")
    print(f"{len(changed)} file(s) rewritten")
    return changed


if __name__ == "__main__":
    main()
