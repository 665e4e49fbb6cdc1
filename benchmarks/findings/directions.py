"""Finding 2, directions and magnitudes: how much of each new direction the earlier ones span, and alpha_k over tasks.

The residual is SD-LoRA-KD's test statistic, ||r||^2 / ||D_k||^2 of direction k's least-squares fit on the
directions before it (:func:`avalanche_sdlora.plugins.distillation.direction_residuals`, the plugin's own fit),
computed on the model after each experience. The magnitudes are the ``alphas`` column per_task.csv records after
every experience.
"""

from __future__ import annotations

import pandas as pd

from avalanche_sdlora.plugins.distillation import direction_residuals

from ..run_folder import RunFolder
from .sources import folder_config, load_model


def residual_rows(folder: RunFolder, method: str, seed: int) -> list[dict]:
    """After each experience i: the relative residual of every stored direction k >= 1 on directions 0..k-1.

    ``newest`` marks the direction of the task just trained (k == i: its residual is what KD decides on at i).
    """
    rows = []
    for i in range(folder_config(folder).n_experiences):
        model = load_model(folder, method, seed, i)
        for k, r in enumerate(direction_residuals(model), start=1):
            rows.append({"seed": seed, "experience": i, "direction": k, "relative_residual": r,
                         "newest": k == model.num_directions - 1 == i})
    return rows


def alpha_rows(folder: RunFolder, method: str, seeds: list[int]) -> list[dict]:
    """alpha_k after each experience (per_task.csv's ``alphas``), one row per (seed, experience, task k)."""
    per_task = folder.gather()
    rows = []
    for r in per_task[(per_task["method"] == method) & per_task["seed"].isin(seeds)].itertuples():
        for k, a in enumerate(str(r.alphas).split()):
            rows.append({"seed": int(r.seed), "experience": int(r.experience), "task": k, "alpha": float(a)})
    return rows


def summarize_residuals(rows: pd.DataFrame) -> pd.DataFrame:
    """Per recipe: the newest direction's residual at each task (mean over seeds), its trend and the smallest."""
    out = []
    for recipe, g in rows[rows["newest"]].groupby("recipe", sort=False):
        by_k = g.groupby("direction")["relative_residual"].mean()
        rho = by_k.reset_index().corr(method="spearman").iloc[0, 1] if len(by_k) > 1 else float("nan")
        out.append({"recipe": recipe, "n_seeds": g["seed"].nunique(), "first": by_k.iloc[0], "last": by_k.iloc[-1],
                    "min": g["relative_residual"].min(), "max": g["relative_residual"].max(), "spearman_rho": rho,
                    "kd_threshold": g["kd_threshold"].iloc[0],
                    "n_below_kd_threshold": int((g["relative_residual"] <= g["kd_threshold"]).sum()),
                    "n_decisions": len(g)})
    return pd.DataFrame(out)


def summarize_alphas(rows: pd.DataFrame) -> pd.DataFrame:
    """Per recipe: each task's magnitude after its own task and after the last one (means over seeds)."""
    out = []
    for recipe, g in rows.groupby("recipe", sort=False):
        last = g["experience"].max()
        for k, gk in g.groupby("task"):
            own = gk[gk["experience"] == k]["alpha"].mean()
            final = gk[gk["experience"] == last]["alpha"].mean()
            out.append({"recipe": recipe, "task": k, "alpha_init": g["alpha_init"].iloc[0], "after_own_task": own,
                        "after_last_task": final, "change_since_own_task": final - own,
                        "n_seeds": gk["seed"].nunique()})
    return pd.DataFrame(out)
