"""What the machine alone moves: the same runs (method, class order, seed, recipe) trained on several machines,
side by side, so "a run moves by a point or two with the machine" is a file a reader can check, not a sentence.

    python -m benchmarks.machine_drift RUN_DIR [RUN_DIR ...] --out DIR [--take RUN_DIR WHAT ...]
    python -m benchmarks.machine_drift --again DIR [RUN_DIR ...]

The folders must have run one experiment (:meth:`benchmarks.run_set.RunSet.check`: same protocol and budget, a
method's own settings equal wherever it appears); only how they ran may differ. A run is matched with every run of
the same method, class order and seed on each other machine type; of two machines, the one whose folder comes first is
the reference. Written into ``DIR``: ``pairs.csv`` (one row per run matched on two machines: both final accuracies,
AAA and forgetting, their differences, the largest gap after any experience, the first experience where they part),
``curves.csv`` (the seen-class accuracy after each experience of every matched run, in %), ``summary.csv`` (per method and
two machines: the mean, std and mean absolute difference, how many runs ended higher on the other machine), ``table.md``
and ``sources.json`` (what ``--again`` rereads). Class-order tables never mix machines within an order
(:mod:`benchmarks.orders`); this is the measurement behind that rule.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from avalanche_sdlora.atomic import write_text

from . import predictions
from .machine_brief import short_machine
from .reports import markdown_grid, run_records
from .run_folder import RunFolder
from .run_set import ORDER_KEYS, RunSet, add_again_argument, add_take_argument, check_again, taking
from .units import in_file_units

SOURCES = "sources.json"
KIND = "machine-drift"  # sources.json says which command wrote it (orders and the findings write one too)
KEY = ["method", "class_order_seed", "seed"]
TABLES = ("pairs.csv", "curves.csv", "summary.csv", "table.md")


def matched_runs(runs: RunSet) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every run's per-experience rows and its record (:func:`~benchmarks.reports.run_records`), each with its
    ``machine``, less unfinished runs another folder of the same machine finished; ``SystemExit`` for two runs of
    one method, order and seed on one machine otherwise (which one is the run?)."""
    rows = runs.rows()
    rows["machine"] = rows["run"].map(runs.machines())
    records = run_records(rows, [*KEY, "run"])
    records["machine"] = records["run"].map(runs.machines())
    # a run a machine's time stopped, redone to the end in a later folder of that machine, is superseded
    finished = records[records["finished"]].set_index([*KEY, "machine"]).index
    superseded = ~records["finished"] & records.set_index([*KEY, "machine"]).index.isin(finished)
    records = records[~superseded].reset_index(drop=True)
    twice = records[records.duplicated([*KEY, "machine"], keep=False)]
    if len(twice):
        r = twice.iloc[0]
        where = ", ".join(twice.loc[(twice[KEY] == r[KEY]).all(axis=1), "run"])
        raise SystemExit(f"error: {r['method']} order {r['class_order_seed']} seed {r['seed']} ran twice on "
                         f"{r['machine']} ({where}); take one of them (--take RUN_DIR ORDER ... or METHOD ...)")
    return rows, records


def pairs_of(rows: pd.DataFrame, records: pd.DataFrame, machines: list[str],
             folders: dict[str, RunFolder] | None = None) -> pd.DataFrame:
    """One row per run matched on two machines, for every two of ``machines`` that ran it (the earlier of
    ``machines`` is the reference); fractions, differences other minus reference over the experiences both reached,
    AAA and forgetting where both finished. ``folders`` (run -> its folder): where both finished runs kept their
    per-image predictions, ``acc_diff_bound`` is the difference's paired bound on the test images
    (:func:`benchmarks.predictions.paired_difference`): a machine gap beyond it is not the test sample's."""
    rank = {m: k for k, m in enumerate(machines)}
    out = []
    for key, g in records.groupby(KEY, sort=False):
        g = g.assign(rank=g["machine"].map(rank)).sort_values("rank")
        runs = list(g.itertuples(index=False))
        for i, a in enumerate(runs):
            acc_a = _curve(rows, a)
            for b in runs[i + 1:]:
                acc_b = _curve(rows, b)
                n = min(len(acc_a), len(acc_b))
                gaps = acc_b[:n] - acc_a[:n]
                parted = np.flatnonzero(gaps != 0)
                both = bool(a.finished and b.finished)
                out.append({
                    **dict(zip(KEY, key)), "machine": a.machine, "other_machine": b.machine,
                    "run": a.run, "other_run": b.run, "n_experiences_compared": n, "both_finished": both,
                    "acc_reference": acc_a[n - 1], "acc_other": acc_b[n - 1], "acc_diff": gaps[-1],
                    "aaa_diff": b.aaa - a.aaa if both else np.nan,
                    "forgetting_diff": b.forgetting - a.forgetting if both else np.nan,
                    "acc_diff_bound": _bound(folders or {}, a, b, n - 1) if both else np.nan,
                    "largest_gap": float(gaps[np.argmax(np.abs(gaps))]),
                    "first_experience_apart": int(parted[0]) + 1 if len(parted) else 0,  # 1-based; 0: never apart
                })
    return pd.DataFrame.from_records(out)


