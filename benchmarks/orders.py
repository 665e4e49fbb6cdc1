"""Results over class orders: ``python -m benchmarks.orders RUN_DIR [RUN_DIR ...] --out results/<protocol>/...``.

The paper's spread is over class orders (seed s: ``numpy.random.seed(s); permutation(n)``), so a difference
between two methods means something only if it survives a change of order. This command gathers the rows of
one or several run folders of one protocol (a ``--class-order seed`` run, or fixed-order runs with one
``--class-order-seed`` each: the same experiment), one run per (method, class order), and writes into ``--out``:

* ``orders.csv``: per method and order, Acc, AAA, forgetting, BWT, the seed, the run folder it came from and the
  machine it trained on (wall time is then given per machine, and an order whose runs come from several
  machines is named under the table: paired differences across machines carry the machines' own 1-2 points);
* ``orders_summary.csv``: per method, mean and sample std (ddof=1) over orders;
* ``paired.csv``: per method and order, the reference method (``--reference``, SD-LoRA) minus that method;
* ``paired_summary.csv``: per method, the mean and std of that paired difference and the orders the reference wins;
* accuracy-like columns of these CSVs in percent (``_pct``), differences in percentage points (``_pts``)
  (:mod:`benchmarks.units`), as the table shows them;
* ``table.md`` (what the class-order table of docs/results.md is, via ``python -m benchmarks.headline``), ``brief.md``
  (its short form; the project README shows the reports of several machine types side by side,
  :mod:`benchmarks.machine_brief`), ``orders.png`` and ``sources.json`` (the
  folders, relative to ``--out``, and the reference: what regenerates the rest).

Folders whose settings differ other than by class order are refused naming the setting
(:mod:`benchmarks.run_set`); an unfinished run gives way to a finished one of the same method and order in
another folder (named under the table); each row's class order is its ``class_order_seed`` column (a folder written before
rows recorded it is converted once by ``python -m benchmarks.migrate``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .commands import print_kept_help

if __name__ == "__main__":  # --help before torch, timm and Avalanche load
    print_kept_help("benchmarks.orders", sys.argv[1:])

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from avalanche_sdlora.atomic import remove_stale_temps, remove_temps_on_termination, write_text  # noqa: E402

from . import predictions  # noqa: E402
from .config import RunConfig  # noqa: E402
from .methods import get_method, method_names  # noqa: E402
from .reports import markdown_grid, method_style, save_figure  # noqa: E402
from .run_folder import RunLock  # noqa: E402
from .run_set import (ORDER_KEYS, RunSet, add_again_argument, add_take_argument, check_again,  # noqa: E402
                      one_run_per_order, taking)
from .units import DECIMALS, in_file_units  # noqa: E402

DEFAULT_REFERENCE = "sdlora"
SOURCES = "sources.json"
TABLES = ("orders.csv", "orders_summary.csv", "paired.csv", "paired_summary.csv", "table.md", "brief.md")


def recipe_label(config: dict, method: str) -> str:
    """The optimizer, lr and where they came from (reference, protocol, tuned, ...) that ``method`` trained with in
    the run whose config.json is ``config``; a folder from before config.json recorded them gets what its settings
    give the method's recipe trait (the same function compare records them from)."""
    recorded = (config.get("recipes") or {}).get(method)
    if recorded is None:
        recorded = vars(get_method(method).recipe(RunConfig.from_json(config)))
    if recorded["optimizer"] is None:
        return "no training"
    return f"{recorded['optimizer']} {recorded['lr']:g} ({recorded['source']})"


