"""How far a tuning's choices are resolved, and its second stage (``benchmarks.tune --confirm-experiences K``).

One seed scored on the validation images of two experiences leaves every committed choice of
``cifar100-tiny128-full`` within the noise of its runner-up (the tuning's README), and a tied runner-up can end a
10-task run far from the choice (InfLoRA's SGD 0.01 ended 10.1 points above its chosen Adam 5e-3 on order 1995, a
CPU run against a GPU one). The second stage trains only the ties over more experiences, the same rule for every
method, so it costs a few candidates where one more long stage for every candidate would cost all of them again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from avalanche_sdlora.data import N_CLASSES
from avalanche_sdlora.datasets import PAPER_BENCHMARKS, PAPER_PROTOCOLS

from . import predictions
from .config import RunConfig
from .tune_runs import Outcome, candidate_config, choose, failure_key, read_outcome, record_failures, run_candidate
from .tune_space import Recipe


def noise_bound(acc: float, n_images: int) -> float:
    """Twice the standard error of the difference of two independent scores at accuracy ``acc`` on ``n_images``
    validation images, in points: a lead under it is not resolved by one validation set."""
    return 200 * math.sqrt(2 * acc * (1 - acc) / n_images)


def bound_between(best: Outcome, other: Outcome, n_images: int) -> tuple[float, bool]:
    """The noise bound of ``best``'s lead over ``other``, in points, and whether it is paired: twice the paired
    standard error on their validation images where both runs kept their per-image predictions
    (:func:`benchmarks.predictions.paired_difference`: their errors on the same images are correlated, so this is
    the tighter, right one), else :func:`noise_bound` (candidates trained before predictions were kept)."""
    if best.predictions is not None and other.predictions is not None:
        a, b = predictions.load(best.predictions), predictions.load(other.predictions)
        if a.experience == b.experience and np.array_equal(a.y_true, b.y_true):
            return 100 * predictions.paired_difference(a, b).bound, True
    return noise_bound(best.val_acc, n_images), False


def ties(best: Outcome, outcomes: Sequence[Outcome], n_images: int) -> list[Outcome]:
    """The finished candidates other than ``best`` whose score lies within the noise bound of its lead over them
    (:func:`bound_between`), best first."""
    return [o for o in _others(best, outcomes)
            if 100 * (best.val_acc - o.val_acc) < bound_between(best, o, n_images)[0]]


def _others(best: Outcome, outcomes: Sequence[Outcome]) -> list[Outcome]:
    """The finished candidates other than ``best``, best first (the order :func:`choose` ranks by)."""
    done = [o for o in outcomes if o is not best and o.status == "done" and math.isfinite(o.val_acc)]
    return sorted(done, key=lambda o: (o.val_acc, o.val_mean_acc), reverse=True)


def confirm_stage(experiences: int) -> str:
    """The second stage's name: its folder under ``confirm/`` and its key in failures.json."""
    return f"experiences{experiences}"


def confirm_file(experiences: int) -> str:
    """The second stage's choice, written beside ``chosen.json`` (which keeps the first stage's): pass it to
    ``compare --tuned`` to train with it."""
    return f"chosen-confirm{experiences}.json"


def confirm_candidates(method: str, found: Sequence[tuple[Recipe, Outcome]], n_images: int
                       ) -> list[tuple[Recipe, Outcome]]:
    """The first stage's choice and its ties (:func:`ties`): what the second stage trains over more experiences."""
    best = choose([o for _, o in found])
    if best is None:
        return []
    tied = {o.candidate for o in ties(best, [o for _, o in found], n_images)}
    return [(r, o) for r, o in found if o is best] + [(r, o) for r, o in found if o.candidate in tied]


