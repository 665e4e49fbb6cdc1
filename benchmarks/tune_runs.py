"""One tuning candidate (:mod:`benchmarks.tune`): its run configuration, its training and its outcome.

A candidate is a :mod:`benchmarks.compare` run folder trained on validation images (``candidates/<method>/<key>``,
or ``confirm/<stage>/<method>/<key>`` in the second stage), so an interrupted tuning resumes where it stopped; a
candidate that fails (e.g. a diverging loss) is recorded in ``failures.json`` and never chosen.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor, as_completed
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from avalanche_sdlora.atomic import write_text

from . import compare
from .config import RunConfig
from .pool import exit_with_parent
from .run_folder import RunFolder
from .tune_space import Recipe

TUNE_SEED = 0
NOT_RUN = "not run yet"  # an Outcome's status before its candidate has trained


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def candidate_config(cfg: RunConfig, method: str, recipe: Recipe, validation_per_class: int,
                     tune_experiences: int, order: int) -> RunConfig:
    """The RunConfig of one candidate: the protocol's, on one class order, validation images, first experiences."""
    kept = tuple(o for o in cfg.method_options if o[0] != method)
    return cfg.replace(class_order="fixed", class_order_seed=order, validation_per_class=validation_per_class,
                       first_experiences=tune_experiences, test_per_class=None,
                       method_options=kept + recipe.method_options(method))


@dataclass
class Outcome:
    method: str
    candidate: str
    optimizer: str
    lr: float
    options: str
    source: str
    status: str  # "done" or "failed: <message>"
    val_acc: float = float("nan")  # seen-class validation accuracy after the last tuned experience
    val_mean_acc: float = float("nan")  # its mean over the tuned experiences (the tie-break)
    train_seconds: float = float("nan")
    eval_seconds: float = float("nan")
    folder: str = ""
    machine: str = ""  # where it trained (its seconds are that machine's): one grid may span two machines
    # its per-image validation predictions (benchmarks.predictions), when its run wrote them: paired bounds. A local
    # path, so never part of the record (candidates.csv is committed)
    predictions: Path | None = field(default=None, repr=False)

    def record(self) -> dict[str, Any]:
        """The fields candidates.csv and confirm.csv hold (all but the local predictions path)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "predictions"}

    @property
    def pending(self) -> bool:
        """Not run yet (neither done nor failed): no score to choose by or to extend from."""
        return self.status == NOT_RUN


def _machine(folder: Path) -> str:
    """The machine a candidate trained on, as its run folder recorded it (``device_name``)."""
    return str(RunFolder(folder).read_config().get("device_name") or "")


def _scores(folder: Path) -> dict[str, float]:
    rows = pd.read_csv(folder / "per_task.csv").sort_values("experience")
    return {"val_acc": float(rows["acc_seen"].iloc[-1]), "val_mean_acc": float(rows["acc_seen"].mean()),
            "train_seconds": float(rows["train_seconds"].sum()), "eval_seconds": float(rows["eval_seconds"].sum())}


def _base(method: str, recipe: Recipe, folder: Path) -> dict[str, Any]:
    return dict(method=method, candidate=recipe.key, optimizer=recipe.optimizer, lr=recipe.lr,
                options=json.dumps(dict(recipe.options)), source=recipe.source, folder=folder.name)


def read_outcome(method: str, recipe: Recipe, folder: Path, failures: Mapping[str, Mapping[str, str]],
                 failure_key: str | None = None) -> Outcome:
    """The outcome of one candidate as its folder holds it, training nothing: done, failed, or "not run yet".
    ``failure_key``: where ``failures`` holds this stage's failures of ``method`` (default: ``method``)."""
    base = _base(method, recipe, folder)
    mine = failures.get(failure_key or method, {})
    if recipe.key in mine:
        return Outcome(**base, status=f"failed: {mine[recipe.key]}")
    if not RunFolder(folder).is_done():
        return Outcome(**base, status=NOT_RUN)
    kept = RunFolder(folder).predictions(method, TUNE_SEED)
    return Outcome(**base, status="done", **_scores(folder), machine=_machine(folder),
                   predictions=kept if kept.exists() else None)


def run_candidate(cfg: RunConfig, method: str, recipe: Recipe, folder: Path, *, quiet: bool, failures: dict,
                  failure_key: str | None = None) -> Outcome:
    """Train one candidate into ``folder`` (resuming it if it has begun); a failure is recorded (under
    ``failure_key``, default ``method``), never chosen."""
    run = RunFolder(folder)
    key = failure_key or method
    if recipe.key not in failures.get(key, {}) and not run.is_done():
        try:
            compare.run(cfg, [method], [TUNE_SEED], run, quiet=quiet, resume=run.has_config(),
                        command=f"benchmarks.tune candidate {method} {recipe.key}")
        except SystemExit as exc:  # compare names the failure (e.g. a diverging loss); the candidate is out
            message = " ".join(str(exc.code).split())[:300]
            failures.setdefault(key, {})[recipe.key] = message
    return read_outcome(method, recipe, folder, failures, key)


def _candidate_worker(job: tuple) -> tuple[str, str, str | None]:
    """One candidate in a spawned process (``--jobs``): trains it into its folder; returns its failure, if any."""
    torch.set_num_threads(1)
    method, recipe, config, folder, quiet, key = job
    failures: dict[str, dict[str, str]] = {}
    run_candidate(RunConfig.from_json(config), method, recipe, Path(folder), quiet=quiet, failures=failures,
                  failure_key=key)
    return key, recipe.key, failures.get(key, {}).get(recipe.key)


def run_in_parallel(todo: Sequence[tuple[str, Recipe, RunConfig, Path]], jobs: int, quiet: bool,
                     failures: dict[str, dict[str, str]], failures_path: Path, stage: str | None = None) -> None:
    """Train the candidates ``todo`` in ``jobs`` spawned processes, one torch thread each (a many-core machine or a
    GPU shared by several); each candidate's folder is its own, so they never write the same file. Failures are
    recorded as they come; the serial pass after it then only reads the scores."""
    payload = [(m, recipe, c_cfg.to_json(), str(folder), quiet, failure_key(m, stage))
               for m, recipe, c_cfg, folder in todo]
    with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=exit_with_parent) as executor:
        for future in as_completed([executor.submit(_candidate_worker, job) for job in payload]):
            method, key, failure = future.result()
            if failure is not None:
                failures.setdefault(method, {})[key] = failure
                record_failures(failures_path, method, failures[method])
            if not quiet:
                print(f"[tune {method}] {key}: {'failed: ' + failure if failure else 'trained'}", flush=True)


def record_failures(path: Path, method: str, mine: Mapping[str, str]) -> None:
    """Write ``method``'s failed candidates into ``path``, keeping what another process wrote for other methods."""
    data = json.loads(path.read_text()) if path.exists() else {}
    data[method] = dict(mine)
    write_json(path, {m: v for m, v in data.items() if v})


def choose(outcomes: Sequence[Outcome]) -> Outcome | None:
    """The candidate with the highest validation accuracy (ties: the higher mean over the tuned experiences)."""
    done = [o for o in outcomes if o.status == "done" and math.isfinite(o.val_acc)]
    return max(done, key=lambda o: (o.val_acc, o.val_mean_acc), default=None)


def failure_key(method: str, stage: str | None) -> str:
    """Where failures.json keeps a stage's failures of ``method``: its name (the first stage) or ``method@stage``."""
    return f"{method}@{stage}" if stage else method
