"""The plots of a findings folder, one per finding, drawn from the CSVs that :mod:`.report` reads.

Kept apart from the verdicts and the README text (:mod:`.report`, which calls these); matplotlib is imported only
when a plot is drawn, with the Agg backend, so a machine without a screen draws them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..reports import save_figure
from .low_loss import PRETRAINED


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _integer_ticks(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_f1a(rows: pd.DataFrame, path: Path) -> None:
    plt = _plt()
    inits = list(dict.fromkeys(rows["task_init"]))
    fig, axes = plt.subplots(1, len(inits), figsize=(5.5 * len(inits), 4.5), squeeze=False)
    for ax, init in zip(axes[0], inits):
        g = rows[rows["task_init"] == init].groupby(["a", "b"])["distance"].mean()
        tasks = sorted({int(a) for a in rows["a"]})
        labels = [str(t + 1) for t in tasks] + [PRETRAINED]
        D = np.zeros((len(labels), len(labels)))
        for (a, b), d in g.items():
            i = int(a)
            j = len(tasks) if b == PRETRAINED else int(b)
            D[i, j] = D[j, i] = d
        im = ax.imshow(D, cmap="viridis")
        ax.set_xticks(range(len(labels)), labels)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_title(f"||W_i - W_j||_F, task init '{init}'")
        fig.colorbar(im, ax=ax)
    save_figure(fig, path)


def plot_f1b(per_task: pd.DataFrame, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for method, g in per_task.groupby("method", sort=False):
        s = g.groupby("experience")["acc_seen_pct"].agg(["mean", "std"]).fillna(0.0)  # f1b_per_task.csv: percent
        ax.errorbar(s.index + 1, s["mean"], yerr=s["std"], marker="o", ms=3, capsize=2, label=method)
    _integer_ticks(ax)
    ax.set_xlabel("task")
    ax.set_ylabel("accuracy on seen classes (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_f2(residuals: pd.DataFrame | None, alphas: pd.DataFrame | None, path: Path) -> None:
    plt = _plt()
    recipes = list(dict.fromkeys(pd.concat([d["recipe"] for d in (residuals, alphas) if d is not None])))
    fig, axes = plt.subplots(2, len(recipes), figsize=(5.5 * len(recipes), 8), squeeze=False)
    for c, recipe in enumerate(recipes):
        ax = axes[0][c]
        if residuals is not None and recipe in set(residuals["recipe"]):
            g = residuals[(residuals["recipe"] == recipe) & residuals["newest"]]
            for seed, gs in g.groupby("seed"):
                ax.plot(gs["direction"] + 1, gs["relative_residual"], color="C0", alpha=0.3, lw=0.8)
            m = g.groupby("direction")["relative_residual"].mean()
            ax.plot(m.index + 1, m.values, "o-", color="C0", label="mean over seeds")
            ax.axhline(g["kd_threshold"].iloc[0], color="C3", ls="--", lw=0.8, label="KD threshold")
            if (g["relative_residual"] > 0).all():
                ax.set_yscale("log")  # KD's threshold (9e-4) and residuals near 1 on one axis
            ax.legend(fontsize=7)
        _integer_ticks(ax)
        ax.set_title(f"{recipe}: residual of the new direction")
        ax.set_xlabel("task")
        ax.set_ylabel("||r||^2 / ||D_t||^2")
        ax.grid(alpha=0.3)
        ax = axes[1][c]
        if alphas is not None and recipe in set(alphas["recipe"]):
            g = alphas[alphas["recipe"] == recipe].groupby(["task", "experience"])["alpha"].mean()
            for k in sorted({k for k, _ in g.index}):
                s = g.loc[k]
                ax.plot(s.index + 1, s.values, marker=".", label=f"alpha_{k + 1}")
            ax.legend(fontsize=6, ncol=2)
        _integer_ticks(ax)
        ax.set_title(f"{recipe}: magnitudes after each task")
        ax.set_xlabel("task")
        ax.set_ylabel("alpha_k (mean over seeds)")
        ax.grid(alpha=0.3)
    save_figure(fig, path)


def plot_f3(rows: pd.DataFrame, path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5), squeeze=False)
    for c, head in enumerate(("own", "seen")):
        for r, what in enumerate(("accuracy", "loss")):
            ax = axes[r][c]
            for (method, exp), g in rows[rows["head"] == head].groupby(["method", "test_experience"], sort=False):
                s = g.groupby("lam")["accuracy_pct" if what == "accuracy" else what].mean()  # percent: the CSV's
                ax.plot(s.index, s.values, marker=".",
                        ls="-" if exp == 0 else "--", label=f"{method}, task {exp + 1}")
            ax.set_title(f"{what}, {head} head ({'each task its own classes' if head == 'own' else 'both tasks'})")
            ax.set_xlabel("l  (theta = (1 - l) theta_1 + l theta_2)")
            ax.set_ylabel("accuracy (%)" if what == "accuracy" else "cross-entropy")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    save_figure(fig, path)