def order_runs(runs: RunSet) -> pd.DataFrame:
    """One record per (method, class order): its run's Acc, AAA, forgetting, BWT and where it came from."""
    rows, records, superseded = one_run_per_order(runs.rows())
    rank = {m: k for k, m in enumerate(method_names())}
    records = records.assign(_r=records["method"].map(rank)).sort_values(["_r", "class_order_seed"])
    tasks = rows.groupby(["method", "class_order_seed"])["n_experiences"].max()
    records["inference_backbones"] = [get_method(m).backbones_per_image(int(tasks[(m, o)]))
                                      for m, o in zip(records["method"], records["class_order_seed"])]
    # DualPrompt's share of test images given their own task's E-prompt after the run's last experience
    last = rows.sort_values("experience").groupby(["method", "class_order_seed"]).tail(1)
    own = (last.set_index(["method", "class_order_seed"])["own_prompt_fraction"]
           if "own_prompt_fraction" in last else pd.Series(dtype=float))
    records["own_prompt"] = [own.get((m, o), np.nan) for m, o in zip(records["method"], records["class_order_seed"])]
    configs = {m.label: m.config for m in runs.members}
    records["recipe"] = [recipe_label(configs[r], m) for m, r in zip(records["method"], records["run"])]
    # where each run trained: a resume is refused on another machine type, so a folder has one
    records["machine"] = records["run"].map(runs.machines())
    cols = ["method", "class_order_seed", "seed", "acc", "aaa", "forgetting", "bwt", "finished", "recipe",
            "stored_params", "inference_backbones", "own_prompt", "train_seconds", "eval_seconds", "machine", "run"]
    out = records[cols].reset_index(drop=True)
    out.attrs["superseded"] = superseded
    out.attrs["predictions"] = _kept_predictions(runs, out, rows)
    return out


def _kept_predictions(runs: RunSet, records: pd.DataFrame, rows: pd.DataFrame) -> dict[tuple[str, int], object]:
    """Each finished run's per-image predictions after its last experience, where it kept them (paired bounds); a
    file that does not score its run's Acc after that experience is refused, naming it (another run's, or edited)."""
    folders = {m.label: m.folder for m in runs.members}
    last = rows.groupby(["method", "seed", "run"])["experience"].max()
    kept = {}
    for r in records[records["finished"]].itertuples():
        path = folders[r.run].predictions(r.method, r.seed)
        if path.exists():
            kept[(r.method, r.class_order_seed)] = predictions.load_of_run(path, last[(r.method, r.seed, r.run)], r.acc)
    return kept