def confirm_outcomes(method: str, cfg: RunConfig, out: Path, pairs: Sequence[tuple[Recipe, Outcome]],
                     failures: dict, *, settings: Mapping[str, Any], experiences: int, train: bool,
                     quiet: bool = True) -> list[Outcome]:
    """The second-stage outcome of each of ``pairs`` (trained on the first ``experiences`` experiences, otherwise as
    in the first stage, into ``confirm/<stage>/<method>/<candidate>``), training those not run when ``train``."""
    stage = confirm_stage(experiences)
    key = failure_key(method, stage)
    found = []
    for recipe, _ in pairs:
        folder = out / "confirm" / stage / method / recipe.key
        if train:
            c_cfg = candidate_config(cfg, method, recipe, settings["validation_per_class"], experiences,
                                     settings["class_order_seed"])
            o = run_candidate(c_cfg, method, recipe, folder, quiet=quiet, failures=failures, failure_key=key)
            record_failures(out / "failures.json", key, failures.get(key, {}))
        else:
            o = read_outcome(method, recipe, folder, failures, key)
        found.append(o)
    return found


def validation_images(cfg: RunConfig, validation_per_class: int, tune_experiences: int) -> int:
    """How many validation images score a candidate after the last tuned experience (the seen classes' held-out
    images): what the margins' sampling noise is computed from."""
    bench = PAPER_PROTOCOLS.get(cfg.protocol)
    classes = cfg.classes or (PAPER_BENCHMARKS[bench[0]].n_classes if bench else N_CLASSES)
    return validation_per_class * (classes * min(tune_experiences, cfg.n_experiences) // cfg.n_experiences)


def margins(outcomes: Sequence[Outcome], n_images: int) -> list[str]:
    """One line per method whose first stage is finished: its choice's lead over its best other finished candidate,
    in validation points, against :func:`noise_bound`, and the candidates within that bound (:func:`ties`)."""
    lines = []
    for method in dict.fromkeys(o.method for o in outcomes):
        mine = [o for o in outcomes if o.method == method]
        best = None if any(o.pending for o in mine) else choose(mine)
        others = _others(best, mine) if best is not None else []
        if not others:
            continue
        lead = 100 * (best.val_acc - others[0].val_acc)
        close = [o.candidate for o in ties(best, mine, n_images)]
        within = f"within it: {', '.join(close)}" if close else "none within it"
        bound, is_paired = bound_between(best, others[0], n_images)
        lines.append(f"- {method}: {best.candidate} ({100 * best.val_acc:.2f}) leads {others[0].candidate} by "
                     f"{lead:.2f}; {'paired bound' if is_paired else 'bound'} {bound:.1f}, {within}")
    return lines


def second_stage(outcomes: Sequence[Outcome], result: Mapping[str, Any], confirmed: Sequence[Outcome]) -> list[str]:
    """The README's lines on the second stage (``--confirm-experiences``): each tied candidate's score after both."""
    k = result["settings"]["confirm_experiences"]
    first = {(o.method, o.candidate): o for o in outcomes}
    lines = ["", f"Second stage (`--confirm-experiences {k}`): the first stage's choice and the candidates within its "
                 f"bound train again on the first {k} experiences (the same validation images, class order and seed) "
                 f"and the highest seen-class validation accuracy after experience {k} is chosen; a method with no "
                 "candidate within the bound keeps its first choice without training again. The choice is "
                 f"`{confirm_file(k)}` (`chosen.json` keeps the first stage's)."]
    if confirmed:
        lines += ["", f"| method | candidate | validation acc, first stage | validation acc after {k} experiences | "
                      "train s | chosen |", "|---|---|---|---|---|---|"]
    for o in confirmed:  # each is a finished first-stage candidate trained again
        one = first[(o.method, o.candidate)]
        pick = result["methods"].get(o.method, {}).get("candidate") == o.candidate
        acc = f"{100 * o.val_acc:.2f}" if o.status == "done" else o.status
        secs = f"{o.train_seconds:.0f}" if o.status == "done" else ""
        lines.append(f"| {o.method} | {o.candidate} | {100 * one.val_acc:.2f} | {acc} | {secs} | "
                     f"{'**yes**' if pick else ''} |")
    changed = [f"{m} ({v['confirmed']['first_choice']} -> {v['candidate']})" for m, v in result["methods"].items()
               if v.get("confirmed") and v["confirmed"]["first_choice"] != v.get("candidate")]
    lines += ["", f"Choices the second stage changed: {', '.join(changed) if changed else 'none'}."]
    return lines
