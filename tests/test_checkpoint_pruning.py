"""Issue 32: a run keeps only the checkpoints resume needs (the latest two), and a resumed run still equals an
uninterrupted one, in a plain Avalanche script (CheckpointPlugin) and in the harness (benchmarks.compare)."""

import warnings

import pandas as pd
import pytest
import torch
from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
from avalanche.benchmarks.scenarios.task_aware import with_task_labels
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.plugins import EvaluationPlugin
from conftest import _require_cifar
from test_checkpoint_plugin import Crash, _assert_same_weights, _loop, _model
from test_resume import _rows

from avalanche_sdlora import SDLoRA
from avalanche_sdlora.checkpoint import (CheckpointPlugin, checkpoint_experiences, prune_checkpoints, save_checkpoint)
from benchmarks import compare, peer_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # one torch thread (tests/conftest.py)

EXPERIENCES = 5


def _benchmark():
    """10 classes in 5 experiences of random 32x32 images."""
    g = torch.Generator().manual_seed(7)

    def split(n_per_class):
        y = torch.arange(2 * EXPERIENCES).repeat_interleave(n_per_class)
        return _make_taskaware_tensor_classification_dataset(torch.randn(len(y), 3, 32, 32, generator=g), y)

    return with_task_labels(class_incremental_benchmark({"train": split(4), "test": split(2)},
                                                        class_order=list(range(2 * EXPERIENCES)),
                                                        num_experiences=EXPERIENCES))


def _strategy(ckpt_dir, plugins=(), **keep):
    model = _model()
    plugin = CheckpointPlugin(ckpt_dir, config={"seed": 0}, **keep)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ev = EvaluationPlugin(accuracy_metrics(stream=True), loggers=[])
    s = SDLoRA(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), train_mb_size=4,
               evaluator=ev, plugins=[plugin, *plugins])
    return s, plugin


def test_prune_keeps_the_newest_usable_checkpoints(tmp_path):
    model = _model()
    for k in range(4):
        save_checkpoint(tmp_path, k, model)
    assert prune_checkpoints(tmp_path) == [0, 1]
    assert checkpoint_experiences(tmp_path) == [2, 3] and not list(tmp_path.glob("exp[01].*"))
    assert prune_checkpoints(tmp_path) == []  # already pruned
    save_checkpoint(tmp_path, 4, model)
    (tmp_path / "exp4.safetensors").write_bytes(b"truncated")  # damaged: not counted among the kept ones
    assert prune_checkpoints(tmp_path) == []  # 2 and 3 are the newest usable ones; the damaged 4 is newer
    assert checkpoint_experiences(tmp_path) == [2, 3, 4]
    assert prune_checkpoints(tmp_path, keep=1) == [2]
    assert checkpoint_experiences(tmp_path) == [3, 4]
    with pytest.raises(ValueError, match="keep must be a positive integer"):
        prune_checkpoints(tmp_path, keep=0)
    with pytest.raises(ValueError, match="keep must be a positive integer"):
        CheckpointPlugin(tmp_path, keep=0)


def test_plugin_keeps_two_and_resumes_to_the_uninterrupted_run(tmp_path):
    bm = _benchmark()
    full, full_plugin = _strategy(tmp_path / "full", keep=None)
    _loop(full, bm)
    full_plugin.save(full)
    assert checkpoint_experiences(tmp_path / "full") == list(range(EXPERIENCES))  # keep=None: one per experience

    cut, _ = _strategy(tmp_path / "cut", plugins=[Crash(at=4)])
    with pytest.raises(KeyboardInterrupt):
        _loop(cut, bm)
    assert checkpoint_experiences(tmp_path / "cut") == [2, 3]

    # the latest damaged: the one kept before it resumes, one experience earlier, to the same result
    (tmp_path / "cut" / "exp3.safetensors").write_bytes(b"damaged")
    resumed, plugin = _strategy(tmp_path / "cut")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "skipping checkpoint exp3"
        start = plugin.resume(resumed)
    assert start == 3
    _loop(resumed, bm, start)
    plugin.save(resumed)
    _assert_same_weights(full.model, resumed.model)
    assert checkpoint_experiences(tmp_path / "cut") == [3, 4]


TINY8 = ["--classes", "8", "--n-experiences", "4", "--train-per-class", "4", "--test-per-class", "3", "--img-size",
         "32", "--epochs", "1", "--batch-size", "4", "--quiet", "--threads", "1", "--methods", "sdlora"]


def test_compare_keeps_the_last_two_and_a_killed_run_resumes_to_the_same_rows(tmp_path, monkeypatch):
    _require_cifar()
    clean = compare.main(TINY8 + ["--keep-checkpoints", "all", "--out", str(tmp_path), "--run-id", "clean"])
    assert checkpoint_experiences(clean / "checkpoints" / "sdlora-seed0") == [0, 1, 2, 3]

    real_save = peer_checkpoint.save

    def kill_after_exp3_checkpoint(strategy, directory, experience, *a, **kw):  # before experience 3's row is written
        path = real_save(strategy, directory, experience, *a, **kw)
        if experience == 3:
            raise KeyboardInterrupt("kill")
        return path

    monkeypatch.setattr(peer_checkpoint, "save", kill_after_exp3_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        compare.main(TINY8 + ["--out", str(tmp_path), "--run-id", "killed"])
    killed = tmp_path / "cifar100-tiny128" / "killed"
    ckpt = killed / "checkpoints" / "sdlora-seed0"
    assert checkpoint_experiences(ckpt) == [1, 2, 3]  # pruned after each row: 2 resumes, 3 has no row yet
    monkeypatch.setattr(peer_checkpoint, "save", real_save)
    compare.main(TINY8 + ["--resume", str(killed)])
    assert checkpoint_experiences(ckpt) == [2, 3]
    pd.testing.assert_frame_equal(_rows(killed / "parts" / "sdlora-seed0.csv"),
                                  _rows(clean / "parts" / "sdlora-seed0.csv"))
