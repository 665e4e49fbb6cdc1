"""CheckpointPlugin: a plain Avalanche script resumes exactly from the last finished experience."""

import pytest
import torch
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.plugins import EvaluationPlugin

from avalanche_sdlora import SDLoRAKD, sdlora_vit
from avalanche_sdlora.checkpoint import CheckpointPlugin, load_checkpoint
from avalanche_sdlora.data import split_cifar100


def _bench():
    return split_cifar100(n_experiences=3, train_per_class=4, test_per_class=2, img_size=32, classes=list(range(6)))


def _strategy(ckpt_dir, seed=0):
    torch.manual_seed(seed)
    model = sdlora_vit("vit_tiny_patch16_224", img_size=32, rank=2)
    plugin = CheckpointPlugin(ckpt_dir, config={"seed": seed})
    ev = EvaluationPlugin(accuracy_metrics(stream=True), loggers=[])
    s = SDLoRAKD(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                 train_mb_size=4, evaluator=ev, plugins=[plugin])
    return s, plugin


def test_plugin_resume_equals_uninterrupted(tmp_path):
    bm = _bench()
    full, _ = _strategy(tmp_path / "full")
    for exp in bm.train_stream:
        full.train(exp)

    first, _ = _strategy(tmp_path / "cut")
    first.train(bm.train_stream[0])  # "killed" after experience 0
    resumed, plugin = _strategy(tmp_path / "cut")
    start = plugin.resume(resumed)
    assert start == 1
    for exp in bm.train_stream[start:]:
        resumed.train(exp)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_checkpoint_from_other_configuration_is_refused(tmp_path):
    s, _ = _strategy(tmp_path)
    s.train(_bench().train_stream[0])
    model = sdlora_vit("vit_tiny_patch16_224", img_size=32, rank=2)
    with pytest.raises(ValueError, match=r"another configuration: \{'seed': \(0, 1\)\}"):
        load_checkpoint(tmp_path, 0, model, config={"seed": 1})
    wide = sdlora_vit("vit_small_patch16_224", img_size=32, rank=2)
    with pytest.raises(ValueError, match="does not match this model"):
        load_checkpoint(tmp_path, 0, wide)
