"""The runs each machine type's class-order report still lacks, and what one of them costs there.

The README's summary of the tuned full-data comparison reads "1 of 3", "unfinished" or "–" where a machine has not
finished a method on every class order. This lists those cells as work: per machine type, each method's class orders
still to run (unfinished ones included: a cut run is redone), with the wall minutes one run of that method took on
that machine (train + evaluation, the mean over its finished runs there, as its report's ``orders_summary.csv``
records them) or, where it finished none there, on the machines where it did. Those minutes were measured under
whatever load the runs shared the machine with, so they plan a session, they measure nothing. An order never mixes
machines, so a machine's gap is filled on that machine type only. ``python -m benchmarks.headline`` writes it into
docs/results.md beside the tables, so the list is as current as they are.

``python -m benchmarks.missing_runs [--machine NAME]`` prints the same gaps as work to start: per machine type, one
``benchmarks.compare`` command per missing (method, class order), each the command of that machine's newest run
folder in its report with ``--seeds``, ``--methods`` and ``--run-id`` (``fair-<machine>-<method>-<order>``) put in,
so it runs with the flags that machine's runs used (where this checkout's ``<out>`` folder already holds that run:
its ``--resume``, or, once finished, a note that it waits to be published); then how each finished run joins the
report.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .commands import print_kept_help

if __name__ == "__main__":  # --help before torch, timm and Avalanche load
    print_kept_help("benchmarks.missing_runs", sys.argv[1:])

import numpy as np  # noqa: E402

from .machine_brief import (Report, covered_orders, methods_by_accuracy, present_reports, short_machine,
                            written)  # noqa: E402
from .reports import markdown_grid  # noqa: E402
from .run_folder import RunFolder  # noqa: E402


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


PER_RUN = ("--seeds", "--methods", "--run-id", "--resume")  # what a template command's run says of itself


def template(root: Path, report: Report) -> tuple[str, dict] | None:
    """The command and config of ``report``'s newest run folder (the last its sources.json lists) that trained on
    the report's machine with one run per class order (``--class-order seed``) and whose command runs as written
    (a path outside the checkout is stored as '...', :mod:`benchmarks.local_paths`); None: it has none."""
    from .orders import sources_of

    runs, _ = sources_of(Path(root) / report.path)
    for member in reversed(runs.members):
        config = member.config
        if (short_machine(member.machine) == report.machine and config.get("command")
                and config.get("class_order") == "seed" and "..." not in str(config["command"])):
            return str(config["command"]), config
    return None


def run_command(command: str, method: str, order: int, run_id: str) -> str:
    """``command`` with its own run's ``--seeds``, ``--methods``, ``--run-id`` and ``--resume`` replaced by one run
    of ``method`` on class order ``order`` (seed s is order s under ``--class-order seed``) named ``run_id``."""
    kept, dropping = [], False
    for word in shlex.split(command):
        if word.startswith("--"):
            dropping = word.split("=")[0] in PER_RUN
        if not dropping:
            kept.append(word)
    return shlex.join([*kept, "--seeds", str(order), "--methods", method, "--run-id", run_id])


def machine_slug(machine: str) -> str:
    """The short word a run id names a machine type by: 'Intel Xeon' -> 'xeon', 'NVIDIA H200' -> 'h200'."""
    words = machine.split()
    return (words[1] if len(words) > 1 else words[0]).lower()


def start_line(root: Path, out: str, protocol: str, run_id: str, fresh: str, minutes: str) -> str:
    """How run ``run_id`` goes on from where this checkout left it: ``fresh`` (the command that starts it) where
    ``<out>/<protocol>/<run_id>`` does not exist yet, its ``--resume`` where a session started it (a new start would
    be refused there, and the tasks it finished are kept), a comment where it finished and only waits to be
    published; ``minutes``: one run's wall minutes, said after it."""
    where = RunFolder.new(out, protocol, run_id).path  # the harness's one spelling of a run folder's path
    folder = RunFolder(Path(root) / where)  # an absolute --out stays itself
    if folder.is_done():
        return f"# {run_id}: finished in {where}; publish it (below)"
    if folder.has_config():
        return (f"python -m benchmarks.compare --resume {where} --quiet   # started here: goes on from its last "
                f"finished task with the run's own flags; minutes for a whole run: {minutes}")
    return f"{fresh}   # minutes: {minutes}"


