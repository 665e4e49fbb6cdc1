"""Whether a long task sequence collapses, and through what: ``python -m benchmarks.collapse RUN_DIR ... --out DIR``.

Independent papers report that SD-LoRA collapses as tasks grow (issue 32). This command reads the run folders of one
long-sequence experiment over class orders (``benchmarks.compare --n-experiences 20|50 --class-order seed``) and
writes into ``--out``:

* ``curve.csv``: per method, class order and experience, the seen-class accuracy (percent) and, for the methods
  that record them, the magnitudes' range, the update's norm and the head's row norms (past tasks' classes, newest
  task's); ``curve.png``/``.pdf``: the mean seen-class accuracy over the orders against the tasks learned (band:
  min to max over the orders);
* ``collapse.csv``: per method and order, the final accuracy, the largest drop of the seen-class accuracy from one
  task to the next (points, and after which task), the final accuracy minus the training-free baseline's on the
  same order (``--baseline``, SimpleCIL: the frozen backbone's class means), the magnitudes at the end (min, max),
  the update norm's growth (last / first), the head's newest-to-past row-norm ratio at the end, and the tasks KD
  folded into old magnitudes;
* ``table.md``: the same per method (mean over orders), with the verdict.

* with ``--probe`` (run folders that still hold their last checkpoints, i.e. not the committed copies), and in every
  later call from the ``probe.csv`` it keeps: whether what a method lost lies in its features or in its head
  (:mod:`benchmarks.feature_probe`: SimpleCIL's classifier on the method's final backbone against the pretrained
  one, and the share of test images its head gives the newest task).

Verdict, one definition: a method **collapses** on an order when its final seen-class accuracy is below the
baseline's on that order, i.e. training left it worse than not training at all. The columns beside it say
through what: magnitudes running away or to zero, an update whose norm keeps growing, or a head whose newest rows
outgrow the old ones (the classifier favouring the last task).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from .commands import print_kept_help

if __name__ == "__main__":  # --help before torch, timm and Avalanche load
    print_kept_help("benchmarks.collapse", sys.argv[1:])

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from avalanche_sdlora.atomic import write_text  # noqa: E402

from . import feature_probe  # noqa: E402
from .methods import method_names  # noqa: E402
from .reports import magnitudes, markdown_grid, method_style, run_records, save_figure  # noqa: E402
from .orders import machine_notes, machine_tags  # noqa: E402
from .run_set import ORDER_KEYS, RunSet, add_take_argument, one_run_per_order, taking  # noqa: E402

DEFAULT_BASELINE = "simplecil"
KEYS = ["method", "class_order_seed", "experience"]


def finished_rows(rows: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The rows of runs that reached their last task, and a label per run left out (method, order, tasks done):
    an unfinished run's last accuracy is not a final one, so it gets no verdict and no curve. ``rows`` hold one run
    per (method, order) (:func:`~benchmarks.run_set.one_run_per_order`): the curves pool rows by that key."""
    by = ["method", "seed", "run"] if "run" in rows else ["method", "seed"]
    runs = run_records(rows, by).set_index(by)  # its ``finished``: the one definition every report uses
    stopped = runs.index[~runs["finished"]]
    keep = ~pd.MultiIndex.from_frame(rows[by]).isin(stopped)
    tasks = rows[~keep].groupby(by, sort=False).agg(done=("experience", "max"), n=("n_experiences", "max"),
                                                   order=("class_order_seed", "first"))
    labels = [f"{key[0]} order {r.order} ({r.done + 1} of {r.n} tasks)" for key, r in tasks.iterrows()]
    return rows[keep], labels


