"""The README's summary of the tuned full-data comparison: per method, each machine type's accuracy over the class
orders and SD-LoRA's paired difference, side by side.

Each machine type has its own class-order report (``python -m benchmarks.orders``), because the same recipe trained
on another machine moves a method by a point or two (rounding carried through SGD): a report never mixes machines
within an order, and this summary never pools reports, it puts their columns next to each other. It reads the
reports' CSVs (``orders.csv``, ``orders_summary.csv``, ``paired_summary.csv``) and formats each cell with the same
function as the report's own ``brief.md``, so a number reads alike in both.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .orders import SOURCES, _pm, _wins
from .reports import markdown_grid
from .units import in_computed_units


def short_machine(name: str) -> str:
    """A machine's name as a column header says it: 'Intel(R) Xeon(R) Processor' -> 'Intel Xeon' (the full name
    stays in the report and in every run's config.json)."""
    name = re.sub(r"\((R|TM|tm)\)", "", name)
    name = re.sub(r"\s+(Processor|CPU)\b.*$", "", name)
    return " ".join(name.split())


@dataclass(frozen=True)
class Report:
    """One class-order report as the summary needs it."""

    path: str  # as the README names it, relative to the checkout
    machine: str  # short_machine of the machines its runs trained on, joined by ' + '
    orders: tuple[int, ...]  # every class order the report covers
    reference: str
    summary: pd.DataFrame  # orders_summary, fractions, indexed by method
    paired: pd.DataFrame  # paired_summary, fractions, indexed by method

    @classmethod
    def read(cls, root: Path, path: str) -> Report:
        folder = Path(root) / path
        missing = [n for n in ("orders.csv", "orders_summary.csv", "paired_summary.csv", SOURCES)
                   if not (folder / n).exists()]
        if missing:
            raise SystemExit(f"error: {path} has no {', '.join(missing)}; write the report with python -m "
                             f"benchmarks.orders --again {path}")
        rows = pd.read_csv(folder / "orders.csv")
        finished = rows[rows["finished"].astype(bool)] if len(rows) else rows
        machines = [short_machine(m) for m in dict.fromkeys((finished if len(finished) else rows)["machine"])
                    if isinstance(m, str)]
        return cls(path=path, machine=" + ".join(dict.fromkeys(machines)) or "no machine yet",
                   orders=tuple(sorted(int(o) for o in rows["class_order_seed"].unique())),
                   reference=json.loads((folder / SOURCES).read_text())["reference"],
                   summary=in_computed_units(pd.read_csv(folder / "orders_summary.csv")).set_index("method"),
                   paired=in_computed_units(pd.read_csv(folder / "paired_summary.csv")).set_index("method"))

    def acc_cell(self, method: str, n_orders: int) -> str:
        """'82.95 ± 0.58 (3 of 3)': mean ± std over the orders the method finished, and how many of ``n_orders``
        (every order the brief's reports cover, so a machine that has run one order so far reads '1 of 3', not
        '1 of 1') those are; 'unfinished' (none finished), '–' (not run here)."""
        if method not in self.summary.index:
            return "–"
        r = self.summary.loc[method]
        if int(r["n_orders"]) == 0:
            return "unfinished"
        return f"{_pm(r['acc_mean'], r['acc_std'])} ({int(r['n_orders'])} of {n_orders})"

    def diff_cell(self, method: str) -> str:
        """The reference minus ``method`` on the orders both finished: '-15.42 ± 1.12 (ahead 0 of 2)'."""
        if method == self.reference or method not in self.paired.index:
            return "–"
        p = self.paired.loc[method]
        return f"{_pm(p['acc_diff_mean'], p['acc_diff_std'], sign=True)} (ahead {_wins(p, 'acc')})"

    def acc(self, method: str) -> float:
        return float(self.summary.loc[method, "acc_mean"]) if method in self.summary.index else np.nan


def covered_orders(reports: Sequence[Report]) -> list[int]:
    """Every class order any of ``reports`` covers, ascending: what a machine's finished orders are counted out of."""
    return sorted({o for r in reports for o in r.orders})


def methods_by_accuracy(reports: Sequence[Report]) -> list[str]:
    """Every method of any report, by the mean of its machines' accuracies, best first (a method no machine
    finished last): the summary's row order, and the order its gaps are listed in."""
    methods = list(dict.fromkeys(m for r in reports for m in r.summary.index))

    def key(method: str) -> tuple[bool, float]:
        accs = [a for a in (r.acc(method) for r in reports) if not np.isnan(a)]
        return (not accs, -float(np.mean(accs)) if accs else 0.0)

    return sorted(methods, key=key)


def brief(reports: Sequence[Report], drift: str | None = None) -> str:
    """The side-by-side table and its legend. Rows: :func:`methods_by_accuracy`; the recipe is the reports' (each
    names both where they differ). ``drift``: the :mod:`benchmarks.machine_drift` report the legend names as the
    measurement behind "never pooled"."""
    if not reports:
        raise ValueError("brief needs at least one report, got none")
    references = {r.reference for r in reports}
    if len(references) > 1:
        raise SystemExit(f"error: the reports {', '.join(r.path for r in reports)} compare against different "
                         f"methods ({', '.join(sorted(references))}); write them with the same --reference")
    reference = reports[0].reference
    orders = covered_orders(reports)
    rows = []
    for method in methods_by_accuracy(reports):
        recipes = {r.machine: str(r.summary.loc[method, "recipe"]) for r in reports if method in r.summary.index}
        recipe = (next(iter(recipes.values())) if len(set(recipes.values())) == 1
                  else "; ".join(f"{v} ({k})" for k, v in recipes.items()))
        rows.append([method, recipe,
                     *(c for r in reports for c in (r.acc_cell(method, len(orders)), r.diff_cell(method)))])
    head = ["method", "recipe", *(c for r in reports for c in (f"Acc (%), {r.machine}", f"{reference} minus it"))]
    tables = ", ".join(f"`{r.path}/table.md` ({r.machine})" for r in reports)
    legend = (f"Acc: accuracy on every class seen, after the last task, mean ± sample std over the class orders "
              f"({', '.join(map(str, orders))}) a method finished on that machine, and how many those are "
              f"(unfinished: stopped before its last task; –: not run there); {reference} minus it: the paired "
              f"difference in points on the orders both finished there, and on how many {reference} is ahead; "
              f"recipe: the optimizer and learning rate it trained with and where they came from. Machines are "
              f"never pooled: the same recipe trained on another one moves a method by a point or two"
              + (f" (`{drift}/table.md`: every run two machines share, side by side)" if drift else "")
              + f". Per-order accuracies, AAA, forgetting, costs and every note: {tables}.")
    return markdown_grid(head, rows).rstrip("\n") + "\n\n" + legend + "\n"


def written(root: Path, path: str) -> bool:
    """Whether the report at ``path`` has been written (its ``table.md``): the one test of it, for the reports the
    generated parts of the docs are made from and for the machine-drift report their legend names."""
    return (Path(root) / path / "table.md").exists()


def present_reports(root: Path, paths: Sequence[str]) -> list[Report]:
    """The reports at ``paths`` that have been written, in that order: what the generated parts of the docs are
    made from, none of them before its report exists. Read once, shared by :func:`brief` and
    :func:`benchmarks.missing_runs.markdown`."""
    return [Report.read(root, p) for p in paths if written(root, p)]
