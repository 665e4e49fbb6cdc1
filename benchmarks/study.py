"""Training-budget study: where does decoupling pay off? ``python -m benchmarks.study``.

Runs ``sdlora``, ``seq-lora`` and ``ncm`` (and any other method named) over a grid of epochs per task,
training images per class and learning rate, each cell a ``benchmarks.compare`` run, and gathers them
into ``results/study/``: ``per_task.csv`` (method, seed, epochs, train_per_class, lr, experience,
acc_seen, alphas, update_norm, ...), ``runs.csv`` (Acc, AAA, forgetting, final update norm per run),
``cells.csv`` (their mean and std over seeds per method and cell), ``final_vs_budget.png``, ``alphas.png`` and
``drift.png``. ``--reuse RUN_DIR`` gathers an existing comparison run as a cell (the ``cifar100-cpu`` comparison
is the cell e3-n100-lr0.01), so its runs are not paid for twice. Finished cells are skipped, so the
command can be rerun after an interruption or with more cells; long cells can run in the background.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from . import compare
from .reports import atomic_write_csv, run_records

DEFAULT_METHODS = ("sdlora", "seq-lora", "ncm")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.study", description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    p.add_argument("--epochs", nargs="+", type=int, default=[1, 3, 10])
    p.add_argument("--train-per-class", nargs="+", type=int, default=[100, 500])
    p.add_argument("--lrs", nargs="+", type=float, default=[0.01, 0.05])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--out", default="results/study")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--gather-only", action="store_true", help="only rebuild the CSVs and plots from finished cells")
    p.add_argument("--reuse", nargs="*", default=[], metavar="RUN_DIR",
                   help="benchmarks.compare run folders gathered as cells too (e.g. the cifar100-cpu comparison, "
                        "which is the cell e3-n100-lr0.01)")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="after '--': further benchmarks.compare flags")
    return p.parse_args(argv)


def cell_id(epochs: int, train_per_class: int, lr: float) -> str:
    return f"e{epochs}-n{train_per_class}-lr{lr:g}"


def _run_dirs(out: Path, reuse: list[str]) -> list[Path]:
    dirs = sorted(c.parent for c in out.glob("runs/*/*/config.json"))
    for r in reuse:
        if not (Path(r) / "config.json").exists():
            raise SystemExit(f"error: --reuse '{r}' is not a run folder of benchmarks.compare (no config.json)")
        dirs.append(Path(r))
    return dirs


def gather(out: Path, reuse: list[str] | None = None, methods: list[str] | None = None) -> pd.DataFrame:
    """All finished and partial cells' rows, tagged with their budget; ``reuse`` adds comparison runs as cells."""
    frames = []
    for run_dir in _run_dirs(out, list(reuse or [])):
        parts = sorted((run_dir / "parts").glob("*.csv"))
        if not parts:
            continue
        df = pd.concat([pd.read_csv(f) for f in parts], ignore_index=True)
        config = json.loads((run_dir / "config.json").read_text())
        proto = config["protocol"]
        df["epochs"], df["train_per_class"], df["lr"] = proto["epochs"], proto["train_per_class"], proto["lr"]
        df["test_per_class"] = config.get("test_per_class") or "all"
        df["device"] = device_label(config)
        df["source"] = str(run_dir)
        frames.append(df)
    if not frames:
        return pd.DataFrame()
    per_task = pd.concat(frames, ignore_index=True)
    if methods:
        per_task = per_task[per_task["method"].isin(methods)]
    atomic_write_csv(per_task, out / "per_task.csv")
    keys = ["method", "epochs", "train_per_class", "lr"]
    run_keys = keys[:1] + ["seed"] + keys[1:] + ["device"]
    runs = run_records(per_task, run_keys)
    if runs.empty:
        return runs
    stopped = unfinished_cells(per_task, runs, keys)
    (out / "unfinished.csv").unlink(missing_ok=True)
    if len(stopped):
        atomic_write_csv(stopped, out / "unfinished.csv")
    runs = runs[runs["finished"]].drop(columns="finished")  # unfinished rows stay in per_task.csv only
    atomic_write_csv(runs, out / "runs.csv")
    cells = runs.groupby(keys).agg(
        acc_mean=("acc", "mean"), acc_std=("acc", "std"), aaa_mean=("aaa", "mean"), aaa_std=("aaa", "std"),
        forgetting=("forgetting", "mean"), final_update_norm=("final_update_norm", "mean"),
        train_seconds=("train_seconds", "mean"), n_seeds=("seed", "nunique"),
        device=("device", lambda d: " + ".join(sorted(set(map(str, d)))))).reset_index()
    atomic_write_csv(cells, out / "cells.csv")
    # Plots show finished runs only: a stopped, diverged run (e.g. lr 0.05, norms ~1e6) would flatten every other line.
    finished = per_task.merge(runs[run_keys], on=run_keys)
    _plots(finished, cells, out)
    return cells


def device_label(config: dict) -> str:
    """"cpu", or the GPU's name: cells of one study may come from different machines (a lent GPU for large budgets).

    Read from the recorded ``device`` (every run has it) rather than ``device_name`` (newer runs only), so one
    machine gets one label whatever version of compare wrote the folder.
    """
    device = str(config.get("device", "cpu"))
    return device if not device.startswith("cuda") else (config.get("device_name") or device)


