"""The runs each machine type's class-order report still lacks, and what one of them costs there.

The README's summary of the tuned full-data comparison reads "1 of 3", "unfinished" or "–" where a machine has not
finished a method on every class order. This lists those cells as work: per machine type, each method's class orders
still to run (unfinished ones included: a cut run is redone), with the wall minutes one run of that method took on
that machine (train + evaluation, the mean over its finished runs there, as its report's ``orders_summary.csv``
records them) or, where it finished none there, on the machines where it did. Those minutes were measured under
whatever load the runs shared the machine with, so they plan a session, they measure nothing. An order never mixes
machines, so a machine's gap is filled on that machine type only. ``python -m benchmarks.headline`` writes it into
docs/results.md beside the tables, so the list is as current as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
import numpy as np

from .machine_brief import Report, covered_orders, methods_by_accuracy
from .reports import markdown_grid


@dataclass(frozen=True)
class Gap:
    """One machine's missing class orders of one method, and the minutes one run of it took there (NaN: none
    finished there) and on the other machines that finished it."""

    machine: str
    method: str
    orders: tuple[int, ...]
    minutes: float
    elsewhere: dict[str, float]


def finished_orders(report: Report, method: str) -> tuple[int, ...]:
    """The class orders ``method`` finished in ``report`` (its ``orders_summary.csv`` lists them)."""
    if method not in report.summary.index or int(report.summary.loc[method, "n_orders"]) == 0:
        return ()
    return tuple(int(o) for o in str(report.summary.loc[method, "orders"]).split())


def minutes_per_run(report: Report, method: str) -> float:
    """Mean wall minutes of one finished run of ``method`` in ``report``, train plus evaluation (NaN: none)."""
    if not finished_orders(report, method):
        return np.nan
    r = report.summary.loc[method]
    return float(r["train_seconds_mean"] + r["eval_seconds_mean"]) / 60


def gaps(reports: Sequence[Report]) -> list[Gap]:
    """Every (machine, method) whose report lacks a class order that any of ``reports`` covers, machine by machine
    in the reports' order, methods as the README's summary orders them."""
    orders, methods = covered_orders(reports), methods_by_accuracy(reports)
    out = []
    for report in reports:
        for method in methods:
            done = finished_orders(report, method)
            todo = tuple(o for o in orders if o not in done)
            if todo:
                elsewhere = {r.machine: minutes_per_run(r, method) for r in reports if r is not report}
                out.append(Gap(report.machine, method, todo, minutes_per_run(report, method),
                               {m: v for m, v in elsewhere.items() if not np.isnan(v)}))
    return out


def _minutes(gap: Gap) -> str:
    if not np.isnan(gap.minutes):
        return f"{gap.minutes:.0f}"
    others = ", ".join(f"{m}: {v:.0f}" for m, v in gap.elsewhere.items())
    return f"– ({others})" if others else "–"


def markdown(reports: Sequence[Report]) -> str:
    """The gaps as a table with a legend, and per machine how many runs and (where its own runs say) minutes they
    add up to; a sentence saying so where no report lacks anything."""
    found = gaps(reports)
    orders = covered_orders(reports)
    if not found:
        return (f"Every machine's report has every method finished on every class order "
                f"({', '.join(map(str, orders))}).\n")
    rows = [[g.machine, g.method, ", ".join(map(str, g.orders)), _minutes(g)] for g in found]
    totals = []
    for machine in dict.fromkeys(g.machine for g in found):
        mine = [g for g in found if g.machine == machine]
        runs = sum(len(g.orders) for g in mine)
        known = [g for g in mine if not np.isnan(g.minutes)]
        hours = sum(g.minutes * len(g.orders) for g in known) / 60
        costed = sum(len(g.orders) for g in known)
        totals.append(f"{machine}: {runs} runs" + (f", {hours:.1f} run-hours for the {costed} whose method ran "
                                                   f"there" if known else ""))
    legend = (f"Class orders still to run per machine type, out of {', '.join(map(str, orders))} (an unfinished run "
              f"is run again); minutes per run: one run's wall time on that machine, train + evaluation, mean over "
              f"the method's finished runs there (in parentheses, where it finished none there: on the machines "
              f"where it did), under the load the runs shared the machine with, so a guide for planning, not a "
              f"measurement. A machine's gap is filled on that machine type only (an order never mixes machines). "
              f"In all (run-hours: the sum of those minutes, not wall time, since runs share a machine): "
              f"{'; '.join(totals)}.")
    head = ["machine", "method", "class orders to run", "minutes per run there"]
    return markdown_grid(head, rows).rstrip("\n") + "\n\n" + legend + "\n"

