"""SimpleCIL, APER and RanPAC checkpoints: a strategy restored after the first experience learns the second exactly as
the uninterrupted one does, and a checkpoint of another structure is refused."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import DataLoader

from avalanche_sdlora.checkpoint import load_state
from benchmarks import peer_checkpoint
from benchmarks.peers import aper, ranpac
from benchmarks.peers.adaptformer import adapters_of

from conftest import TINY_IMG, make_evaluator

BUILDERS = {"simplecil": (aper.build_simplecil_strategy, {}),
            "aper": (aper.build_strategy, {}),
            "ranpac": (ranpac.build_strategy, {"M": 64})}
CONFIG = {"method": "test", "seed": 0}


def build(method: str, seed: int):
    torch.manual_seed(seed)
    builder, options = BUILDERS[method]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "random backbone"
        return builder(model_name="vit_tiny_patch16_224", checkpoint=None, img_size=TINY_IMG, num_classes=4,
                       n_experiences=2, epochs=1, batch_size=8, eval_batch_size=32, device="cpu",
                       evaluator=make_evaluator(), plugins=[], **options)


def images_of(bench) -> torch.Tensor:
    return torch.cat([mb[0] for exp in bench.test_stream for mb in DataLoader(exp.dataset.eval(), batch_size=64)])


def snapshot(strategy) -> dict:
    head = strategy.model.classifier
    extra = {"ridges": list(head.ridges), "ridge": head.ridge, "seed": head.seed} if hasattr(head, "ridges") else {}
    return {"state": {k: v.clone() for k, v in strategy.model.state_dict().items()}, "adapted": strategy.model.adapted,
            "trainable": sorted(n for n, p in strategy.model.named_parameters() if p.requires_grad),
            "seen": set(strategy._seen_classes), **extra}


def assert_same(a: dict, b: dict) -> None:
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k]), k
    assert {k: v for k, v in a.items() if k != "state"} == {k: v for k, v in b.items() if k != "state"}


@pytest.mark.parametrize("method", sorted(BUILDERS))
def test_a_restored_strategy_learns_the_next_experience_as_the_uninterrupted_one(method, tiny_bench, tmp_path,
                                                                                    one_thread):
    train, test = tiny_bench.train_stream, tiny_bench.test_stream
    images = images_of(tiny_bench)
    clean = build(method, seed=0)
    clean.train(train[0])
    clean.eval(test[:1])
    after_first = snapshot(clean)
    peer_checkpoint.save(clean, tmp_path, 0, config=CONFIG)
    clean.train(train[1])
    clean.eval(test[:2])
    expected = snapshot(clean)
    with torch.no_grad():
        expected_logits = clean.model.eval()(images)
    assert expected["state"]["classifier.class_ids"].tolist() == [0, 1, 2, 3]  # the classifier grew in experience 1

    resumed = build(method, seed=1)  # another random backbone (and RanPAC projection): all of it must come back
    extra = peer_checkpoint.load(resumed, tmp_path, 0, config=CONFIG)
    peer_checkpoint.restore_strategy_state(resumed, extra)
    assert_same(snapshot(resumed), after_first)
    resumed.train(train[1])
    resumed.eval(test[:2])
    assert_same(snapshot(resumed), expected)
    with torch.no_grad():
        assert torch.equal(resumed.model.eval()(images), expected_logits)
    if method != "simplecil":  # the adapters trained on experience 0 only, frozen for good after the restore
        assert not any(p.requires_grad for a in adapters_of(resumed.model.backbone) for p in a.parameters())


@pytest.mark.parametrize("method", sorted(BUILDERS))
def test_a_checkpoint_of_another_structure_is_refused(method, tiny_bench, tmp_path, one_thread):
    strategy = build(method, seed=0)
    for i, exp in enumerate(tiny_bench.train_stream):
        strategy.train(exp)
        peer_checkpoint.save(strategy, tmp_path, i, config=CONFIG)
    tensors_1, structure_1, _ = load_state(tmp_path, 1)
    _, structure_0, _ = load_state(tmp_path, 0)
    fresh = build(method, seed=0)
    with pytest.raises(ValueError, match=r"does not fit the model rebuilt from its structure \(differing "
                                         r"\['classifier\.\w+ \(4"):
        fresh.restore_checkpoint(tensors_1, structure_0)  # the tensors of two experiences, the structure of one
    for other in sorted(set(BUILDERS) - {method}):  # another method's checkpoint
        with pytest.raises(ValueError, match="does not fit the model rebuilt|written by another method"):
            build(other, seed=0).restore_checkpoint(tensors_1, structure_1)
    if method == "simplecil":  # nothing to adapt: a checkpoint that still had adapting to do is another method's
        with pytest.raises(ValueError, match="still had its first session to adapt, this one has no adapters"):
            fresh.restore_checkpoint(tensors_1, {**structure_1, "adapted": False})
    with pytest.raises(ValueError, match="is not a first-session one"):
        fresh.restore_checkpoint(tensors_1, {})
    fresh.restore_checkpoint(tensors_1, structure_1)  # the matching pair loads
    assert torch.equal(fresh.model.classifier.class_ids, strategy.model.classifier.class_ids)
