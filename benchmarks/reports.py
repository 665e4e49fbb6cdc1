"""Tidy CSVs, a Markdown table and plots from per-experience rows; every file is written atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from avalanche_sdlora.metrics import average_anytime_accuracy, backward_transfer, final_accuracy, forgetting


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, then rename: a crash never leaves half a file."""
    _atomic_write(Path(path), lambda f: f.write(text.encode()))


def _atomic_write(path: Path, write) -> None:
    """``write(binary file)`` to ``.<name>.<random>.tmp`` beside ``path``, fsync, rename over ``path``, fsync the folder.

    The folder's fsync makes the rename itself durable: without it a power loss after the rename can bring back
    the old file (or none) although the new one was reported written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make renames and new entries in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_csv(df: pd.DataFrame, path: Path) -> None:
    atomic_write_text(path, df.to_csv(index=False))


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
            "aaa": float(g["acc_seen"].mean()) if complete else np.nan,
            "forgetting": forgetting(R) if complete else np.nan,
            "bwt": backward_transfer(R) if complete else np.nan,
            "final_update_norm": float(last["update_norm"]) if "update_norm" in g else np.nan,
            "trainable_params": int(g["trainable_params"].max()), "stored_params": int(last["stored_params"]),
            "train_seconds": float(g["train_seconds"].sum()), "eval_seconds": float(g["eval_seconds"].sum()),
            "finished": bool(last["experience"] == last["n_experiences"] - 1),
        })
    return pd.DataFrame.from_records(records)


def summarize(per_task: pd.DataFrame) -> pd.DataFrame:
    """One row per method: mean and std over finished seeds of Acc, AAA, forgetting, BWT, plus costs.

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


def markdown_table(summary: pd.DataFrame) -> str:
    """Accuracies in percent as mean ± sample std (ddof=1) over seeds; one seed has no std."""

    def pm(mean: float, std: float) -> str:
        if np.isnan(mean):
            return "n/a"
        return f"{100 * mean:.2f}" if np.isnan(std) else f"{100 * mean:.2f} ± {100 * std:.2f}"

    def pct(v: float) -> str:
        return "n/a" if np.isnan(v) else f"{100 * v:.2f}"

    lines = ["| method | Acc (%) | AAA (%) | forgetting | BWT | trainable params | stored params | train s | seeds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for _, r in summary.sort_values("acc_mean", ascending=False).iterrows():
        seeds = f"{int(r['n_seeds'])}"
        if r["n_unfinished"]:
            seeds += f" (+{int(r['n_unfinished'])} unfinished)"
        secs = "n/a" if np.isnan(r["train_seconds"]) else f"{r['train_seconds']:.0f}"
        lines.append(f"| {r['method']} | {pm(r['acc_mean'], r['acc_std'])} | {pm(r['aaa_mean'], r['aaa_std'])} | "
                     f"{pct(r['forgetting'])} | {pct(r['bwt'])} | {int(r['trainable_params']):,} | "
                     f"{int(r['stored_params']):,} | {secs} | {seeds} |")
    return "\n".join(lines) + "\n"


def plot(per_task: pd.DataFrame, summary: pd.DataFrame, out_dir: Path) -> None:
    """seen_accuracy.png (a line per method, std band over seeds) and final_accuracy.png (bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, g in per_task.groupby("method", sort=False):
        s = g.groupby("experience")["acc_seen"].agg(["mean", "std"]).fillna(0.0)
        x = s.index.to_numpy() + 1
        ax.plot(x, 100 * s["mean"], marker="o", ms=3, label=method)
        ax.fill_between(x, 100 * (s["mean"] - s["std"]), 100 * (s["mean"] + s["std"]), alpha=0.2)
    ax.set_xlabel("experience")
    ax.set_ylabel("accuracy on seen classes (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _atomic_savefig(fig, out_dir / "seen_accuracy.png")
    plt.close(fig)
    if len(summary):
        s = summary.sort_values("acc_mean", ascending=False)
        fig, ax = plt.subplots(figsize=(7, 4))
        s = s[s["n_seeds"] > 0]
        ax.bar(s["method"], 100 * s["acc_mean"], yerr=100 * s["acc_std"].fillna(0), capsize=3)
        ax.set_ylabel("final accuracy Acc (%)")
        ax.tick_params(axis="x", rotation=30)
        fig.tight_layout()
        _atomic_savefig(fig, out_dir / "final_accuracy.png")
        plt.close(fig)


def _atomic_savefig(fig, path: Path) -> None:
    _atomic_write(Path(path), lambda f: fig.savefig(f, dpi=120, format="png"))