def unfinished_cells(per_task: pd.DataFrame, runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Cells with a run that stopped early, compared at the last experience that every run of the cell reached.

    A cell cut short (e.g. a lent GPU taken back mid-run) still says something, but only at a matched point:
    comparing one method's task 9 with another's task 7 would flatter the method that stopped earlier.
    """
    budget = keys[1:]
    open_cells = runs.loc[~runs["finished"], budget].drop_duplicates()
    rows = []
    for values in open_cells.itertuples(index=False):
        cell = dict(zip(budget, values))  # itertuples keeps each column's dtype (iterrows would make floats)
        sel = per_task[(per_task[budget] == list(values)).all(axis=1)]
        reached = sel.groupby(["method", "seed"])["experience"].max()
        common = int(reached.min())
        at = sel[sel["experience"] == common]
        for method, g in at.groupby("method"):
            rows.append({**cell, "method": method, "experience": common,
                         "acc_seen_mean": g["acc_seen"].mean(), "acc_seen_std": g["acc_seen"].std(),
                         "update_norm": g["update_norm"].mean() if "update_norm" in g else np.nan,
                         "n_seeds": g["seed"].nunique(),
                         "last_experience_per_seed": " ".join(f"{s}:{e}" for (m, s), e in reached.items() if m == method)})
    return pd.DataFrame(rows)


def _plots(per_task: pd.DataFrame, cells: pd.DataFrame, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budget_keys = ["epochs", "train_per_class", "lr"]
    # One colour per budget cell, shared by alphas.png and drift.png.
    budget_colour = {b: f"C{k % 10}" for k, b in enumerate(sorted(per_task.groupby(budget_keys).groups))}
    budgets = cells.assign(budget=cells["epochs"] * cells["train_per_class"])
    lrs = sorted(budgets["lr"].unique())
    # One colour per method in every panel; filled markers for CPU cells, hollow for GPU ones.
    colours = {m: f"C{k}" for k, m in enumerate(sorted(budgets["method"].unique()))}
    fig, axes = plt.subplots(1, len(lrs), figsize=(5 * len(lrs), 4), squeeze=False)
    for ax, lr in zip(axes[0], lrs):
        for method, g in budgets[budgets["lr"] == lr].groupby("method"):
            g = g.sort_values("budget")
            ax.errorbar(g["budget"], 100 * g["acc_mean"], yerr=100 * g["acc_std"].fillna(0), marker="", label=method,
                        capsize=3, color=colours[method])
            gpu = g["device"] != "cpu"
            ax.plot(g["budget"][~gpu], 100 * g["acc_mean"][~gpu], "o", color=colours[method])
            ax.plot(g["budget"][gpu], 100 * g["acc_mean"][gpu], "o", mfc="white", color=colours[method])
        ax.set_title(f"lr {lr:g} (filled: CPU, hollow: GPU cells)")
        ax.set_xscale("log")
        ax.set_xlabel("epochs x images per class")
        ax.set_ylabel("final accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "final_vs_budget.png", dpi=120)
    plt.close(fig)

    sd = per_task[(per_task["method"] == "sdlora") & per_task["alphas"].notna()]
    if len(sd):
        last = sd[sd["experience"] == sd["n_experiences"] - 1]
        fig, ax = plt.subplots(figsize=(6, 4))
        # Mean over seeds per cell (seeds as thin lines).
        for (e, n, lr), g in last.groupby(budget_keys):
            a = np.array([[float(v) for v in str(x).split()] for x in g["alphas"]])
            colour = budget_colour[(e, n, lr)]
            k = np.arange(1, a.shape[1] + 1)
            for row in a:
                ax.plot(k, row, color=colour, alpha=0.25, lw=0.8)
            ax.plot(k, a.mean(0), marker=".", color=colour, label=f"e{e} n{n} lr{lr:g} ({len(a)} seeds)")
        ax.set_xlabel("task k")
        ax.set_ylabel("magnitude alpha_k after the last task")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(out / "alphas.png", dpi=120)
        plt.close(fig)
    if "update_norm" in per_task:
        drift = per_task[per_task["update_norm"].notna()]
        if len(drift):
            # One panel per method, the same colour for a budget in every panel, so the methods compare cell by cell.
            methods = sorted(drift["method"].unique())
            fig, axes = plt.subplots(1, len(methods), figsize=(5 * len(methods), 4), sharey=True, squeeze=False)
            for ax, method in zip(axes[0], methods):
                for (e, n, lr), g in drift[drift["method"] == method].groupby(budget_keys):
                    s = g.groupby("experience")["update_norm"].mean()
                    ax.plot(s.index + 1, s.values, marker=".", color=budget_colour[(e, n, lr)],
                            label=f"e{e} n{n} lr{lr:g}")
                ax.set_title(method)
                ax.set_xlabel("experience")
                ax.grid(alpha=0.3)
                ax.legend(fontsize=7)
            axes[0][0].set_ylabel("||accumulated update||_F (mean over seeds)")
            fig.tight_layout()
            fig.savefig(out / "drift.png", dpi=120)
            plt.close(fig)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = parse_args(argv)
    out = Path(args.out)
    extra = [a for a in args.extra if a != "--"]
    if not args.gather_only:
        for epochs, n, lr in itertools.product(args.epochs, args.train_per_class, args.lrs):
            run_dir = out / "runs" / "cifar100-cpu" / cell_id(epochs, n, lr)
            flags = ["--methods", *args.methods, "--seeds", *map(str, args.seeds), "--epochs", str(epochs),
                     "--train-per-class", str(n), "--lr", str(lr), "--jobs", str(args.jobs), "--quiet", *extra]
            # A finished cell is resumed too: compare keeps its finished runs and runs only seeds or methods added.
            if run_dir.exists():
                compare.main(flags + ["--resume", str(run_dir)])
            else:
                compare.main(flags + ["--out", str(out / "runs"), "--run-id", cell_id(epochs, n, lr)])
            gather(out, args.reuse, args.methods)
    return gather(out, args.reuse, args.methods)


if __name__ == "__main__":
    sys.exit(compare.cli(main=main))  # errors as one line, as compare's
