"""Training-budget study: where does decoupling pay off? ``python -m benchmarks.study``.

Runs ``sdlora``, ``seq-lora`` and ``ncm`` (and any other method named) over a grid of epochs per task,
training images per class and learning rate, each cell a ``benchmarks.compare`` run, and gathers them
into ``results/study/``: ``per_task.csv`` (method, seed, epochs, train_per_class, lr, experience,
acc_seen, alphas, update_norm, ...: the runs' rows, fractions), ``runs.csv`` (Acc, AAA, forgetting, final update
norm per run), ``cells.csv`` (their mean and std over seeds per method and cell; accuracies of both in percent,
:mod:`benchmarks.units`), ``final_vs_budget.png``, ``alphas.png`` and
``drift.png``. ``--reuse RUN_DIR`` gathers an existing comparison run as a cell (the ``cifar100-tiny128``
comparison is the cell e3-n100-lr0.01), so its runs are not paid for twice. Finished cells are skipped, so the
command can be rerun after an interruption or with more cells; long cells can run in the background. Every flag
of ``benchmarks.compare`` applies to every cell; ``--epochs``, ``--train-per-class`` and ``--lr`` take a list.

``--print-commands`` prints one ``benchmarks.compare`` command per cell instead of running them (for a Slurm array,
``xargs`` or a shell loop; ``--launcher 'torchrun --standalone --nproc_per_node 4'`` runs each on 4 GPUs), then
``--gather-only`` gathers what they wrote.
"""

from __future__ import annotations

import itertools
import shlex
import sys
from pathlib import Path

from .commands import print_kept_help

if __name__ == "__main__":  # --help before torch, timm and Avalanche load
    print_kept_help("benchmarks.study", sys.argv[1:])

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from . import compare, distributed  # noqa: E402
from .config import (ORDER_SEEDS, RunConfig, add_run_flags, check_seeds, config_from_flags,  # noqa: E402
                     default_seeds, flags_for)
from .methods import check_method_options  # noqa: E402
from .reports import run_records, save_figure, write_csv  # noqa: E402
from .run_folder import RunFolder  # noqa: E402
from .units import in_file_units  # noqa: E402

DEFAULT_METHODS = ("sdlora", "seq-lora", "ncm")
GRID = {"epochs": [1, 3, 10], "train_per_class": [100, 500], "lr": [0.01, 0.05]}  # the axes and their defaults


