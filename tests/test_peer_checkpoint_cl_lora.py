"""CL-LoRA's checkpoint: a strategy restored after the first experience trains the second exactly as the uninterrupted
one (same tensors, distillation loss and predictions), and a checkpoint whose structure does not match is refused."""

from __future__ import annotations

import pytest
import torch
from checkpoint_checks import assert_same_tensors, cloned, predictions
from conftest import TINY_IMG, make_evaluator

from benchmarks import peer_checkpoint
from benchmarks.peers import cl_lora

CONFIG = {"method": "cl-lora", "seed": 0}

pytestmark = pytest.mark.usefixtures("one_thread")


def build():
    return cl_lora.build_strategy(model_name="vit_tiny_patch16_224", checkpoint=None, img_size=TINY_IMG,
                                  num_classes=4, n_experiences=2, epochs=1, batch_size=8, eval_batch_size=32,
                                  device="cpu", evaluator=make_evaluator(), plugins=[])


@pytest.fixture(scope="module")
def runs(tiny_bench, tmp_path_factory):
    """The uninterrupted run after each experience, and a strategy resumed from its checkpoint after the first."""
    ckpt = tmp_path_factory.mktemp("cl-lora-ckpt")
    images = torch.stack([tiny_bench.test_stream[1].dataset[i][0] for i in range(4)])
    torch.manual_seed(0)
    clean = build()
    clean.train(tiny_bench.train_stream[0])
    peer_checkpoint.save(clean, ckpt, 0, config=CONFIG)
    after_first = cloned(clean.checkpoint_tensors())
    first_predictions = predictions(clean, images)
    first_seen = set(clean._seen_classes)
    clean.train(tiny_bench.train_stream[1])  # continues from the RNG states the checkpoint holds

    torch.manual_seed(123)  # the fresh strategy's own initialisation, which the checkpoint replaces
    resumed = build()
    extra = peer_checkpoint.load(resumed, ckpt, 0, config=CONFIG)
    peer_checkpoint.restore_strategy_state(resumed, extra)
    restored = cloned(resumed.checkpoint_tensors())
    restored_predictions = predictions(resumed, images)
    restored_grad = {n for n, p in resumed.model.named_parameters() if p.requires_grad}
    restored_seen = set(resumed._seen_classes)
    resumed.train(tiny_bench.train_stream[1])
    return clean, resumed, after_first, restored, (first_predictions, restored_predictions), (restored_grad, restored_seen, first_seen), images


def test_the_restored_strategy_holds_the_first_experience_state(runs):
    _, _, after_first, restored, (first, again), (trainable, seen, first_seen), _ = runs
    assert_same_tensors(restored, after_first)
    assert {k.split(".")[0] for k in restored} == {"backbone", "shared", "teacher", "specific", "block_weights",
                                                    "prototypes", "proto_class", "proto_task"}
    assert torch.equal(again, first)
    assert not trainable  # everything frozen, as after end_task
    assert seen == first_seen and len(seen) == 2


def test_after_the_second_experience_the_resumed_run_equals_the_uninterrupted_one(runs):
    clean, resumed, _, _, _, _, images = runs
    assert clean.model.num_tasks == resumed.model.num_tasks == 2
    assert_same_tensors(resumed.checkpoint_tensors(), clean.checkpoint_tensors())
    assert resumed.checkpoint_structure() == clean.checkpoint_structure() == {"tasks": 2, "prototypes": 4}
    assert clean.last_kd_loss is not None and torch.equal(resumed.last_kd_loss, clean.last_kd_loss)
    assert torch.equal(predictions(resumed, images), predictions(clean, images))


def test_a_checkpoint_whose_structure_does_not_match_is_refused(runs):
    clean = runs[0]
    tensors, structure = clean.checkpoint_tensors(), clean.checkpoint_structure()
    with pytest.raises(ValueError, match=r"(?s)grown to 1 task\(s\) and 4 prototype\(s\).*Unexpected key.*specific\.1"):
        build().restore_checkpoint(tensors, {**structure, "tasks": 1})
    with pytest.raises(ValueError, match=r"(?s)grown to 3 task\(s\).*Missing key.*specific\.2"):
        build().restore_checkpoint(tensors, {**structure, "tasks": 3})
    with pytest.raises(ValueError, match="size mismatch for prototypes"):
        build().restore_checkpoint(tensors, {**structure, "prototypes": 2})
    with pytest.raises(ValueError, match="(?s)Missing key.*teacher"):
        build().restore_checkpoint({k: v for k, v in tensors.items() if not k.startswith("teacher.")}, structure)
    with pytest.raises(ValueError, match="needs integer 'tasks' and 'prototypes'"):
        build().restore_checkpoint(tensors, {})
    with pytest.raises(RuntimeError, match="freshly built CLLoRAViT; this one already has 2 task"):
        clean.restore_checkpoint(tensors, structure)


def test_growing_leaves_the_random_streams_alone():
    torch.manual_seed(0)
    model = build().model
    state = torch.get_rng_state()
    model.grow(3, 6)
    assert torch.equal(torch.get_rng_state(), state)
    assert model.num_tasks == 3 and model.teacher is not None and model.prototypes.shape == (6, model.width)