def _bound(folders: dict[str, RunFolder], a, b, experience: int) -> float:
    """The paired bound of ``b`` minus ``a`` (two finished runs' records) where both kept predictions, else NaN; a
    file that does not score its run's Acc is refused, naming it."""
    paths = [folders[r.run].predictions(r.method, r.seed) if r.run in folders else None for r in (a, b)]
    if not all(p is not None and p.exists() for p in paths):
        return np.nan
    kept = [predictions.load_of_run(p, experience, r.acc) for p, r in zip(paths, (a, b))]
    return predictions.paired_difference(kept[1], kept[0]).bound


def _curve(rows: pd.DataFrame, record) -> np.ndarray:
    """The seen-class accuracy after each experience of one run (``record``: a row of its records)."""
    own = (rows[KEY + ["run"]] == [getattr(record, k) for k in KEY + ["run"]]).all(axis=1)
    return rows[own].sort_values("experience")["acc_seen"].to_numpy(dtype=float)


def summarize(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per method and other machine, over its runs finished on both: the final accuracy's difference (mean, sample
    std, mean absolute) and how many ended higher on the other machine."""
    done = pairs[pairs["both_finished"]]
    out = []
    for (method, machine, other), g in done.groupby(["method", "machine", "other_machine"], sort=False):
        d = g["acc_diff"]
        out.append({"method": method, "machine": machine, "other_machine": other, "n_runs": len(g),
                    "acc_diff_mean": d.mean(), "acc_diff_std": d.std(ddof=1), "acc_diff_abs_mean": d.abs().mean(),
                    "n_other_higher": int((d > 0).sum()), "n_other_lower": int((d < 0).sum())})
    return pd.DataFrame.from_records(out)


def markdown(pairs: pd.DataFrame, summary: pd.DataFrame, notes: list[str]) -> str:
    """The report's table.md: the summary per method, then every matched run."""
    pts = lambda v: "–" if pd.isna(v) else f"{100 * v:+.2f}"  # noqa: E731
    pct = lambda v: f"{100 * v:.2f}"  # noqa: E731
    lines = ["# The same runs on several machines", "",
             "Final accuracy on the seen classes, other machine minus reference, in points, over the runs both "
             "finished (same method, class order, seed and recipe; only the machine and what runs on it differ).", ""]
    lines.append(markdown_grid(
        ["method", "reference", "other machine", "runs", "mean ± std", "mean |diff|", "higher / lower there"],
        [[s.method, short_machine(s.machine), short_machine(s.other_machine), str(s.n_runs),
          pts(s.acc_diff_mean) + ("" if pd.isna(s.acc_diff_std) else f" ± {100 * s.acc_diff_std:.2f}"),
          f"{100 * s.acc_diff_abs_mean:.2f}", f"{s.n_other_higher} / {s.n_other_lower}"]
         for s in summary.itertuples()]))
    lines += ["Every matched run (Acc after the last experience both reached; diff ± b: b is twice the paired "
              "standard error on the test images, where both runs kept their predictions; largest gap: the other "
              "machine minus the reference after the experience where they differ most; apart from: the first "
              "experience whose accuracy differs, 0 if none):", ""]
    lines.append(markdown_grid(
        ["method", "order", "seed", "reference (run)", "other (run)", "Acc there", "Acc other", "diff", "AAA diff",
         "largest gap", "apart from"],
        [[p.method, str(p.class_order_seed), str(p.seed), f"{short_machine(p.machine)} ({p.run})",
          f"{short_machine(p.other_machine)} ({p.other_run})", pct(p.acc_reference), pct(p.acc_other),
          pts(p.acc_diff) + ("" if pd.isna(p.acc_diff_bound) else f" ± {100 * p.acc_diff_bound:.2f}")
          + ("" if p.both_finished else f" (after {p.n_experiences_compared})"), pts(p.aaa_diff),
          pts(p.largest_gap), str(p.first_experience_apart)] for p in pairs.itertuples()]))
    if notes:
        lines += ["Settings that differ between the folders (how they ran): " + "; ".join(notes) + ".", ""]
    return "\n".join(lines)


