"""Tidy CSVs, a Markdown table and plots from per-experience rows; every file is written atomically."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from avalanche_sdlora.atomic import write_text, write_with
from avalanche_sdlora.metrics import average_anytime_accuracy, backward_transfer, forgetting

from .methods import method_names
from .units import in_file_units


def write_csv(df: pd.DataFrame, path: Path) -> None:
    """A table as CSV, written atomically (the one writer, :mod:`avalanche_sdlora.atomic`)."""
    write_text(path, df.to_csv(index=False))


def write_reports(per_task: pd.DataFrame, run_dir: Path, title: str | None = None) -> None:
    """per_task.csv, summary.csv, magnitudes.csv (SD-LoRA's runs), table.md and the two plots of a run folder
    (``title`` heads the plots)."""
    run_dir = Path(run_dir)
    summary = in_file_units(summarize(per_task))  # percent, as table.md shows it (benchmarks.units)
    write_csv(per_task, run_dir / "per_task.csv")
    write_csv(summary, run_dir / "summary.csv")
    long = magnitudes(per_task)
    if len(long):
        write_csv(long, run_dir / "magnitudes.csv")
    write_text(run_dir / "table.md", markdown_table(summary))
    plot(per_task, summary, run_dir, title)


def magnitudes(per_task: pd.DataFrame) -> pd.DataFrame:
    """The magnitudes as a long table, one row per (method, seed, experience, task): per_task.csv keeps them as one
    space-joined ``alphas`` string per row (a row per experience, and a growing number of them), which no plotting
    or stats tool reads as numbers."""
    keys = [c for c in ("method", "seed", "class_order_seed", "experience") if c in per_task]
    rows = []
    if "alphas" in per_task:
        for record in per_task.to_dict("records"):
            text = record["alphas"]
            if isinstance(text, str) and text.strip():
                rows += [{**{k: record[k] for k in keys}, "task": k, "alpha": float(a)}
                         for k, a in enumerate(text.split())]
            elif isinstance(text, (int, float)) and np.isfinite(text):  # one magnitude, read back as a number
                rows.append({**{k: record[k] for k in keys}, "task": 0, "alpha": float(text)})
    return pd.DataFrame(rows, columns=[*keys, "task", "alpha"])


def accuracy_matrix(rows: pd.DataFrame) -> np.ndarray:
    """R[i, j] from one (method, seed)'s rows, whose ``acc_exp_j`` columns hold per-experience accuracy."""
    rows = rows.sort_values("experience")
    cols = sorted((c for c in rows.columns if c.startswith("acc_exp_")), key=lambda c: int(c.rsplit("_", 1)[1]))
    return rows[cols].to_numpy(float)


def run_records(per_task: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """One row per run (rows grouped by ``by``, which includes method and seed): Acc, AAA, forgetting, BWT, costs.

    AAA, forgetting and BWT need every experience (n/a for ``joint``'s single row); ``finished`` marks runs
    whose last experience was reached.
    """
    records = []
    for key, g in per_task.groupby(by, sort=False):
        g = g.sort_values("experience")
        last = g.iloc[-1]
        complete = len(g) == int(last["n_experiences"])
        R = accuracy_matrix(g)
        records.append({
            **dict(zip(by, key)), "acc": float(last["acc_seen"]),
            "aaa": average_anytime_accuracy(g["acc_seen"].to_numpy()) if complete else np.nan,
            "forgetting": forgetting(R) if complete else np.nan,
            "bwt": backward_transfer(R) if complete else np.nan,
            "final_update_norm": float(last["update_norm"]) if "update_norm" in g else np.nan,
            "trainable_params": int(g["trainable_params"].max()), "stored_params": int(last["stored_params"]),
            "train_seconds": float(g["train_seconds"].sum()), "eval_seconds": float(g["eval_seconds"].sum()),
            "finished": bool(last["experience"] == last["n_experiences"] - 1),
        })
    return pd.DataFrame.from_records(records)


def summarize(per_task: pd.DataFrame) -> pd.DataFrame:
    """One row per method: mean and std over finished seeds of Acc, AAA, forgetting, BWT (fractions, as computed;
    summary.csv holds them in percent, :func:`benchmarks.units.in_file_units`), plus costs.

    A run that stopped before its last experience (a NaN-loss stop, a kill, or still running) is left out of the
    means but counted in ``n_unfinished``, so a table never hides a seed that did not make it.
    """
    runs = run_records(per_task, ["method", "seed"])
    out = []
    for method, everything in runs.groupby("method", sort=False):
        g = everything[everything["finished"]]
        out.append({
            "method": method, "acc_mean": g["acc"].mean(), "acc_std": g["acc"].std(ddof=1),
            "aaa_mean": g["aaa"].mean(), "aaa_std": g["aaa"].std(ddof=1), "forgetting": g["forgetting"].mean(),
            "bwt": g["bwt"].mean(), "trainable_params": int(everything["trainable_params"].max()),
            "stored_params": int(everything["stored_params"].max()), "train_seconds": g["train_seconds"].mean(),
            "eval_seconds": g["eval_seconds"].mean(), "n_seeds": len(g), "n_unfinished": len(everything) - len(g),
        })
    return pd.DataFrame.from_records(out)


def markdown_grid(columns: list[str], rows: list[list[str]]) -> str:
    """A Markdown table of already formatted cells (every table the harness writes)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def markdown_table(summary: pd.DataFrame) -> str:
    """summary.csv's rows (accuracies in percent) as mean ± sample std (ddof=1) over seeds; one seed has no std. A
    ``run`` column (summaries of several run folders side by side, :mod:`benchmarks.headline`) is shown after the
    method."""

    def pm(mean: float, std: float) -> str:
        if np.isnan(mean):
            return "n/a"
        return f"{mean:.2f}" if np.isnan(std) else f"{mean:.2f} ± {std:.2f}"

    def pct(v: float) -> str:
        return "n/a" if np.isnan(v) else f"{v:.2f}"

    rows = []
    for _, r in summary.sort_values("acc_mean_pct", ascending=False).iterrows():
        seeds = f"{int(r['n_seeds'])}"
        if r["n_unfinished"]:
            seeds += f" (+{int(r['n_unfinished'])} unfinished)"
        secs = "n/a" if np.isnan(r["train_seconds"]) else f"{r['train_seconds']:.0f}"
        rows.append([r["method"], *([f"`{r['run']}`"] if "run" in r else []),
                     pm(r["acc_mean_pct"], r["acc_std_pct"]), pm(r["aaa_mean_pct"], r["aaa_std_pct"]),
                     pct(r["forgetting_pct"]), pct(r["bwt_pct"]), f"{int(r['trainable_params']):,}",
                     f"{int(r['stored_params']):,}", secs, seeds])
    return markdown_grid(["method", *(["run"] if "run" in summary else []), "Acc (%)", "AAA (%)", "forgetting",
                          "BWT", "trainable params", "stored params", "train s", "seeds"], rows)


# Ten colours times four markers: 40 distinct (colour, marker) pairs, one per method in registry order, so a method
# looks the same in every plot of every command (sdlora and simplecil no longer share a colour).
_MARKERS = ("o", "s", "^", "D")


def method_style(method: str) -> dict[str, str]:
    """The plot style of a method: a (colour, marker) pair no other registered method has."""
    names = list(method_names())
    k = names.index(method) if method in names else len(names) + zlib.crc32(method.encode()) % 20  # stable
    return {"color": f"C{k % 10}", "marker": _MARKERS[(k // 10) % len(_MARKERS)]}


def plot(per_task: pd.DataFrame, summary: pd.DataFrame, out_dir: Path, title: str | None = None) -> None:
    """seen_accuracy.png/.pdf (a line per method, std band over seeds, legend outside, integer experience ticks)
    from ``per_task`` (fractions) and, from ``summary`` (summary.csv's rows, percent), final_accuracy.png/.pdf
    (horizontal bars sorted by accuracy, error bars only where a method has several seeds); ``title`` (e.g. the
    protocol) heads both, with the seed count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out_dir = Path(out_dir)
    n_seeds = per_task.groupby("method")["seed"].nunique() if len(per_task) else pd.Series(dtype=int)
    runs = sorted(set(n_seeds.tolist()))
    seeds = ("1 seed" if runs == [1] else f"{'/'.join(map(str, runs))} seeds, mean ± std") if runs else ""
    head = ", ".join(s for s in (title, seeds) if s)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for method, g in per_task.groupby("method", sort=False):
        s = g.groupby("experience")["acc_seen"].agg(["mean", "std"]).fillna(0.0)
        x = s.index.to_numpy() + 1
        style = method_style(method)
        ax.plot(x, 100 * s["mean"], ms=4, label=method, **style)
        ax.fill_between(x, 100 * (s["mean"] - s["std"]), 100 * (s["mean"] + s["std"]), alpha=0.15,
                        color=style["color"])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("experience (task)")
    ax.set_ylabel("accuracy on seen classes (%)")
    ax.grid(alpha=0.3)
    if head:
        ax.set_title(head, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    save_figure(fig, out_dir / "seen_accuracy.png", pdf=True)
    done = summary[summary["n_seeds"] > 0].sort_values("acc_mean_pct") if len(summary) else summary
    if len(done):
        fig, ax = plt.subplots(figsize=(7, 0.8 + 0.35 * len(done)))
        y = np.arange(len(done))
        several = (done["n_seeds"] > 1).to_numpy()
        ax.barh(y, done["acc_mean_pct"], color=[method_style(m)["color"] for m in done["method"]])
        if several.any():
            ax.errorbar(done["acc_mean_pct"][several], y[several], xerr=done["acc_std_pct"][several],
                        fmt="none", ecolor="k", capsize=3, lw=1)
        ax.set_yticks(y, done["method"])
        ax.set_xlabel("final accuracy Acc (%)" + (" (bars: mean, lines: ± std over seeds)" if several.any() else ""))
        ax.grid(axis="x", alpha=0.3)
        if head:
            ax.set_title(head, fontsize=10)
        save_figure(fig, out_dir / "final_accuracy.png", pdf=True)


def save_figure(fig, path: Path, dpi: int = 120, pdf: bool = False) -> None:
    """A matplotlib figure laid out, written atomically as PNG and closed (every plot of the harness); with ``pdf``
    also as a vector PDF beside it (for a paper), both cropped to what is drawn (a legend outside the axes too)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    crop = {"bbox_inches": "tight"} if pdf else {}
    write_with(path, lambda f: fig.savefig(f, dpi=dpi, format="png", **crop))
    if pdf:
        write_with(Path(path).with_suffix(".pdf"), lambda f: fig.savefig(f, format="pdf", **crop))
    plt.close(fig)
