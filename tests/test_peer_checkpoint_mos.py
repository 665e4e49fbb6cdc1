"""MOS resumes exactly from a checkpoint: a strategy restored after its first experience trains the second into the
same model (stored adapters, their sums, head, prototypes, class statistics) as the uninterrupted one, and a
checkpoint whose structure does not match its tensors is refused."""

from __future__ import annotations

import json

import pytest
import torch

from avalanche_sdlora.checkpoint import restore_strategy_state
from benchmarks import peer_checkpoint

from checkpoint_checks import predictions
from test_mos import build, images_of

CONFIG = {"method": "mos", "seed": 0}


def state(strategy) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in strategy.model.state_dict().items()}


@pytest.fixture(scope="module")
def runs(tiny_bench, tmp_path_factory):
    """The uninterrupted run (checkpointed after experience 0, as the runner does after evaluating) and the run
    resumed from that checkpoint by a strategy built from another seed; both trained and evaluated on experience 1."""
    folder = tmp_path_factory.mktemp("mos-ckpt")
    train, test = tiny_bench.train_stream, tiny_bench.test_stream
    clean = build(seed=0)
    clean.train(train[0])
    clean.eval(test[:1])
    peer_checkpoint.save(clean, folder, 0, config=CONFIG)
    saved = state(clean)
    clean.train(train[1])
    clean.eval(test[:2])  # the literal pulls drift stored adapter 1 in place: the evaluation is part of the state

    resumed = build(seed=1)
    extra = peer_checkpoint.load(resumed, folder, 0, config=CONFIG)
    restore_strategy_state(resumed, extra)
    restored = state(resumed)
    resumed.train(train[1])
    resumed.eval(test[:2])
    return clean, resumed, saved, restored


def test_the_restored_strategy_is_the_checkpointed_one(runs):
    _, resumed, saved, restored = runs
    assert restored.keys() == saved.keys()
    assert all(torch.equal(restored[k], saved[k]) for k in saved)
    model = resumed.model
    assert model.n_tasks == 2 and model.task == 2  # after the second experience, grown from one restored task
    assert not any(p.requires_grad for m in model.mlps for mod in (*m.stored, *m.sums) for p in mod.parameters())


def test_a_resumed_run_trains_the_second_experience_into_the_uninterrupted_model(runs, tiny_bench):
    clean, resumed, _, _ = runs
    a, b = state(clean), state(resumed)
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, differ
    assert clean.model.task == resumed.model.task == 2
    assert resumed.ca_losses == clean.ca_losses and len(clean.ca_losses) == 1  # alignment ran after task 1 only
    assert resumed.checkpoint_structure() == clean.checkpoint_structure()
    x, _ = images_of(tiny_bench.test_stream[1])
    assert torch.equal(predictions(resumed, x), predictions(clean, x))


def test_a_checkpoint_after_two_tasks_restores_the_model_its_losses_and_its_predictions(runs, tiny_bench, tmp_path):
    clean, _, _, _ = runs
    peer_checkpoint.save(clean, tmp_path, 1, config=CONFIG)
    restored = build(seed=2)
    peer_checkpoint.load(restored, tmp_path, 1, config=CONFIG)
    a, b = state(clean), state(restored)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert restored.model.task == restored.model.n_tasks == 2
    assert restored.ca_losses == clean.ca_losses and len(restored.ca_losses[0]) == 2  # ca_epochs 2 after task 1
    x, _ = images_of(tiny_bench.test_stream[0])
    assert torch.equal(predictions(restored, x), predictions(clean, x))


def test_a_checkpoint_whose_structure_does_not_match_is_refused(runs, tmp_path):
    clean, _, _, _ = runs  # 2 tasks, 4 classes
    tensors = clean.checkpoint_tensors()
    structure = clean.checkpoint_structure()
    assert structure["tasks"] == 2 and structure["classes"] == 4
    with pytest.raises(ValueError, match=r"do not match its structure \(1 tasks, 4 classes\) on this model: 96 "
                                         r"unexpected tensors \(first: backbone\.blocks\.0\.mlp\.stored\.1\."):
        build().restore_checkpoint(tensors, {**structure, "tasks": 1})
    with pytest.raises(ValueError, match=r"\(3 tasks, 4 classes\) on this model: 96 missing tensors \(first: "
                                         r"backbone\.blocks\.0\.mlp\.stored\.2\."):
        build().restore_checkpoint(tensors, {**structure, "tasks": 3})
    with pytest.raises(ValueError, match=r"\(2 tasks, 2 classes\) on this model: 5 tensors of another shape \(first: "
                                         r"stat_classes \(4,\) vs \(2,\), class_means \(4, 192\) vs \(2, 192\)"):
        build().restore_checkpoint(tensors, {**structure, "classes": 2})
    with pytest.raises(ValueError, match="needs non-negative integers 'tasks' and 'classes'"):
        build().restore_checkpoint(tensors, {})
    # tensors that fit the shapes but not the class -> task map: 2 tasks claimed over classes learned in 1
    one_task = {**tensors, "class_task": torch.tensor([0, 0, 0, 0])}
    with pytest.raises(ValueError, match=r"says 2 tasks and 4 classes, but its class-to-task map holds 4 classes of "
                                         r"tasks \[0\]"):
        build().restore_checkpoint(one_task, structure)
    with pytest.raises(RuntimeError, match="needs a freshly built model; this one has learned 2 tasks"):
        clean.restore_checkpoint(tensors, structure)
    # through the files: the runner's load refuses a structure written with one task fewer
    peer_checkpoint.save(clean, tmp_path, 1, config=CONFIG)
    path = tmp_path / "exp1.json"
    meta = json.loads(path.read_text())
    assert meta["state"]["tasks"] == 2
    meta["state"]["tasks"] = 1
    path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"\(1 tasks, 4 classes\) on this model: 96 unexpected tensors"):
        peer_checkpoint.load(build(), tmp_path, 1, config=CONFIG)