def build(runs: RunSet, out: str | Path) -> dict[str, str]:
    """The text of every table of the report to be written into ``out`` (name -> content)."""
    # Each folder named by its path from the report's parent (results/<protocol>/): 'fair-peers' and
    # 'h200/fair-peers' apart, and the same names whichever folder the command ran from (--again reads them anew).
    parent = Path(out).resolve().parent
    runs = RunSet([dataclasses.replace(m, label=os.path.relpath(m.folder.path.resolve(), parent))
                   for m in runs.members])
    notes = runs.check(free=ORDER_KEYS, pooled=True)
    rows, records = matched_runs(runs)
    machines = list(dict.fromkeys(m.machine for m in runs.members))
    pairs = pairs_of(rows, records, machines, {m.label: m.folder for m in runs.members})
    if pairs.empty:
        raise SystemExit(f"error: no method, class order and seed of these folders ran on two machine types (they "
                         f"ran on {', '.join(machines)}); pass folders of one experiment from two or more")
    summary = summarize(pairs)
    matched = pd.MultiIndex.from_frame(pairs[KEY])
    curves = rows[pd.MultiIndex.from_frame(rows[KEY]).isin(matched)]
    curves = curves[[*KEY, "machine", "run", "experience", "acc_seen"]]
    return {"pairs.csv": in_file_units(pairs).to_csv(index=False),
            "curves.csv": in_file_units(curves).to_csv(index=False),
            "summary.csv": in_file_units(summary).to_csv(index=False),
            "table.md": markdown(pairs, summary, notes)}


def write(runs: RunSet, out: str | Path, command: str) -> Path:
    """Write the report into ``out`` (each file atomically), with the sources ``--again`` rereads."""
    out = Path(out)
    texts = build(runs, out)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        write_text(out / name, text)
    sources = {"report": KIND, "runs": runs.specs_relative_to(out), "command": command}
    write_text(out / SOURCES, json.dumps(sources, indent=2) + "\n")
    return out


def sources_of(out: str | Path) -> tuple[RunSet, str]:
    """The run folders a written report was made from, and the command that chose them (its ``sources.json``)."""
    try:
        sources = json.loads((Path(out) / SOURCES).read_text())
        assert sources["report"] == KIND
        specs, command = sources["runs"], sources["command"]
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        raise SystemExit(f"error: --again {out}: no {SOURCES} written by python -m benchmarks.machine_drift there; "
                         "pass the --out folder of an earlier call") from None
    return RunSet.read(specs, root=out), command


def is_report(out: str | Path) -> bool:
    """Whether ``out`` holds a machine-drift report of this command."""
    try:
        return json.loads((Path(out) / SOURCES).read_text()).get("report") == KIND
    except (OSError, ValueError, AttributeError):
        return False


def main(argv: list[str] | None = None) -> Path:
    from .compare import Parser

    argv = list(sys.argv[1:] if argv is None else argv)
    p = Parser(prog="python -m benchmarks.machine_drift", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", metavar="RUN_DIR", help="run folders of one experiment, from two or more "
                   "machine types (of two machines, the one whose folder comes first is the reference)")
    p.add_argument("--out", help="report folder (required with RUN_DIR)")
    add_take_argument(p)
    add_again_argument(p, "the folders")
    args = p.parse_args(argv)
    check_again(p, args)
    if args.again and args.out:
        p.error(f"--again rebuilds {args.again} in place; drop --out (a report elsewhere is a new report: pass its "
                "run folders and --out)")
    if args.again:
        out = Path(args.again)
        runs, command = sources_of(out)
        if args.runs:  # folders added: record the command that reads them all from nothing
            runs = runs.adding(args.runs, args.take, out)
            command = " ".join(["python -m benchmarks.machine_drift", *runs.arguments(), "--out", os.path.relpath(out)])
    else:
        if not args.out:
            p.error("--out is required with RUN_DIR (e.g. --out results/<protocol>/machine-drift)")
        out, command = Path(args.out), " ".join(["python -m benchmarks.machine_drift", *argv])
        runs = RunSet.read(taking(args.runs, args.take))
    write(runs, out, command)
    print((out / "table.md").read_text() + f"\nwritten to {out}")
    return out


if __name__ == "__main__":
    from .compare import cli

    sys.exit(cli(main=main))
