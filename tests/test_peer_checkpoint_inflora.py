"""InfLoRA's checkpoint: a strategy restored after the first experience trains the second exactly as the uninterrupted
one (same branches, head, kept subspace and predictions), and a checkpoint whose structure does not match is refused."""

from __future__ import annotations

import pytest
import torch
from checkpoint_checks import assert_same_tensors, cloned, predictions
from conftest import TINY_IMG, make_evaluator

from benchmarks import peer_checkpoint
from benchmarks.peers import inflora

CONFIG = {"method": "inflora", "seed": 0}

pytestmark = pytest.mark.usefixtures("one_thread")


def build():
    return inflora.build_strategy(model_name="vit_tiny_patch16_224", checkpoint=None, img_size=TINY_IMG,
                                  num_classes=4, n_experiences=2, epochs=2, batch_size=8, eval_batch_size=32,
                                  device="cpu", evaluator=make_evaluator(), plugins=[])


def trainable(strategy) -> list[str]:
    return [n for n, p in strategy.model.named_parameters() if p.requires_grad]


@pytest.fixture(scope="module")
def runs(tiny_bench, tmp_path_factory):
    """The uninterrupted run after each experience, and a strategy resumed from its checkpoint after the first."""
    ckpt = tmp_path_factory.mktemp("inflora-ckpt")
    images = torch.stack([tiny_bench.test_stream[1].dataset[i][0] for i in range(4)])
    torch.manual_seed(0)
    clean = build()
    clean.train(tiny_bench.train_stream[0])
    clean.eval(tiny_bench.test_stream[:1])  # as the harness does before it checkpoints (widens the head's output)
    peer_checkpoint.save(clean, ckpt, 0, config=CONFIG)
    first = {"tensors": cloned(clean.checkpoint_tensors()), "structure": clean.checkpoint_structure(),
             "predictions": predictions(clean, images), "trainable": trainable(clean)}
    clean.train(tiny_bench.train_stream[1])  # continues from the RNG states the checkpoint holds

    torch.manual_seed(123)  # the fresh strategy's own initialisation, which the checkpoint replaces
    resumed = build()
    extra = peer_checkpoint.load(resumed, ckpt, 0, config=CONFIG)
    peer_checkpoint.restore_strategy_state(resumed, extra)
    restored = {"tensors": cloned(resumed.checkpoint_tensors()), "structure": resumed.checkpoint_structure(),
                "predictions": predictions(resumed, images), "trainable": trainable(resumed)}
    resumed.train(tiny_bench.train_stream[1])
    return clean, resumed, first, restored, images


def test_the_restored_strategy_holds_the_first_experience_state(runs):
    _, _, first, restored, _ = runs
    assert_same_tensors(restored["tensors"], first["tensors"])
    assert sum(k.startswith("strategy.subspace.") for k in restored["tensors"]) == 12  # one basis per block
    assert restored["structure"] == first["structure"]
    assert first["structure"]["tasks"] == 1 and len(first["structure"]["thresholds"]) == 1
    assert torch.equal(restored["predictions"], first["predictions"])
    assert restored["trainable"] == first["trainable"]


def test_after_the_second_experience_the_resumed_run_equals_the_uninterrupted_one(runs):
    clean, resumed, _, _, images = runs
    assert clean.model.num_tasks == resumed.model.num_tasks == 2
    assert_same_tensors(resumed.checkpoint_tensors(), clean.checkpoint_tensors())
    assert resumed.checkpoint_structure() == clean.checkpoint_structure()
    assert clean.subspace_plugin.thresholds == [0.95, 0.975]
    assert trainable(resumed) == trainable(clean)
    assert torch.equal(predictions(resumed, images), predictions(clean, images))


def test_a_checkpoint_whose_structure_does_not_match_is_refused(runs):
    clean = runs[0]
    tensors, structure = clean.checkpoint_tensors(), clean.checkpoint_structure()
    fewer = {**structure, "tasks": 1, "thresholds": structure["thresholds"][:1]}
    with pytest.raises(ValueError, match=r"(?s)grown to 1 task\(s\).*Unexpected key.*lora_B\.1"):
        build().restore_checkpoint(tensors, fewer)
    more = {**structure, "tasks": 3, "thresholds": [*structure["thresholds"], 1.0]}
    with pytest.raises(ValueError, match=r"(?s)grown to 3 task\(s\).*Missing key.*lora_B\.2"):
        build().restore_checkpoint(tensors, more)
    with pytest.raises(ValueError, match="of 2 task.*needs 2 thresholds"):
        build().restore_checkpoint(tensors, {**structure, "thresholds": structure["thresholds"][:1]})
    without_basis = {k: v for k, v in tensors.items() if k != "strategy.subspace.3"}
    with pytest.raises(ValueError, match="one subspace basis per kind"):
        build().restore_checkpoint(without_basis, structure)
    with pytest.raises(ValueError, match="subspace for 11 layers; this model has 12"):
        build().restore_checkpoint({k: v for k, v in tensors.items() if k != "strategy.subspace.11"},
                                   {**structure, "subspace_kinds": structure["subspace_kinds"][:11]})
    with pytest.raises(ValueError, match="needs an integer 'tasks'"):
        build().restore_checkpoint(tensors, {})
    with pytest.raises(RuntimeError, match="freshly built InfLoRA; this one has trained already"):
        clean.restore_checkpoint(tensors, structure)


def test_a_merged_model_is_not_checkpointed(runs):
    clean = runs[0]
    clean.model.merge()
    try:
        with pytest.raises(RuntimeError, match="unmerge"):
            clean.checkpoint_tensors()
    finally:
        clean.model.unmerge()
