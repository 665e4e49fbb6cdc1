"""``ncm`` checkpoints: Avalanche's NCMClassifier keeps its means in a buffer that is None until the first experience
and in a dictionary that also holds zero vectors for classes only evaluated so far; a restored strategy must hold
both exactly and learn the next experience as the uninterrupted one does."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import DataLoader

from avalanche_sdlora import create_backbone
from avalanche_sdlora.checkpoint import load_state
from benchmarks import peer_checkpoint
from benchmarks.peers.ncm import NCMStrategy

from conftest import TINY_IMG, make_evaluator

CONFIG = {"method": "ncm", "seed": 0}


def build(seed: int) -> NCMStrategy:
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "random backbone"
        backbone = create_backbone("vit_tiny_patch16_224", img_size=TINY_IMG)
    return NCMStrategy(backbone=backbone, train_mb_size=8, train_epochs=1, eval_mb_size=32, device="cpu",
                       evaluator=make_evaluator())


def snapshot(strategy: NCMStrategy) -> dict:
    ncm = strategy.model[1]
    return {"state": {k: v.clone() for k, v in strategy.model.state_dict().items()},
            "dict": {k: v.clone() for k, v in ncm.class_means_dict.items()}, "max_class": ncm.max_class}


def assert_same(a: dict, b: dict) -> None:
    assert a["state"].keys() == b["state"].keys()
    assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
    assert list(a["dict"]) == list(b["dict"])  # same classes, same order
    assert all(torch.equal(a["dict"][k], b["dict"][k]) for k in a["dict"])
    assert a["max_class"] == b["max_class"]


def test_a_restored_ncm_holds_its_means_and_learns_the_next_experience_as_the_uninterrupted_one(tiny_bench, tmp_path,
                                                                                                 one_thread):
    train, test = tiny_bench.train_stream, tiny_bench.test_stream
    images = torch.cat([mb[0] for exp in test for mb in DataLoader(exp.dataset.eval(), batch_size=64)])
    clean = build(seed=0)
    clean.train(train[0])
    clean.eval(test)  # every class evaluated: the classes of experience 1 enter the dictionary as zero vectors
    after_first = snapshot(clean)
    assert sorted(after_first["dict"]) == [0, 1, 2, 3] and not after_first["dict"][3].any()
    peer_checkpoint.save(clean, tmp_path, 0, config=CONFIG)
    clean.train(train[1])
    clean.eval(test)
    expected = snapshot(clean)
    with torch.no_grad():
        expected_logits = clean.model.eval()(images)
    assert expected["dict"][3].any()  # experience 1 wrote its means

    resumed = build(seed=1)  # another random backbone: it must come back from the checkpoint
    assert resumed.model[1].class_means is None
    extra = peer_checkpoint.load(resumed, tmp_path, 0, config=CONFIG)
    peer_checkpoint.restore_strategy_state(resumed, extra)
    assert_same(snapshot(resumed), after_first)
    resumed.train(train[1])
    resumed.eval(test)
    assert_same(snapshot(resumed), expected)
    with torch.no_grad():
        assert torch.equal(resumed.model.eval()(images), expected_logits)


def test_a_checkpoint_of_another_structure_is_refused(tiny_bench, tmp_path, one_thread):
    strategy = build(seed=0)
    peer_checkpoint.save(strategy, tmp_path, 0, config=CONFIG)  # nothing learnt yet: no means
    strategy.train(tiny_bench.train_stream[0])
    peer_checkpoint.save(strategy, tmp_path, 1, config=CONFIG)
    tensors_0, structure_0, _ = load_state(tmp_path, 0)
    tensors_1, structure_1, _ = load_state(tmp_path, 1)
    with pytest.raises(ValueError, match=r"NCMStrategy: the checkpoint does not fit .*unexpected \['1\.class_means'\]"):
        build(seed=0).restore_checkpoint(tensors_1, structure_0)  # the means of one experience, a structure of none
    with pytest.raises(ValueError, match=r"NCMStrategy: the checkpoint does not fit .*missing \['1\.class_means'\]"):
        build(seed=0).restore_checkpoint(tensors_0, structure_1)
    with pytest.raises(ValueError, match=r"classes \[7\] have no row among its 2 class means"):
        build(seed=0).restore_checkpoint(tensors_1, {**structure_1, "classes": [0, 1, 7]})
    with pytest.raises(ValueError, match=r"structure \['classes'\] is not ncm's"):
        build(seed=0).restore_checkpoint(tensors_1, {"classes": 2})  # e.g. SimpleCIL's
    fresh = build(seed=0)
    fresh.restore_checkpoint(tensors_1, structure_1)
    assert torch.equal(fresh.model[1].class_means, strategy.model[1].class_means)
