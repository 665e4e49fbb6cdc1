"""Finding 1, the low-loss region: (a) distances between single-task LoRA weights and to the pretrained weights;
(b) the fixed-direction ablation against sequential LoRA and SD-LoRA.

(a) A model's weights differ from the pretrained W0 only in the adapted q and v slices, by the dense update dW
(``SDLoRAQKV.delta_weight``, the one place it is formed). Over all adapted layers together,
||W_i - W_j||_F = ||dW_i - dW_j||_F and ||W_t - W0||_F = ||dW_t||_F.
"""

from __future__ import annotations

from itertools import combinations

import pandas as pd
import torch
from torch import Tensor

from ..reports import run_records
from ..run_folder import RunFolder

PRETRAINED = "W0"


@torch.no_grad()
def dense_update(model) -> Tensor:
    """The update of every adapted weight, flattened and concatenated (float32, on the CPU)."""
    return torch.cat([a.delta_weight().detach().flatten().cpu() for a in model.adapters])


def distance_rows(updates: dict[int, Tensor]) -> list[dict]:
    """||dW_t|| for every task (``b`` = W0) and ||dW_i - dW_j|| for every pair i < j, in float64."""
    tasks = sorted(updates)
    rows = [{"kind": "to_pretrained", "a": t, "b": PRETRAINED,
             "distance": float(torch.linalg.vector_norm(updates[t].double()))} for t in tasks]
    rows += [{"kind": "between_tasks", "a": i, "b": j,
              "distance": float(torch.linalg.vector_norm(updates[i].double() - updates[j].double()))}
             for i, j in combinations(tasks, 2)]
    return rows


def summarize_distances(rows: pd.DataFrame) -> pd.DataFrame:
    """Per task init: mean distance between tasks, mean distance to W0, the share of pairs closer to each other
    than the nearer of the two is to W0, and the mean cosine between two tasks' updates (every seed's pairs together)."""
    out = []
    for init, g in rows.groupby("task_init", sort=False):
        pairs, norms = g[g["kind"] == "between_tasks"], g[g["kind"] == "to_pretrained"]
        norm = {(s, int(t)): d for s, t, d in zip(norms["seed"], norms["a"], norms["distance"])}
        closer = [d < min(norm[(s, int(a))], norm[(s, int(b))]) for s, a, b, d in
                  zip(pairs["seed"], pairs["a"], pairs["b"], pairs["distance"])]
        # The cosine of two updates, from the three distances (law of cosines): with equal norms the pair is closer
        # to each other than to W0 exactly when it exceeds 0.5, so it says how far from the claim a case is.
        cosines = [(norm[(s, int(a))] ** 2 + norm[(s, int(b))] ** 2 - d ** 2) / (2 * norm[(s, int(a))] * norm[(s, int(b))])
                   for s, a, b, d in zip(pairs["seed"], pairs["a"], pairs["b"], pairs["distance"])]
        out.append({"task_init": init, "n_seeds": g["seed"].nunique(), "n_tasks": norms["a"].nunique(),
                    "mean_between_tasks": pairs["distance"].mean(), "mean_to_pretrained": norms["distance"].mean(),
                    "max_between_tasks": pairs["distance"].max(), "min_to_pretrained": norms["distance"].min(),
                    "share_pairs_closer": sum(closer) / len(closer) if closer else float("nan"),
                    "mean_cosine": sum(cosines) / len(cosines) if cosines else float("nan")})
    return pd.DataFrame(out)


def fixed_direction_runs(folder: RunFolder, seeds: dict[str, list[int]]) -> pd.DataFrame:
    """Finding 1(b): one row per finished (method, seed) of the comparison: Acc, AAA, forgetting, stored parameters."""
    per_task = folder.gather()
    keep = pd.Series(False, index=per_task.index)
    for method, ss in seeds.items():
        keep |= (per_task["method"] == method) & per_task["seed"].isin(ss)
    runs = run_records(per_task[keep], ["method", "seed"])
    return runs[["method", "seed", "acc", "aaa", "forgetting", "bwt", "stored_params", "train_seconds"]]
