"""Whether a long sequence's loss lies in the features or in the head (issue 32), measured from a run's checkpoints.

SD-LoRA ends a 20-task sequence below SimpleCIL (the frozen backbone's class means) while its magnitudes, its update
norm and its head's row norms stay bounded (``benchmarks.collapse``). Two things can lose the accuracy: the adapted
backbone's features (drifted away from what the old classes need) or the linear head (old rows fit to earlier
features, the newest rows trained last). The probe separates them with one change at a time, on the run's own test
images and class order, after its last experience:

* ``own_head_acc_pct``: the model as it was evaluated (its own head), recomputed here, so that it must equal the
  run's final seen-class accuracy (``run_acc_pct``): the check that the probe read the right model;
* ``prototype_acc_pct``: SimpleCIL's classifier (cosine similarity to class means of the training images, the
  reference form of ``benchmarks.methods.simplecil``) on the run's final backbone, every update merged in;
* ``frozen_prototype_acc_pct``: the same classifier on the pretrained backbone, i.e. SimpleCIL itself;
* ``newest_task_predictions_pct``: the share of test images the run's own head assigns to the newest task's classes
  (the newest task holds ``newest_task_share_pct`` of the test images): a head biased towards the last task
  predicts it far more often;
* ``head_task_pct`` and ``head_within_task_pct``: the run's own head split into its two jobs. The first is the share
  of test images whose predicted class belongs to their own task (the head told the tasks apart); the second the
  accuracy when its argmax is restricted to the image's own task's classes (task-incremental accuracy: the head
  told the task's classes apart). The loss trains each task's rows only against that task's classes, so nothing
  trains the first job: a head that keeps the second and fails the first lost its calibration across tasks.

``prototype_acc_pct`` above ``frozen_prototype_acc_pct``: the adapted features still separate every class seen, better
than the pretrained ones, and what the run loses against SimpleCIL is its head. Below it: the features themselves
drifted. The class means use the training images of every seen class, which SD-LoRA does not keep: this is a probe of
what its features hold, not a method. Only models built as an ``SDLoRAViT`` (SD-LoRA, its RR and KD variants, seq-lora)
are probed; the others are skipped.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from avalanche_sdlora.atomic import write_text
from avalanche_sdlora.model import SDLoRAViT

from . import inputs, runner
from .findings.sources import build_strategy, folder_config, load_model
from .run_folder import RunFolder

PROBE_FILE = "probe.csv"
KEYS = ["method", "class_order_seed"]
PROBE_BASELINE = "simplecil"  # the classifier the probe puts on each backbone


def _test_set(benchmark):
    """Every test image of the stream (all classes are seen after the last experience), in eval transforms."""
    return torch.utils.data.ConcatDataset([e.dataset.eval() for e in benchmark.test_stream])


@torch.no_grad()
def logits_and_labels(model: torch.nn.Module, dataset, cfg) -> tuple[Tensor, Tensor]:
    """The model's logits (float32) and the label of every image of ``dataset``, under the run's evaluation autocast."""
    model.eval()
    device = torch.device(cfg.device)
    logits, labels = [], []
    for x, y, *_ in DataLoader(dataset, batch_size=cfg.eval_batch_size, num_workers=cfg.workers):
        with runner.evaluation_autocast(cfg):
            logits.append(model(x.to(device)).float().cpu())
        labels.append(y)
    return torch.cat(logits), torch.cat(labels)


def predictions(model: torch.nn.Module, dataset, cfg) -> tuple[Tensor, Tensor]:
    """The model's predicted class and the label of every image of ``dataset``, under the run's evaluation autocast."""
    logits, labels = logits_and_labels(model, dataset, cfg)
    return logits.argmax(1), labels


def task_scores(logits: Tensor, labels: Tensor, task_of_class: Tensor) -> tuple[float, float]:
    """(percent of images predicted inside their own task's classes, percent right when the prediction is restricted
    to them). ``task_of_class[c]``: the experience that holds class ``c`` (-1 for a class of no experience)."""
    own = task_of_class[labels]
    inside = task_of_class[None, :] == own[:, None]
    within = logits.masked_fill(~inside, float("-inf")).argmax(1)
    return _percent(inside.gather(1, logits.argmax(1, keepdim=True)).squeeze(1)), _percent(within == labels)


def _task_of_class(benchmark, n_classes: int) -> Tensor:
    """Per class, the experience of the stream that holds it (-1 for none): one walk over the stream serves every
    per-task count of the probe."""
    task = torch.full((n_classes,), -1, dtype=torch.long)
    for k, exp in enumerate(benchmark.train_stream):
        task[torch.as_tensor(sorted(exp.classes_in_this_experience))] = k
    return task


def _percent(hits: Tensor) -> float:
    """Percent of True in ``hits``, counted exactly (a float32 mean is off in the 7th digit)."""
    return 100 * int(hits.sum()) / len(hits)


def backbone_state(model: SDLoRAViT) -> dict[str, Tensor]:
    """The final backbone's timm state dict with every update merged into the qkv weights (the head left out)."""
    return {k: v for k, v in model.export_timm_state_dict().items() if not k.startswith("head.")}