def commands(root: Path, reports: Sequence[Report], machine: str | None = None, drift: str | None = None) -> str:
    """:func:`gaps` as the commands that fill them, machine by machine (``machine``: only those whose name holds
    it, case aside), each with one run's minutes (:func:`_minutes`) as a comment; then the commands that add each
    finished run to its report and to the ``drift`` report (:mod:`benchmarks.machine_drift`) where given.
    ``SystemExit`` for a ``machine`` no report trained on."""
    chosen = [r for r in reports if machine is None or machine.lower() in r.machine.lower()]
    if not chosen:
        raise SystemExit(f"error: --machine {machine}: no report's runs trained on such a machine; pass part of one "
                         f"of {', '.join(r.machine for r in reports)}")
    found, lines = gaps(reports), []
    for report in chosen:
        mine = [g for g in found if g.machine == report.machine]
        lines.append(f"# {report.machine} ({report.path}): {sum(len(g.orders) for g in mine)} runs"
                     + ("" if mine else "; every method has a finished run on every class order, nothing to start"))
        if not mine:
            continue
        made = template(root, report)
        if made is None:
            lines.append(f"# no run folder of it ran --class-order seed on {report.machine} alone with a command that "
                         "runs as written (a local path is stored as '...'): start these as results/README.md says its "
                         "runs were: " + "; ".join(f"{g.method} {' '.join(map(str, g.orders))}" for g in mine))
            continue
        command, config = made
        protocol = config.get("protocol", "PROTOCOL")
        words = shlex.split(command)
        out = dict(zip(words, words[1:])).get("--out", "runs")
        run_ids = []
        for gap in mine:
            for order in gap.orders:
                run_id = f"fair-{machine_slug(gap.machine)}-{gap.method}-{order}"
                run_ids.append(run_id)
                lines.append(start_line(root, out, protocol, run_id, run_command(command, gap.method, order, run_id),
                                        _minutes(gap)))
        results = str(Path(report.path).parent)
        lines += ["# as each RUN_ID finishes (one of " + ", ".join(run_ids) + "):",
                  f"python -m benchmarks.publish {RunFolder.new(out, protocol, 'RUN_ID').path} {results}/RUN_ID",
                  f"python -m benchmarks.orders --again {report.path} {results}/RUN_ID",
                  *([f"python -m benchmarks.machine_drift --again {drift} {results}/RUN_ID"] if drift else []),
                  "python -m benchmarks.headline   # then copy each report's new sources.json command into "
                  "results/README.md"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    """Print the commands that fill the tuned full-data tables' gaps (the reports ``benchmarks.headline`` shows)."""
    from . import headline
    from .compare import Parser

    p = Parser(prog="python -m benchmarks.missing_runs", description=__doc__.split("\n\n")[0])
    p.add_argument("--machine", help="only the machine types whose name holds this, case aside (e.g. xeon)")
    p.add_argument("--root", default=str(headline.ROOT), help="the checkout (default: this one)")
    args = p.parse_args(argv)
    root = Path(args.root)
    reports = present_reports(root, (headline.FAIR, *headline.FAIR_OTHERS))
    if not reports:
        raise SystemExit(f"error: no tuned full-data report is written under {root} yet ({headline.FAIR}); "
                         "write it with python -m benchmarks.orders")
    drift = headline.DRIFT if written(root, headline.DRIFT) else None
    text = commands(root, reports, args.machine, drift)
    print(text, end="")
    return text


if __name__ == "__main__":
    from .compare import cli

    sys.exit(cli(main=main))
