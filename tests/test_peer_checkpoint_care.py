"""CaRE's checkpoint: a strategy restored after the first experience trains the second exactly as the uninterrupted
one (same tensors, records and predictions), and a checkpoint whose structure does not match is refused."""

from __future__ import annotations

import copy

import pytest
import torch

from benchmarks import peer_checkpoint
from benchmarks.peers import care
from benchmarks.peers.classifier_alignment import ClassGaussians

from checkpoint_checks import assert_same_tensors, cloned, predictions
from conftest import TINY_IMG, make_evaluator

CONFIG = {"method": "care", "seed": 0}


def build():
    return care.build_strategy(model_name="vit_tiny_patch16_224", checkpoint=None, img_size=TINY_IMG, num_classes=4,
                               n_experiences=2, epochs=1, batch_size=8, eval_batch_size=32, device="cpu",
                               evaluator=make_evaluator(), plugins=[], align_epochs=2, align_samples_per_class=8)


@pytest.fixture(scope="module")
def runs(tiny_bench, tmp_path_factory):
    """The uninterrupted run after each experience, and a strategy resumed from its checkpoint after the first."""
    ckpt = tmp_path_factory.mktemp("care-ckpt")
    images = torch.stack([tiny_bench.test_stream[1].dataset[i][0] for i in range(4)])
    torch.manual_seed(0)
    clean = build()
    clean.train(tiny_bench.train_stream[0])
    peer_checkpoint.save(clean, ckpt, 0, config=CONFIG)
    after_first = cloned(clean.checkpoint_tensors())
    clean.train(tiny_bench.train_stream[1])  # continues from the RNG states the checkpoint holds

    torch.manual_seed(123)  # the fresh strategy's own initialisation, which the checkpoint replaces
    resumed = build()
    extra = peer_checkpoint.load(resumed, ckpt, 0, config=CONFIG)
    peer_checkpoint.restore_strategy_state(resumed, extra)
    restored = cloned(resumed.checkpoint_tensors())
    restored_records = copy.deepcopy((resumed.phase_lrs, resumed.align_losses, resumed._seen_classes))
    resumed.train(tiny_bench.train_stream[1])
    return clean, resumed, after_first, restored, restored_records, images


def test_the_restored_strategy_holds_the_first_experience_state(runs):
    clean, _, after_first, restored, (lrs, losses, seen), _ = runs
    assert_same_tensors(restored, after_first)
    assert lrs == clean.phase_lrs[:1] and losses == clean.align_losses[:0] and seen == {0, 1}


def test_after_the_second_experience_the_resumed_run_equals_the_uninterrupted_one(runs):
    clean, resumed, _, _, _, images = runs
    assert resumed.model.task_classes() == clean.model.task_classes() == [[0, 1], [2, 3]]
    assert_same_tensors(resumed.checkpoint_tensors(), clean.checkpoint_tensors())
    assert resumed.phase_lrs == clean.phase_lrs and len(clean.phase_lrs) == 3
    assert resumed.align_losses == clean.align_losses and len(clean.align_losses) == 2
    trainable = [n for n, p in clean.model.named_parameters() if p.requires_grad]
    assert trainable == [n for n, p in resumed.model.named_parameters() if p.requires_grad]
    assert torch.equal(predictions(resumed, images), predictions(clean, images))


def test_a_checkpoint_whose_structure_does_not_match_is_refused(runs):
    clean = runs[0]
    tensors, structure = clean.checkpoint_tensors(), clean.checkpoint_structure()
    fewer = {**structure, "task_classes": structure["task_classes"][:1], "statistics": 2}
    with pytest.raises(ValueError, match=r"do not match its structure \(1 tasks, 2 class Gaussians\) on this model: "
                       r"157 unexpected \(e\.g\. backbone\.blocks\.0\.mlp\.adapter\.experts\.1\.down\.bias, .*\); "
                       r"3 of another shape \(e\.g\. head\.class_ids, stats\.covs, stats\.means\)$"):
        build().restore_checkpoint(tensors, fewer)
    more = {**structure, "task_classes": [*structure["task_classes"], [4, 5]]}
    with pytest.raises(ValueError, match=r"\(3 tasks, 4 class Gaussians\) on this model: 157 missing "
                       r"\(e\.g\. backbone\.blocks\.0\.mlp.*; 1 of another shape \(e\.g\. head\.class_ids\)$"):
        build().restore_checkpoint(tensors, more)
    statistics = {**structure, "statistics": 3}
    with pytest.raises(ValueError, match=r"2 of another shape \(e\.g\. stats\.covs, stats\.means\)$"):
        build().restore_checkpoint(tensors, statistics)
    swapped = {**structure, "task_classes": [[2, 3], [0, 1]]}
    with pytest.raises(ValueError, match=r"head holds the classes \[\[0, 1\], \[2, 3\]\] per task"):
        build().restore_checkpoint(tensors, swapped)
    with pytest.raises(ValueError, match="needs 'task_classes'"):
        build().restore_checkpoint(tensors, {})
    with pytest.raises(RuntimeError, match="freshly built model; this one has learned 2 tasks"):
        clean.restore_checkpoint(tensors, structure)


@pytest.mark.parametrize("kind, shape", [("covariance", (3, 4, 4)), ("variance", (3, 4))])
def test_class_gaussians_grow_placeholders_only_when_empty(kind, shape):
    stats = ClassGaussians(4, kind)
    stats.grow(3)
    assert stats.means.shape == (3, 4) and stats.covs.shape == shape
    assert dict(stats.named_buffers()).keys() == {"means", "covs"}
    with pytest.raises(RuntimeError, match="needs empty statistics; these hold 3 classes"):
        stats.grow(1)