def seconds_by_machine(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean train and eval seconds of ``runs`` (one method's finished runs) per machine, in order of appearance: wall
    time means something on one machine only, so a method run on several gets a mean per machine."""
    return runs.groupby("machine", sort=False)[["train_seconds", "eval_seconds"]].mean()


def summarize_orders(orders: pd.DataFrame) -> pd.DataFrame:
    """Per method: mean and sample std over its finished orders; unfinished runs are counted, not averaged."""
    out = []
    for method, every in orders.groupby("method", sort=False):
        g = every[every["finished"]]
        by_machine = seconds_by_machine(g)
        one = len(by_machine) <= 1
        out.append({"method": method, "acc_mean": g["acc"].mean(), "acc_std": g["acc"].std(ddof=1),
                    "aaa_mean": g["aaa"].mean(), "aaa_std": g["aaa"].std(ddof=1),
                    "forgetting_mean": g["forgetting"].mean(), "forgetting_std": g["forgetting"].std(ddof=1),
                    "n_orders": len(g), "n_unfinished": len(every) - len(g),
                    # costs: what a reader weighs against accuracy (stored state after the last task, backbones'
                    # worth of blocks per test image then, and wall time per run on the machines the footnote names)
                    "recipe": "; ".join(dict.fromkeys(every["recipe"])), "own_prompt_mean": g["own_prompt"].mean(),
                    "stored_params": every["stored_params"].max(), "inference_backbones": every["inference_backbones"].max(),
                    "train_seconds_mean": g["train_seconds"].mean() if one else np.nan,
                    "eval_seconds_mean": g["eval_seconds"].mean() if one else np.nan,
                    "seconds_by_machine": "; ".join(f"{m}: train {r.train_seconds:.0f}, eval {r.eval_seconds:.0f}"
                                                    for m, r in by_machine.iterrows()),
                    "machines": "; ".join(dict.fromkeys(g["machine"])),
                    "orders": " ".join(map(str, g["class_order_seed"])), "runs": " ".join(dict.fromkeys(every["run"]))})
    return pd.DataFrame.from_records(out)


def paired(orders: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Per method and class order both finished: the reference's Acc, AAA, forgetting minus the method's, and where
    both runs wrote their predictions, twice the paired standard error of the Acc difference on that order's test
    images (``acc_diff_bound``, :func:`benchmarks.predictions.paired_difference`; NaN otherwise)."""
    done = orders[orders["finished"]]
    ref = done[done["method"] == reference].set_index("class_order_seed")
    found = orders.attrs.get("predictions", {})
    out = []
    for method, g in done[done["method"] != reference].groupby("method", sort=False):
        for _, r in g.iterrows():
            order = r["class_order_seed"]
            if order not in ref.index:
                continue
            q = ref.loc[order]
            out.append({"method": method, "class_order_seed": order, "reference": reference,
                        **{f"{k}_{suffix}": v for k in ("acc", "aaa", "forgetting")
                           for suffix, v in (("reference", q[k]), ("method", r[k]), ("diff", q[k] - r[k]))},
                        "acc_diff_bound": _paired_bound(found.get((reference, order)), found.get((method, order)),
                                                        f"{reference} and {method} on class order {order}")})
    cols = ["method", "class_order_seed", "reference"] + [f"{k}_{s}" for k in ("acc", "aaa", "forgetting")
                                                          for s in ("reference", "method", "diff")] + ["acc_diff_bound"]
    return pd.DataFrame.from_records(out, columns=cols)


def _paired_bound(reference, method, where: str) -> float:
    """Twice the paired standard error of the reference's Acc minus the method's on one order (NaN: a run kept no
    predictions); two runs not scored on the same test images are refused (``where`` names them)."""
    if reference is None or method is None:
        return np.nan
    try:
        return predictions.paired_difference(reference, method).bound
    except ValueError as exc:
        raise SystemExit(f"error: {where}: {exc}") from None


def summarize_paired(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per method: mean and std over orders of the paired difference, and the orders the reference wins."""
    out = []
    for method, g in pairs.groupby("method", sort=False):
        row = {"method": method, "reference": g["reference"].iloc[0], "n_orders": len(g)}
        for k in ("acc", "aaa"):  # AAA is n/a for a method trained once on the whole stream (joint)
            d = g[f"{k}_diff"].dropna()
            row.update({f"{k}_diff_mean": d.mean(), f"{k}_diff_std": d.std(ddof=1), f"{k}_orders": len(d),
                        f"{k}_wins": int((d > 0).sum()), f"{k}_ties": int((d == 0).sum())})
        # orders whose Acc difference has a paired bound, and those where it exceeds it (either sign)
        bounded = g[g["acc_diff_bound"].notna()]
        row.update({"n_acc_bounded": len(bounded),
                    "n_acc_resolved": int((bounded["acc_diff"].abs() > bounded["acc_diff_bound"]).sum())})
        out.append(row)
    return pd.DataFrame.from_records(out)


def _pm(mean: float, std: float, sign: bool = False) -> str:
    """A fraction's mean ± std in percent (points), from the same rounded value the CSVs hold, so a table's cell
    and its CSV read alike (a mean of 0.67275 is 67.27499999999999 times 100: 67.275 in the CSV, 67.28 here)."""
    if np.isnan(mean):
        return "n/a"
    fmt = "{:+.2f}" if sign else "{:.2f}"
    return fmt.format(round(100 * mean, DECIMALS)) + ("" if np.isnan(std) else f" ± {round(100 * std, DECIMALS):.2f}")


def _minutes(seconds: float) -> str:
    return "n/a" if np.isnan(seconds) else f"{seconds / 60:.1f}"


def machine_tags(orders: pd.DataFrame) -> dict[str, str]:
    """A letter per machine the finished runs trained on (A, B, ... in order of appearance); none for one machine,
    so a single-machine table reads as before."""
    machines = list(dict.fromkeys(orders.loc[orders["finished"], "machine"]))
    return {} if len(machines) <= 1 else {m: chr(ord("A") + k) for k, m in enumerate(machines)}


def _minutes_by_machine(runs: pd.DataFrame, column: str, tags: dict[str, str]) -> str:
    """Mean wall minutes of ``runs`` (one method's finished runs) per machine, tagged: '87.4 (A) / 0.7 (B)'."""
    means = seconds_by_machine(runs)[column]
    return " / ".join(f"{_minutes(v)} ({tags[m]})" for m, v in means.items()) if len(means) else "n/a"


def machine_notes(orders: pd.DataFrame, tags: dict[str, str], compared: str = "its paired differences",
                  wall: bool = True) -> list[str]:
    """The machines behind the tags with the orders each ran, and every order whose runs trained on several machines
    (``compared``, what a table compares within an order, then crosses machines, which moves a trained run by a point
    or two on its own); ``wall``: the table gives wall minutes, tagged per machine."""
    if not tags:
        return []
    done = orders[orders["finished"]]
    where = [f"{tag} = {m} (order{'s' if len(o) > 1 else ''} {', '.join(map(str, o))})"
             for m, tag in tags.items()
             for o in [sorted(done.loc[done["machine"] == m, "class_order_seed"].unique())]]
    notes = ["Machines: " + "; ".join(where) + "."
             + (" Wall minutes are per machine (tagged); they compare within one." if wall else "")]
    for order, g in done.groupby("class_order_seed"):
        if g["machine"].nunique() > 1:
            parts = [f"{', '.join(h['method'])} on {tags[m]}" for m, h in g.groupby("machine", sort=False)]
            notes.append(f"Order {order} mixes machines ({'; '.join(parts)}): {compared} compare runs "
                         "from different machines.")
    return notes


def _order_cell(cell: dict, method: str, order: int) -> str:
    """One method's Acc on one class order as both tables show it: "–" not run, "unfinished", else the percent."""
    r = cell.get((method, order))
    return "–" if r is None else f"{100 * r['acc']:.2f}" if r["finished"] else "unfinished"


def _diff_cell(pair: pd.Series) -> str:
    """One order's Acc difference in points, with its paired bound where both runs kept their predictions."""
    bound = pair["acc_diff_bound"]
    return f"{100 * pair['acc_diff']:+.2f}" + ("" if np.isnan(bound) else f" ± {100 * bound:.2f}")


def _wins(p: pd.Series, k: str) -> str:
    n, wins, ties = int(p[f"{k}_orders"]), int(p[f"{k}_wins"]), int(p[f"{k}_ties"])
    return "n/a" if n == 0 else f"{wins} of {n}" + (f" ({ties} tied)" if ties else "")


def markdown(orders: pd.DataFrame, summary: pd.DataFrame, pairs: pd.DataFrame, pair_summary: pd.DataFrame,
             reference: str, where: dict[str, str], notes: list[str]) -> str:
    """The class-order tables: per method over orders, then the reference minus each method per order."""
    all_orders = sorted(orders["class_order_seed"].unique())
    by = summary.sort_values("acc_mean", ascending=False, na_position="last")
    cell = {(r["method"], r["class_order_seed"]): r for _, r in orders.iterrows()}
    tags = machine_tags(orders)
    done = orders[orders["finished"]]

    def minutes(r: pd.Series, column: str) -> str:
        if not tags:
            return _minutes(r[f"{column}_mean"])
        return _minutes_by_machine(done[done["method"] == r["method"]], column, tags)


    rows = []
    for _, r in by.iterrows():
        n = f"{int(r['n_orders'])}" + (f" (+{int(r['n_unfinished'])} unfinished)" if r["n_unfinished"] else "")
        rows.append([r["method"], _pm(r["acc_mean"], r["acc_std"]), _pm(r["aaa_mean"], r["aaa_std"]),
                     _pm(r["forgetting_mean"], r["forgetting_std"])]
                    + [_order_cell(cell, r["method"], o) for o in all_orders]
                    + [n, r["recipe"], f"{r['inference_backbones']:g}", f"{r['stored_params'] / 1e6:.2f}",
                       minutes(r, "train_seconds"), minutes(r, "eval_seconds"), ", ".join(r["runs"].split())])
    head = ["method", "Acc (%)", "AAA (%)", "forgetting"] + [f"Acc, order {o}" for o in all_orders] + [
        "orders", "recipe", "backbones / image", "stored (M params)", "train min / run", "eval min / run", "runs"]
    text = [f"Class orders {', '.join(map(str, all_orders))} (seed s: `numpy.random.seed(s); permutation(n)`), one "
            "run per method and order; accuracies in %, mean ± sample std over the orders a method finished. "
            "Recipe: the optimizer and learning rate each method trained with, and their source. "
            "Costs: backbones' worth of transformer blocks per test image after the last task (passes through the ViT; "
            "CL-LoRA runs its later half once per task), parameters stored then (head, "
            "adapters, prompts, class statistics: what the method keeps beyond the frozen backbone), and wall "
            "minutes per run (mean over finished orders; one torch thread, on the machines and under the load the "
            "runs' config.json record, so they compare within a machine only).",
            markdown_grid(head, rows)]
    diff = {(r["method"], r["class_order_seed"]): r for _, r in pairs.iterrows()}
    bounded = bool(len(pairs)) and bool(pairs["acc_diff_bound"].notna().any())
    prow = []
    ps = pair_summary.set_index("method") if len(pair_summary) else pair_summary
    for method in by["method"]:
        if method == reference or method not in ps.index:
            continue
        p = ps.loc[method]
        per = ["–" if (method, o) not in diff else _diff_cell(diff[(method, o)]) for o in all_orders]
        ahead = _wins(p, "acc") + (f"; beyond ± on {int(p['n_acc_resolved'])} of {int(p['n_acc_bounded'])}"
                                   if bounded and p["n_acc_bounded"] else "")
        prow.append([method, _pm(p["acc_diff_mean"], p["acc_diff_std"], sign=True)] + per
                    + [ahead, _pm(p["aaa_diff_mean"], p["aaa_diff_std"], sign=True), _wins(p, "aaa")])
    text += [f"{reference} minus each method on the same class order, in points (positive: {reference} ahead); "
             "mean ± sample std over the orders both finished, and on how many of them it is ahead."
             + (" ± after one order's difference: twice its paired standard error over that order's test images "
                "(from the images exactly one of the two classifies right, `predictions/` of both runs), and on how "
                "many of those orders the difference exceeds it; no ± where a run kept no predictions."
                if bounded else ""),
             markdown_grid(["method", "Acc diff", *(f"order {o}" for o in all_orders), f"{reference} ahead (Acc)",
                            "AAA diff", f"{reference} ahead (AAA)"], prow)]
    foot = ["Runs: " + ", ".join(f"`{label}` = `{path}`" for label, path in where.items()) + "."]
    other = orders[orders["seed"] != orders["class_order_seed"]]
    if len(other):
        foot.append("Runs whose seed is not their class order: "
                    + ", ".join(f"{r.method} order {r.class_order_seed} (seed {r.seed}, {r.run})"
                                for r in other.itertuples()) + ".")
    for _, r in by[by["own_prompt_mean"].notna()].iterrows():
        foot.append(f"{r['method']}: key matching gave {100 * r['own_prompt_mean']:.1f} % of the test images (every "
                    "task, after the last one) their own task's prompt, mean over orders (`own_prompt_fraction`).")
    foot += machine_notes(orders, tags)
    if orders.attrs.get("superseded"):
        foot.append("Unfinished runs left out, another folder finished the same method and order: "
                    + ", ".join(orders.attrs["superseded"]) + ".")
    if notes:
        foot.append("Settings that differ between the runs:\n\n" + "\n".join(f"- {n}." for n in notes))
    return "\n\n".join(part.rstrip("\n") for part in text + foot) + "\n"


def brief(orders: pd.DataFrame, summary: pd.DataFrame, pair_summary: pd.DataFrame, reference: str,
          table_at: str) -> str:
    """The short form of :func:`markdown` that the project README leads its results with: per method the accuracy
    over orders, each order's, the recipe and the paired difference, in the same order and numbers as
    ``table.md`` (``table_at``: where that is, for everything else)."""
    all_orders = sorted(orders["class_order_seed"].unique())
    cell = {(r["method"], r["class_order_seed"]): r for _, r in orders.iterrows()}
    ps = pair_summary.set_index("method") if len(pair_summary) else pair_summary
    rows = []
    for _, r in summary.sort_values("acc_mean", ascending=False, na_position="last").iterrows():
        per = [_order_cell(cell, r["method"], o) for o in all_orders]
        if r["method"] == reference or r["method"] not in ps.index:
            diff = "–"
        else:
            p = ps.loc[r["method"]]
            diff = f"{_pm(p['acc_diff_mean'], p['acc_diff_std'], sign=True)} (ahead {_wins(p, 'acc')})"
        rows.append([r["method"], _pm(r["acc_mean"], r["acc_std"]), *per, r["recipe"], diff])
    head = ["method", "Acc (%)", *(f"order {o}" for o in all_orders), "recipe", f"{reference} minus it (points)"]
    machines = list(dict.fromkeys(orders.loc[orders["finished"], "machine"]))
    legend = (f"Acc: accuracy on every class seen, after the last task, mean ± sample std over the class orders a "
              f"method finished (unfinished: stopped before its last task; –: not run); recipe: the optimizer and "
              f"learning rate it trained with and where they came from; last column: {reference} minus the method "
              f"on the same orders, and on how many {reference} is ahead. Trained on {' and '.join(machines)}. AAA, "
              f"forgetting, costs and every note: `{table_at}`.")
    return markdown_grid(head, rows).rstrip("\n") + "\n\n" + legend + "\n"


def plot(orders: pd.DataFrame, pairs: pd.DataFrame, reference: str, path: Path) -> None:
    """Acc per class order (a line per method) and the paired difference per method (a point per order)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = orders[orders["finished"]]
    all_orders = sorted(done["class_order_seed"].unique())
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for method, g in done.groupby("method", sort=False):
        left.plot([all_orders.index(o) for o in g["class_order_seed"]], 100 * g["acc"], ms=4, label=method,
                  **method_style(method))  # one (colour, marker) per method, as in every plot of the harness
    left.set_xticks(range(len(all_orders)), [str(o) for o in all_orders])
    left.set_xlabel("class order (seed)")
    left.set_ylabel("final accuracy Acc (%)")
    left.grid(alpha=0.3)
    left.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    methods = list(dict.fromkeys(pairs["method"]))
    for k, method in enumerate(methods):
        d = 100 * pairs.loc[pairs["method"] == method, "acc_diff"].to_numpy()
        right.plot(np.full(len(d), k), d, "o", color="C0", alpha=0.7)
        right.plot([k - 0.25, k + 0.25], [d.mean()] * 2, color="C3")
    right.axhline(0, color="k", lw=0.8)
    right.set_xticks(range(len(methods)), methods, rotation=30)
    right.set_ylabel(f"{reference} minus method, Acc (points)")
    right.set_title("points: class orders; bar: mean", fontsize=9)
    right.grid(alpha=0.3)
    save_figure(fig, path, pdf=True)


def shown_paths(runs: RunSet, out: str | Path) -> dict[str, str]:
    """Each run's folder as a table names it: relative to the checkout holding ``out`` (else absolute), so the
    table reads the same whatever directory the command ran from."""
    return {m.label: _shown(m.folder.path, out) for m in runs.members}


def _shown(path: str | Path, out: str | Path) -> str:
    """``path`` relative to the checkout holding ``out`` (else absolute)."""
    out, path = Path(out).resolve(), Path(path).resolve()
    root = next((d for d in (out, *out.parents) if (d / ".git").exists()), None)
    return str(path.relative_to(root)) if root is not None and path.is_relative_to(root) else str(path)


def build(runs: RunSet, out: str | Path, reference: str = DEFAULT_REFERENCE
          ) -> tuple[dict[str, str], pd.DataFrame, pd.DataFrame]:
    """The text of every table of the report to be written into ``out`` (name -> content), and the frames the
    plot draws."""
    notes = runs.check(free=ORDER_KEYS, pooled=True)
    orders = order_runs(runs)
    if reference not in set(orders["method"]):
        raise SystemExit(f"error: --reference {reference} has no rows in these run folders; pass one of "
                         f"{', '.join(dict.fromkeys(orders['method']))}")
    summary, pairs = summarize_orders(orders), paired(orders, reference)
    pair_summary = summarize_paired(pairs)
    files = {"orders.csv": orders, "orders_summary.csv": summary, "paired.csv": pairs,
             "paired_summary.csv": pair_summary}
    texts = {name: in_file_units(df).to_csv(index=False) for name, df in files.items()}  # percent and points
    texts["table.md"] = markdown(orders, summary, pairs, pair_summary, reference, shown_paths(runs, out), notes)
    texts["brief.md"] = brief(orders, summary, pair_summary, reference, _shown(Path(out) / "table.md", out))
    return texts, orders, pairs


def write(runs: RunSet, out: str | Path, reference: str = DEFAULT_REFERENCE, command: str | None = None) -> Path:
    """Write the report into ``out`` (every file atomically; the tables are rebuilt whole each time)."""
    out = Path(out)
    texts, orders, pairs = build(runs, out, reference)
    out.mkdir(parents=True, exist_ok=True)
    # One writer at a time, which clears what a killed one left (its temporary files) before writing.
    with remove_temps_on_termination(), RunLock(out, command or "benchmarks.orders.write"):
        remove_stale_temps(out)
        for name, text in texts.items():
            write_text(out / name, text)
        plot(orders, pairs, reference, out / "orders.png")
        sources = {"runs": runs.specs_relative_to(out), "reference": reference, "command": command}
        write_text(out / SOURCES, json.dumps(sources, indent=2) + "\n")
    return out


def _sources(out: Path) -> dict | None:
    """A report's ``sources.json`` if benchmarks.orders wrote it (other commands, e.g. the findings, use the name)."""
    try:
        sources = json.loads((out / SOURCES).read_text())
    except (OSError, ValueError):
        return None
    written = isinstance(sources, dict) and {"runs", "reference"} <= set(sources)
    return sources if written else None


def is_report(out: str | Path) -> bool:
    """Whether ``out`` holds a class-order report of this command."""
    return _sources(Path(out)) is not None


def sources_of(out: str | Path) -> tuple[RunSet, str]:
    """The run folders and reference a written report was made from (its ``sources.json``)."""
    out = Path(out)
    sources = _sources(out)
    if sources is None:
        raise SystemExit(f"error: '{out}' has no {SOURCES} written by python -m benchmarks.orders: it is not a "
                         "class-order report; pass the --out folder of a benchmarks.orders call")
    return RunSet.read(sources["runs"], root=out), sources["reference"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from .compare import Parser

    p = Parser(prog="python -m benchmarks.orders", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", metavar="RUN_DIR", help="run folders of benchmarks.compare, one protocol")
    p.add_argument("--out", help="report folder (default: runs/<protocol>/class-orders, ignored by git; "
                   "results/<protocol>/class-orders for the README's)")
    p.add_argument("--methods", nargs="+", help="only these methods' rows (default: every method of the folders)")
    p.add_argument("--reference", default=DEFAULT_REFERENCE,
                   help=f"the method every other is paired with (default: {DEFAULT_REFERENCE})")
    add_take_argument(p)
    add_again_argument(p, "the run folders")
    args = p.parse_args(argv)
    check_again(p, args)
    if args.again:
        fixed = [f for f, v in (("--out", args.out), ("--methods", args.methods),
                                ("--reference", args.reference != DEFAULT_REFERENCE)) if v]
        if fixed:
            p.error(f"--again rebuilds {args.again} in place with the reference and folders it records; drop "
                    f"{' and '.join(fixed)} (a report with other ones is a new report: pass its run folders and --out)")
    return args


def main(argv: list[str] | None = None) -> Path:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    command = " ".join(["python -m benchmarks.orders", *argv])
    if args.again:
        runs, reference = sources_of(args.again)
        out = Path(args.again)
        # The recorded command is the one that chose the folders; --again alone only rereads them, so it stays.
        # Folders added: the command that reads them all from nothing, so it still rebuilds the report.
        command = (_sources(out) or {}).get("command") or command
        if args.runs:
            runs = runs.adding(args.runs, args.take, out)
            command = " ".join(["python -m benchmarks.orders", *runs.arguments(),
                                *(["--reference", reference] if reference != DEFAULT_REFERENCE else []),
                                "--out", os.path.relpath(out)])  # as its folders: from here
    else:
        specs = taking(args.runs, args.take)
        runs, reference = RunSet.read(specs), args.reference
        if args.methods:  # each folder with the methods asked for that it holds; folders with none are left out
            picked = [(r, [x for x in m.methods if x in args.methods], m.orders)
                      for r, m in zip(args.runs, runs.members)]
            if not any(ms for _, ms, _ in picked):
                raise SystemExit(f"error: none of these run folders holds rows of --methods {' '.join(args.methods)}")
            runs = RunSet.read([spec for spec in picked if spec[1]])
        protocol = runs.members[0].settings.get("protocol", "unknown")
        out = Path(args.out) if args.out else Path("runs") / str(protocol) / "class-orders"
    write(runs, out, reference, command)
    print((out / "table.md").read_text() + f"\nwritten to {out}")
    return out


if __name__ == "__main__":
    from .compare import cli

    sys.exit(cli(main=main))
