"""Shared fixtures: tiny random ViTs, small Avalanche benchmarks from the shared CIFAR-100, evaluators."""

from __future__ import annotations

import os
import warnings

import pytest
import torch
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.plugins import EvaluationPlugin

from avalanche_sdlora import sdlora_vit
from avalanche_sdlora.assets import default_asset
from avalanche_sdlora.data import split_cifar100

# Under pytest-xdist (pyproject's addopts: two workers), each worker gets its share of the cores: two workers with
# torch's default of one thread per core would run four threads on two cores.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

TINY_IMG = 32  # 2x2 patches + cls token: a 12-block ViT forward costs next to nothing


def _require_cifar():
    if default_asset("cifar100.npz") is None:
        pytest.skip("shared cifar100.npz not found (set $SDLORA_ASSETS)")


def make_evaluator() -> EvaluationPlugin:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "No loggers specified"
        return EvaluationPlugin(accuracy_metrics(stream=True, experience=True), loggers=[])


def stream_acc(results: dict) -> float:
    return float(results["Top1_Acc_Stream/eval_phase/test_stream/Task000"])


@pytest.fixture
def tiny_vit():
    """Factory: a randomly initialised ViT-Tiny (12 blocks, width 192) at 32x32 with SD-LoRA adapters."""

    def build(seed: int = 0, rank: int = 4, name: str = "vit_tiny_patch16_224", **kwargs):
        torch.manual_seed(seed)
        return sdlora_vit(name, img_size=TINY_IMG, rank=rank, pretrained=False, **kwargs).eval()

    return build


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(123)
    return torch.randn(3, 3, TINY_IMG, TINY_IMG, generator=g)


@pytest.fixture
def one_thread():
    """One torch thread during the test: the machine's cores are shared (two threads on two busy cores ran the peers'
    tests 10x slower), and what a fresh process computes with one thread must not depend on the thread count."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def randomize_current_pair(model, seed: int, scale: float = 0.05) -> None:
    """Give the current pair a non-zero B (B starts at 0) so the task's update is non-trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for a in model.adapters:
            a.lora_B.copy_(torch.randn(a.lora_B.shape, generator=g) * scale)
            a.lora_A.copy_(torch.randn(a.lora_A.shape, generator=g) * scale)


@pytest.fixture(scope="session")
def tiny_bench():
    """4 CIFAR-100 classes in 2 experiences, 8 train / 4 test images per class, 32x32."""
    _require_cifar()
    return split_cifar100(n_experiences=2, train_per_class=8, test_per_class=4, img_size=TINY_IMG,
                          classes=list(range(4)))


@pytest.fixture(scope="session")
def cifar30_bench():
    """30 CIFAR-100 classes in 3 experiences, 50 train / 10 test images per class, 64x64."""
    _require_cifar()
    return split_cifar100(n_experiences=3, train_per_class=50, test_per_class=10, img_size=64,
                          classes=list(range(30)))


@pytest.fixture
def make_strategy():
    """Factory: an SD-LoRA strategy with SGD(lr 0.01, momentum 0.9), batch 16, the accuracy evaluator."""

    def build(cls, model, **kwargs):
        kwargs.setdefault("train_mb_size", 16)
        kwargs.setdefault("eval_mb_size", 64)
        kwargs.setdefault("train_epochs", 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        return cls(model=model, optimizer=opt, evaluator=make_evaluator(), device="cpu", **kwargs)

    return build


# Command-line settings of a tiny comparison: 4 (or 6) CIFAR-100 classes, 2 (or 3) experiences, 32 px, 1 epoch.
TINY = ["--classes", "4", "--n-experiences", "2", "--train-per-class", "4", "--test-per-class", "3",
        "--img-size", "32", "--epochs", "1", "--batch-size", "4", "--quiet", "--threads", "1"]
TINY6 = ["--classes", "6", "--n-experiences", "3", "--train-per-class", "4", "--test-per-class", "3",
         "--img-size", "32", "--epochs", "1", "--batch-size", "4", "--quiet", "--threads", "1"]
# RanPAC's reference M = 10000 needs ~3.3 GB and ~25 s per experience on this CPU; the mechanism is the same at 64.
TINY_METHOD_OPTIONS = ["--method-option", "ranpac.M=64"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """Every registered method through ``benchmarks.compare`` on TINY: (run folder, methods)."""
    _require_cifar()
    from benchmarks import compare
    from benchmarks.methods import method_names

    out = tmp_path_factory.mktemp("results")
    methods = list(method_names())
    run_dir = compare.main(TINY + TINY_METHOD_OPTIONS + ["--methods", *methods, "--out", str(out), "--run-id", "t"])
    return run_dir, methods


def fake_run(folder, runs: dict, **settings):
    """A run folder as compare writes it, with made-up rows (tests of reports over several folders).

    ``runs``: {(method, seed): [seen-class accuracy after each experience]}; experience j's own accuracy is
    the seen-class one while it is current, so forgetting and AAA follow from the list. ``settings``: RunConfig
    fields (the protocol's preset otherwise); the identity records them (no input files, no machine).
    """
    import json
    from pathlib import Path

    import numpy as np
    import pandas as pd

    from benchmarks.config import RunConfig
    from benchmarks.identity import labels
    from benchmarks.run_folder import RunFolder

    cfg = RunConfig.for_protocol(**settings)
    folder = RunFolder(Path(folder))
    (folder.path / "parts").mkdir(parents=True)
    for (method, seed), accs in runs.items():
        rows = []
        for i, a in enumerate(accs):
            row = {"method": method, "seed": seed, "class_order_seed": cfg.order_seed(seed), "experience": i,
                   "n_experiences": len(accs), "acc_seen": a}
            row.update({f"acc_exp_{j}": (a if j == i else accs[j] - 0.1 if j < i else np.nan)
                        for j in range(len(accs))})
            row.update({"trainable_params": 10, "stored_params": 20, "update_norm": 1.0, "train_seconds": 1.0,
                        "eval_seconds": 0.5})
            rows.append(row)
        folder.write_part(method, seed, rows)
    seeds = sorted({s for _, s in runs})
    fields = cfg.to_json()
    identity = {k: v for k, v in {**fields, **fields["sdlora"]}.items()
                if k in labels() and k not in ("data", "checkpoint", "threads")}
    folder.write_config({**fields, "methods": sorted({m for m, _ in runs}), "seeds": seeds, "identity": identity})
    folder.write_reports()
    return folder.path