def prototype_accuracy(folder: RunFolder, seed: int, benchmark, test, state: dict[str, Tensor] | None) -> float:
    """SimpleCIL's accuracy on ``test`` after its class means of every experience, on the backbone ``state``
    (None: the pretrained one, SimpleCIL itself). The strategy is the run's own ``simplecil`` build."""
    cfg = folder_config(folder)
    torch.manual_seed(seed)
    strategy = build_strategy(folder, PROBE_BASELINE, seed=seed)
    if state is not None:
        strategy.model.backbone.load_state_dict(state, strict=True)
    for exp in benchmark.train_stream:
        strategy.train(exp, num_workers=cfg.workers)
    pred, y = predictions(strategy.model, test, cfg)
    return _percent(pred == y)


def probe_run(folder: RunFolder, method: str, seed: int, frozen: dict[int, float]) -> dict | None:
    """The probe's row for (method, seed) of ``folder`` from its last checkpoint; None if it is no SDLoRAViT.
    ``frozen``: SimpleCIL's accuracy per class order, filled on first need (one order's is every method's)."""
    cfg = folder_config(folder)
    last = cfg.n_experiences - 1
    if not isinstance(build_strategy(folder, method, seed=seed).model, SDLoRAViT):
        return None  # a peer's checkpoint is another model's state (benchmarks.peer_checkpoint)
    model = load_model(folder, method, seed, last)
    order = cfg.order_seed(seed)
    benchmark = inputs.make_benchmark(cfg, seed)
    test = _test_set(benchmark)
    logits, y = logits_and_labels(model, test, cfg)
    pred = logits.argmax(1)
    task_of_class = _task_of_class(benchmark, logits.shape[1])
    head_task, head_within = task_scores(logits, y, task_of_class)
    newest = len(benchmark.train_stream) - 1
    if order not in frozen:
        frozen[order] = prototype_accuracy(folder, seed, benchmark, test, None)
    part = pd.read_csv(folder.part(method, seed)).sort_values("experience")
    return {"method": method, "class_order_seed": order, "tasks": cfg.n_experiences,
            "run_acc_pct": float(100 * part["acc_seen"].iloc[-1]),
            "own_head_acc_pct": _percent(pred == y),
            "prototype_acc_pct": prototype_accuracy(folder, seed, benchmark, test, backbone_state(model)),
            "frozen_prototype_acc_pct": frozen[order],
            "newest_task_predictions_pct": _percent(task_of_class[pred] == newest),
            "newest_task_share_pct": _percent(task_of_class[y] == newest),
            "head_task_pct": head_task, "head_within_task_pct": head_within,
            "test_images": len(y)}


def probe(folders: Sequence[RunFolder], out: Path, methods: Sequence[str] | None = None,
          taken: Collection[tuple[Path, str, int]] | None = None) -> pd.DataFrame:
    """Probe every finished (method, seed) of ``folders`` that has its last checkpoint and is an SDLoRAViT (or those of
    ``methods``; or of ``taken``, (folder path, method, seed) triples: the runs a report holds) and merge the rows
    into ``out/probe.csv`` (a later order replaces nothing it did not probe)."""
    rows, frozen = [], {}
    for folder in folders:
        cfg = folder_config(folder)
        for method, seed in folder.part_names():
            if not folder.part_complete(method, seed, cfg.n_experiences) or (methods is not None and method not in methods):
                continue
            if taken is not None and (folder.path, method, seed) not in taken:
                continue
            if not (folder.checkpoints(method, seed) / f"exp{cfg.n_experiences - 1}.json").exists():
                continue
            row = probe_run(folder, method, seed, frozen)
            if row is not None:
                rows.append(row)
    new = pd.DataFrame.from_records(rows)
    path = Path(out) / PROBE_FILE
    if path.exists() and len(new):
        old = pd.read_csv(path)
        keep = ~old.set_index(KEYS).index.isin(new.set_index(KEYS).index)
        new = pd.concat([old[keep], new], ignore_index=True)
    elif path.exists():
        new = pd.read_csv(path)
    if len(new):
        Path(out).mkdir(parents=True, exist_ok=True)
        write_text(path, new.sort_values(KEYS).to_csv(index=False))
    return new


def read(out: Path) -> pd.DataFrame | None:
    """The probe rows kept in a report folder, if any."""
    path = Path(out) / PROBE_FILE
    return pd.read_csv(path) if path.exists() else None


def verdict(row: pd.Series) -> str:
    """Where the accuracy went, from one probe row."""
    if not np.isfinite(row["prototype_acc_pct"]):
        return "n/a"
    return "the head" if row["prototype_acc_pct"] >= row["frozen_prototype_acc_pct"] else "the features"
