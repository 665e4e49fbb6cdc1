"""Finding 3, interpolation: accuracy and loss on tasks 1 and 2 along theta(l) = (1 - l) theta1 + l theta2.

theta1 and theta2 are a run's models after its first and second experience (their checkpoints). What is
interpolated: the dense update of every adapted weight, W(l) = W0 + (1 - l) dW1 + l dW2, and the head rows both
models have (task 1's classes; frozen after task 1 in SD-LoRA and seq-lora, so equal in both). Task 2's rows exist
only in theta2 and are taken from it at every l. Each point is evaluated by the run's own strategy (``strategy.eval``
on the first two test experiences, under the run's evaluation autocast), and scored with two heads:

* ``seen``: every row of theta2 (tasks 1 and 2), the class-incremental accuracy the run recorded after task 2;
* ``own``: the rows of the test set's own task only (for task 1, exactly theta1's head).

At l = 1 the ``seen`` scores are theta2's recorded ``acc_exp_0`` / ``acc_exp_1``; at l = 0 the ``own`` score on
task 1 is theta1's recorded ``acc_exp_0`` (``tests/test_findings.py`` checks both, to the image).
"""

from __future__ import annotations

import copy
from collections import defaultdict
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin

from .. import runner
from ..run_folder import RunFolder
from .sources import benchmark_for, build_strategy, folder_config, load_model

if TYPE_CHECKING:
    import pandas as pd


def points(n: int) -> list[float]:
    """n evenly spaced l in [0, 1], 0 and 1 exact."""
    if n < 2:
        raise ValueError(f"--points must be at least 2 (the two models), got {n}")
    return [i / (n - 1) for i in range(n)]


@torch.no_grad()
def path_model(fresh, theta1, theta2, lam: float):
    """A copy of ``fresh`` (the run's model holding no task, so its adapters add nothing to W0) whose adapted weights
    are W0 + (1 - lam) dW1 + lam dW2 and whose head is theta2's with the rows theta1 has interpolated.

    The weight is formed as the adapters' forward forms it (W0 + the fused update; call it under the context the
    evaluation runs in, autocast included), so at lam = 1 (or 0) the network is theta2's (theta1's) exactly.
    """
    model = copy.deepcopy(fresh)
    if any(a.stored_rank or a.lora_A is not None for a in model.adapters):
        raise ValueError("path_model needs a model holding no task (a freshly built one) as fresh")
    for a, a1, a2 in zip(model.adapters, theta1.adapters, theta2.adapters):
        delta = (1 - lam) * a1.delta_weight() + lam * a2.delta_weight()
        dq, dv = delta.unbind(0)
        a.base_layer.weight.copy_(a.base_layer.weight + torch.cat([dq, torch.zeros_like(dq), dv], dim=0))
    head = copy.deepcopy(theta2.head)
    n1 = len(theta1.head.weights)
    if not torch.equal(head.class_ids[:len(theta1.head.class_ids)], theta1.head.class_ids):
        raise ValueError("theta2's head does not start with theta1's classes; pass two models of one run")
    for k in range(n1):
        for mine, p1, p2 in ((head.weights[k], theta1.head.weights[k], theta2.head.weights[k]),
                             (head.biases[k], theta1.head.biases[k], theta2.head.biases[k])):
            mine.copy_((1 - lam) * p1 + lam * p2)
    model.head = head
    return model.eval()


class HeadScores(SupervisedPlugin):
    """Accuracy and loss per evaluated experience from the eval logits, with every column (``seen``) and with the
    columns of that experience's own classes only (``own``): argmax as Avalanche's accuracy takes it."""

    def __init__(self, own_columns: dict[int, torch.Tensor]) -> None:
        super().__init__()
        self.own_columns = own_columns
        self.sums: dict[tuple[int, str], list[float]] = defaultdict(lambda: [0, 0, 0.0])  # n, correct, loss sum

    def after_eval_forward(self, strategy, **kwargs) -> None:
        exp = int(strategy.experience.current_experience)
        out, y = strategy.mb_output.detach(), strategy.mb_y
        cols = self.own_columns[exp].to(out.device)
        own = out.index_select(1, cols)
        for head, logits, target in (("seen", out, y), ("own", own, torch.searchsorted(cols, y))):
            s = self.sums[(exp, head)]
            s[0] += len(y)
            s[1] += int((torch.max(logits, 1)[1] == target).sum())
            s[2] += float(F.cross_entropy(logits.float(), target, reduction="sum"))


def interpolation_rows(folder: RunFolder, method: str, seed: int, lams: list[float]) -> list[dict]:
    """One row per (l, test experience 0 or 1, head): accuracy, loss, images, correct."""
    cfg = folder_config(folder)
    test = benchmark_for(cfg).test_stream[:2]
    theta1, theta2 = load_model(folder, method, seed, 0), load_model(folder, method, seed, 1)
    ids1 = theta1.head.class_ids.cpu()
    ids2 = theta2.head.class_ids.cpu()
    own = {0: torch.sort(ids1).values, 1: torch.sort(ids2[~torch.isin(ids2, ids1)]).values}
    scores = HeadScores(own)
    strategy = build_strategy(folder, method, plugins=[scores])
    fresh = strategy.model
    rows = []
    for lam in lams:
        scores.sums.clear()
        # The updates are formed under the evaluation's autocast, as the adapters' forward forms them there.
        with runner.evaluation_autocast(cfg):
            strategy.model = path_model(fresh, theta1, theta2, lam)
            strategy.eval(test, num_workers=cfg.workers)
        for (exp, head), (n, correct, loss) in sorted(scores.sums.items()):
            rows.append({"seed": seed, "lam": lam, "test_experience": exp, "head": head, "accuracy": correct / n,
                         "loss": loss / n, "n_images": n, "n_correct": correct})
    return rows


def summarize_paths(rows: pd.DataFrame) -> pd.DataFrame:
    """Per method (means over seeds): task 1's largest drop along the path and its loss barrier (``own`` head,
    against l = 0), and task 2's accuracy at l = 0 and l = 1 (``own`` head), plus the ``seen`` ends; from
    f3_interpolation.csv's rows (``accuracy_pct``), so in percent and points (:mod:`benchmarks.units`)."""
    import pandas as pd

    out = []
    for method, g in rows.groupby("method", sort=False):
        m = g.groupby(["test_experience", "head", "lam"])[["accuracy_pct", "loss"]].mean()
        t1, t2 = m.loc[(0, "own")], m.loc[(1, "own")]
        s1, s2 = m.loc[(0, "seen")], m.loc[(1, "seen")]
        a1, a2, b1, b2 = t1["accuracy_pct"], t2["accuracy_pct"], s1["accuracy_pct"], s2["accuracy_pct"]
        out.append({"method": method, "n_seeds": g["seed"].nunique(), "task1_acc_start_pct": a1.iloc[0],
                    "task1_acc_min_pct": a1.min(), "task1_acc_end_pct": a1.iloc[-1],
                    "task1_largest_drop_pts": a1.iloc[0] - a1.min(),
                    "task1_loss_barrier": t1["loss"].max() - t1["loss"].iloc[0],
                    "task2_acc_start_pct": a2.iloc[0], "task2_acc_end_pct": a2.iloc[-1],
                    "seen_task1_acc_end_pct": b1.iloc[-1], "seen_task2_acc_end_pct": b2.iloc[-1]})
    return pd.DataFrame(out)