def curves(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (method, order, experience): seen-class accuracy in percent and the mechanism's state after it."""
    out = rows.sort_values(KEYS)[KEYS].copy()
    out["acc_seen_pct"] = 100 * rows.loc[out.index, "acc_seen"].astype(float)
    long = magnitudes(rows)  # the magnitudes' strings read once, as magnitudes.csv holds them
    span = long.groupby(KEYS)["alpha"].agg(["min", "max"]) if len(long) else pd.DataFrame(columns=["min", "max"])
    at = list(zip(*(out[k] for k in KEYS)))
    out["alpha_min"] = [span["min"].get(k, np.nan) for k in at]
    out["alpha_max"] = [span["max"].get(k, np.nan) for k in at]
    for column in ("update_norm", "head_row_norm_past", "head_row_norm_newest"):
        out[column] = rows.loc[out.index, column].astype(float) if column in rows else np.nan
    out["kd_absorbed"] = rows.loc[out.index, "kd_absorbed"] if "kd_absorbed" in rows else np.nan
    return out.reset_index(drop=True)


def collapse_table(curve: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Per (method, order): the final accuracy, the largest one-task drop, the gap to ``baseline``, the state at the
    end, and the verdict (final accuracy below the baseline's on the same order)."""
    final_base = (curve[curve["method"] == baseline].groupby("class_order_seed")["acc_seen_pct"].last()
                  if baseline in set(curve["method"]) else pd.Series(dtype=float))
    out = []
    for (method, order), g in curve.groupby(["method", "class_order_seed"], sort=False):
        acc = g["acc_seen_pct"].to_numpy()
        drops = acc[:-1] - acc[1:]  # positive: the seen-class accuracy fell when the next task was learned
        worst = int(np.argmax(drops)) if len(drops) else -1
        last, first_norm = g.iloc[-1], g["update_norm"].iloc[0]
        gap = acc[-1] - final_base[order] if order in final_base.index else np.nan
        absorbed = g["kd_absorbed"]
        out.append({
            "method": method, "class_order_seed": order, "tasks": len(g), "final_acc_pct": acc[-1],
            "largest_drop_pts": drops[worst] if len(drops) else np.nan,
            "largest_drop_after_task": worst + 1 if len(drops) else np.nan,  # tasks learned before the drop
            "minus_baseline_pts": gap, "collapses": bool(gap < 0) if np.isfinite(gap) else None,
            "alpha_min_final": last["alpha_min"], "alpha_max_final": last["alpha_max"],
            "update_norm_growth": last["update_norm"] / first_norm if first_norm else np.nan,
            "head_newest_to_past": last["head_row_norm_newest"] / last["head_row_norm_past"],
            "kd_absorbed_tasks": int(absorbed.astype(bool).sum()) if absorbed.notna().any() else np.nan,
        })
    rank = {m: k for k, m in enumerate(method_names())}
    table = pd.DataFrame.from_records(out)
    return table.assign(_r=table["method"].map(rank)).sort_values(["_r", "class_order_seed"]).drop(columns="_r")


def _mean(values: pd.Series, fmt: str) -> str:
    v = values.astype(float)
    return "n/a" if v.isna().all() else fmt.format(v.mean())


def markdown(table: pd.DataFrame, baseline: str, probed: pd.DataFrame | None = None) -> str:
    """Per method, means over its orders, and on how many orders it collapses; with ``probed`` (feature_probe's
    rows), a second table: where the accuracy went."""
    rows = []
    for method, g in table.groupby("method", sort=False):
        verdicts = [v for v in g["collapses"] if v is not None]
        verdict = "n/a (no baseline)" if not verdicts else f"{sum(verdicts)} of {len(verdicts)}"
        rows.append([method, f"{int(g['tasks'].max())}", _mean(g["final_acc_pct"], "{:.2f}"),
                     _mean(g["minus_baseline_pts"], "{:+.2f}"), verdict, _mean(g["largest_drop_pts"], "{:.2f}"),
                     _mean(g["alpha_min_final"], "{:.3g}") + " / " + _mean(g["alpha_max_final"], "{:.3g}"),
                     _mean(g["update_norm_growth"], "{:.2f}"), _mean(g["head_newest_to_past"], "{:.2f}"),
                     _mean(g["kd_absorbed_tasks"], "{:.1f}")])
    head = ["method", "tasks", "Acc (%)", f"minus {baseline} (pts)", "collapses (orders)", "largest one-task drop (pts)",
            "alpha min / max at the end", "update norm, last / first", "head rows, newest / past", "KD absorbed"]
    orders = ", ".join(map(str, sorted(table["class_order_seed"].unique())))
    tasks = "/".join(map(str, sorted(table["tasks"].astype(int).unique())))
    text = (f"{tasks} tasks, class orders {orders}; means over the orders. A method collapses on an order when its "
            f"final seen-class accuracy is below {baseline}'s (the frozen backbone's class means) on that order. "
            "n/a: the method does not record that quantity.\n\n" + markdown_grid(head, rows) + "\n")
    if probed is not None and len(probed):
        text += "\n" + probe_markdown(probed)
    return text


def probe_markdown(probed: pd.DataFrame) -> str:
    """feature_probe's rows per method (means over the orders probed): its own head, SimpleCIL's classifier on its
    final backbone and on the pretrained one, the newest task's share of its predictions."""
    rows = []
    rank = {m: k for k, m in enumerate(method_names())}
    for method, g in sorted(probed.groupby("method"), key=lambda t: rank.get(t[0], len(rank))):
        m = g.mean(numeric_only=True)
        where = sorted({feature_probe.verdict(r) for _, r in g.iterrows()})
        rows.append([method, ", ".join(map(str, sorted(g["class_order_seed"]))), f"{m['run_acc_pct']:.2f}",
                     f"{m['own_head_acc_pct']:.2f}", f"{m['prototype_acc_pct']:.2f}",
                     f"{m['frozen_prototype_acc_pct']:.2f}",
                     f"{m['newest_task_predictions_pct']:.1f} (of {m['newest_task_share_pct']:.1f})",
                     _head_split(g), " / ".join(where)])
    head = ["method", "orders probed", "Acc, run (%)", "Acc, its head recomputed (%)",
            "class means on its final backbone (%)", "class means on the pretrained backbone (%)",
            "test images given to the newest task (%)", "its head: right task / right class within the task (%)",
            "what lost the accuracy"]
    return ("Where the accuracy went (`benchmarks.feature_probe`, from the runs' last checkpoints): SimpleCIL's "
            "classifier (cosine to class means of the training images) on each method's final backbone against the "
            "pretrained one. Class means on its backbone at or above the pretrained one's: its features still hold "
            "every class and the loss is in its head; below: the features drifted. Its head's two jobs: the share "
            "of test images it predicts inside their own task's classes, and its accuracy when restricted to them "
            "(task-incremental); cross-entropy on the current task's classes trains only the second.\n\n" + markdown_grid(head, rows) + "\n")


def _head_split(g: pd.DataFrame) -> str:
    """The head's two jobs (feature_probe's ``head_task_pct`` / ``head_within_task_pct``), means over the orders;
    n/a for rows probed before the probe recorded them (0.4.4 and earlier)."""
    cols = ["head_task_pct", "head_within_task_pct"]
    if not set(cols) <= set(g.columns) or g[cols].isna().any().any():
        return "n/a"
    return f"{g['head_task_pct'].mean():.2f} / {g['head_within_task_pct'].mean():.2f}"


def plot(curve: pd.DataFrame, path: Path) -> None:
    """Mean seen-class accuracy over the orders against the tasks learned, a band from min to max over the orders."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for method, g in curve.groupby("method", sort=False):
        by = g.groupby("experience")["acc_seen_pct"]
        x = np.array(sorted(g["experience"].unique())) + 1
        style = method_style(method)
        ax.plot(x, by.mean().to_numpy(), label=method, ms=3, markevery=max(1, len(x) // 10), **style)
        ax.fill_between(x, by.min().to_numpy(), by.max().to_numpy(), color=style["color"], alpha=0.12, lw=0)
    ax.set_xlabel("tasks learned")
    ax.set_ylabel("seen-class accuracy (%)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    n = curve["class_order_seed"].nunique()
    ax.set_title(f"seen-class accuracy over a long sequence (mean, band min-max over {n} class order(s))", fontsize=9)
    save_figure(fig, path, pdf=True)


def write(runs: RunSet, out: str | Path, baseline: str = DEFAULT_BASELINE, probe: bool = False,
          probe_methods: Sequence[str] | None = None) -> Path:
    """Check the folders ran one experiment (class order aside) and write the report into ``out``; ``probe``: probe
    the folders' last checkpoints first (:mod:`benchmarks.feature_probe`, rows kept in ``out/probe.csv``), only
    those of ``probe_methods`` when given (a probe costs minutes per run; rows already kept stay)."""
    runs.check(free=ORDER_KEYS, pooled=True)
    rows, _, superseded = one_run_per_order(runs.rows())
    rows, unfinished = finished_rows(rows)
    curve = curves(rows)
    table = collapse_table(curve, baseline)
    # where each run trained (a folder has one machine: a resume is refused on another): a verdict compares a run
    # with the baseline's on the same order, which is a within-machine difference only if both trained there
    machine = runs.machines()
    run_of = rows.groupby(["method", "class_order_seed"])["run"].first()
    table["machine"] = [machine[run_of[(m, o)]] for m, o in zip(table["method"], table["class_order_seed"])]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    folder_of = {m.label: m.folder.path for m in runs.members}
    taken = {(folder_of[r], m, int(s)) for m, s, r in rows[["method", "seed", "run"]].drop_duplicates().itertuples(
        index=False)}  # the runs the table holds: --take and the one-run rule apply to the probe too
    probed = (feature_probe.probe([m.folder for m in runs.members], out, probe_methods, taken) if probe
              else feature_probe.read(out))
    if probed is not None and len(probed):  # rows kept from earlier calls, of runs this table holds
        held = pd.MultiIndex.from_frame(table[["method", "class_order_seed"]])
        probed = probed[pd.MultiIndex.from_frame(probed[["method", "class_order_seed"]]).isin(held)]
    write_text(out / "curve.csv", curve.to_csv(index=False))
    write_text(out / "collapse.csv", table.to_csv(index=False))
    text = markdown(table, baseline, probed)
    done = table.assign(finished=True)  # the table holds finished runs only
    notes = machine_notes(done, machine_tags(done), compared="its verdicts", wall=False)
    if superseded:
        notes.append("Unfinished runs left out, another folder finished the same method and order: "
                     + ", ".join(superseded) + ".")
    if notes:
        text += "\n" + "\n".join(notes) + "\n"
    if unfinished:  # a verdict compares final accuracies: a run still going (or stopped) has none yet
        text += "\nUnfinished runs left out: " + ", ".join(unfinished) + ".\n"
    write_text(out / "table.md", text)
    plot(curve, out / "curve.png")
    return out


def main(argv: list[str] | None = None) -> Path:
    from .compare import Parser

    p = Parser(prog="python -m benchmarks.collapse", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders of one long-sequence experiment")
    p.add_argument("--out", required=True, help="report folder (results/<protocol>/... for the README's)")
    p.add_argument("--baseline", default=DEFAULT_BASELINE,
                   help=f"the training-free method a collapse is judged against (default: {DEFAULT_BASELINE})")
    add_take_argument(p)
    p.add_argument("--probe", nargs="*", metavar="METHOD",
                   help="also probe the RUN_DIRs' last checkpoints: SimpleCIL's classifier on each SD-LoRA-built "
                        "model's final backbone (features or head?), or only on those of the METHODs named; kept "
                        "in <out>/probe.csv for later calls")
    args = p.parse_args(argv)
    unknown = sorted(set(args.probe or ()) - set(method_names()))
    if unknown:
        p.error(f"--probe: unknown method(s) {unknown}; choose from {', '.join(method_names())}")
    out = write(RunSet.read(taking(args.runs, args.take)), args.out, args.baseline, probe=args.probe is not None,
                probe_methods=args.probe or None)
    print((out / "table.md").read_text() + f"\nwritten to {out}")
    return out


if __name__ == "__main__":
    from .compare import cli

    sys.exit(cli(main=main))