def parse_args(argv: list[str] | None = None):
    p = compare.Parser(prog="python -m benchmarks.study", description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    p.add_argument("--seeds", nargs="+", type=int, help="default: 0 1; with --class-order seed: "
                   + " ".join(map(str, ORDER_SEEDS)))
    add_run_flags(p, lists=GRID)  # compare's flags; the grid's axes take one or more values
    p.add_argument("--out", default="runs/study", help="study folder (default: runs/study, ignored by git; "
                   "results/study is the README's)")
    p.add_argument("--jobs", type=int, help="(method, seed) runs of a cell side by side (default: 2; printed "
                   "commands carry it only when given)")
    p.add_argument("--gather-only", action="store_true", help="only rebuild the CSVs and plots from finished cells")
    p.add_argument("--print-commands", action="store_true",
                   help="print one benchmarks.compare command per cell (a cell already started gets --resume) and "
                        "run nothing: for a Slurm array (line $SLURM_ARRAY_TASK_ID), xargs or a shell loop; then "
                        "--gather-only")
    p.add_argument("--launcher", default="python", help="what the printed commands start with, before "
                   "'-m benchmarks.compare' (default: python; e.g. 'torchrun --standalone --nproc_per_node 4')")
    p.add_argument("--reuse", nargs="*", default=[], metavar="RUN_DIR",
                   help="benchmarks.compare run folders gathered as cells too (e.g. the cifar100-tiny128 comparison, "
                        "which is the cell e3-n100-lr0.01)")
    args = p.parse_args(argv)
    if distributed.launched() and not args.print_commands:
        p.error("benchmarks.study does not run under torchrun (each cell is a benchmarks.compare run of its own); "
                "print one command per cell with --print-commands --launcher 'torchrun --standalone "
                "--nproc_per_node N' and run those")
    if args.print_commands and args.gather_only:
        p.error("--print-commands prints the cells' commands and --gather-only gathers what they wrote; pass one")
    if args.jobs is not None and args.jobs <= 0:
        p.error(f"--jobs must be a positive integer, got {args.jobs}")
    if args.jobs not in (None, 1) and any(w in args.launcher for w in ("torchrun", "torch.distributed.run")):
        p.error(f"--jobs {args.jobs} with --launcher '{args.launcher}': under torchrun compare runs each "
                "(method, seed) on all the processes, one after another; leave --jobs out")
    for axis, default in GRID.items():
        if getattr(args, axis) is None:
            setattr(args, axis, default)
    try:
        args.axes = {cell_id(e, n, lr): {"epochs": e, "train_per_class": n, "lr": lr}
                     for e, n, lr in itertools.product(args.epochs, args.train_per_class, args.lr)}
        args.cells = {cell: config_from_flags(args, **axes) for cell, axes in args.axes.items()}
        first = next(iter(args.cells.values()))
        args.seeds = default_seeds(first, (0, 1)) if args.seeds is None else args.seeds
        check_seeds(args.seeds)
        check_method_options(first.method_options)
    except ValueError as exc:
        p.error(str(exc))
    return args


def cell_id(epochs: int, train_per_class: int, lr: float) -> str:
    return f"e{epochs}-n{train_per_class}-lr{lr:g}"


def _run_folders(out: Path, reuse: list[str]) -> list[RunFolder]:
    folders = RunFolder.find(out / "runs")
    for r in reuse:
        if not RunFolder(r).has_config():
            raise SystemExit(f"error: --reuse '{r}' is not a run folder of benchmarks.compare (no config.json)")
        folders.append(RunFolder(r))
    return folders


def gather(out: Path, reuse: list[str] | None = None, methods: list[str] | None = None) -> pd.DataFrame:
    """All finished and partial cells' rows, tagged with their budget; ``reuse`` adds comparison runs as cells."""
    frames = []
    for folder in _run_folders(out, list(reuse or [])):
        if not folder.has_parts():
            continue
        df = folder.read_parts()
        saved = folder.read_config()
        cfg = RunConfig.from_json(saved)
        df["epochs"], df["train_per_class"], df["lr"] = cfg.epochs, cfg.train_per_class, cfg.lr
        df["test_per_class"] = cfg.test_per_class or "all"
        df["device"] = device_label(saved)
        df["source"] = str(folder)
        frames.append(df)
    if not frames:
        return pd.DataFrame()
    per_task = pd.concat(frames, ignore_index=True)
    if methods:
        per_task = per_task[per_task["method"].isin(methods)]
    write_csv(per_task, out / "per_task.csv")
    keys = ["method", "epochs", "train_per_class", "lr"]
    run_keys = keys[:1] + ["seed"] + keys[1:] + ["device"]
    runs = run_records(per_task, run_keys)
    if runs.empty:
        return runs
    stopped = unfinished_cells(per_task, runs, keys)
    (out / "unfinished.csv").unlink(missing_ok=True)
    if len(stopped):
        write_csv(in_file_units(stopped), out / "unfinished.csv")
    runs = runs[runs["finished"]].drop(columns="finished")  # unfinished rows stay in per_task.csv only
    write_csv(in_file_units(runs), out / "runs.csv")
    cells = runs.groupby(keys).agg(
        acc_mean=("acc", "mean"), acc_std=("acc", "std"), aaa_mean=("aaa", "mean"), aaa_std=("aaa", "std"),
        forgetting=("forgetting", "mean"), final_update_norm=("final_update_norm", "mean"),
        train_seconds=("train_seconds", "mean"), n_seeds=("seed", "nunique"),
        device=("device", lambda d: " + ".join(sorted(set(map(str, d)))))).reset_index()
    write_csv(in_file_units(cells), out / "cells.csv")
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
    save_figure(fig, out / "final_vs_budget.png")

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
        save_figure(fig, out / "alphas.png")
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
            save_figure(fig, out / "drift.png")


def cell_commands(args) -> list[str]:
    """One ``benchmarks.compare`` command per cell, as a shell line: the study's flags with the cell's budget, into the
    cell's folder (``--resume`` when it holds a run already, as the study itself would)."""
    out, lines = Path(args.out), []
    for cell, cfg in args.cells.items():
        folder = RunFolder.new(out / "runs", cfg.protocol, cell)
        cmd = [*shlex.split(args.launcher), "-m", "benchmarks.compare", "--methods", *args.methods,
               "--seeds", *map(str, args.seeds), *flags_for(args, **args.axes[cell]), "--quiet"]
        if args.jobs is not None:
            cmd += ["--jobs", str(args.jobs)]
        cmd += ["--resume", str(folder.path)] if folder.has_config() else ["--out", str(out / "runs"), "--run-id", cell]
        lines.append(shlex.join(cmd))
    return lines


def main(argv: list[str] | None = None) -> pd.DataFrame:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    out = Path(args.out)
    if args.print_commands:
        print("\n".join(cell_commands(args)), flush=True)
        gather_line = ["python", "-m", "benchmarks.study", "--gather-only", "--out", str(out), "--methods",
                       *args.methods] + (["--reuse", *args.reuse] if args.reuse else [])
        print(f"# {len(args.cells)} commands; once they have run: {shlex.join(gather_line)}", file=sys.stderr,
              flush=True)
        return pd.DataFrame()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.gather_only:
        command = " ".join(["python -m benchmarks.study", *argv])
        for cell, cfg in args.cells.items():
            folder = RunFolder.new(out / "runs", cfg.protocol, cell)
            # A finished cell is resumed too: compare keeps its finished runs and runs only seeds or methods added.
            compare.run(cfg, args.methods, args.seeds, folder, jobs=2 if args.jobs is None else args.jobs,
                        quiet=True, resume=folder.has_config(), command=f"{command}  # cell {cell}")
            gather(out, args.reuse, args.methods)
    return gather(out, args.reuse, args.methods)


if __name__ == "__main__":
    sys.exit(compare.cli(main=main))  # errors as one line, as compare's
