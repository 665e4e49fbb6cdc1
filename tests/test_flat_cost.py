"""Issue 32: a training step costs the same memory whatever the number of stored tasks, and merged inference costs
the backbone's.

What the forward keeps for backward (tensors saved, bytes of those the model does not hold anyway, graph nodes) is
read with torch's saved-tensor hooks (``benchmarks.speed.memory.autograd_footprint``, what ``python -m
benchmarks.speed`` reports); an adapter that applied each stored direction to the activations (x A_k, then B_k)
would save activations per direction and fail here.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.speed.memory import autograd_footprint
from benchmarks.speed.timing import count_flops, sdlora_loss

from conftest import TINY_IMG, randomize_current_pair

CLASSES = list(range(4))


def _after(tiny_vit, tasks: int, rank: int = 4):
    """A tiny SD-LoRA ViT in its ``tasks``-th task: tasks - 1 stored directions with non-zero B and the current pair."""
    model = tiny_vit(rank=rank)
    model.head.add_classes(CLASSES)
    for t in range(tasks):
        model.add_task()
        randomize_current_pair(model, seed=t)
        if t < tasks - 1:
            model.freeze_task()
    return model.train()


def _footprint(model) -> dict[str, int]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, TINY_IMG, TINY_IMG, generator=g)
    y = torch.tensor([0, 3])
    return autograd_footprint(model, sdlora_loss(model, x, y, CLASSES))


def test_training_step_graph_does_not_grow_with_stored_tasks(tiny_vit):
    few, many = _footprint(_after(tiny_vit, 3)), _footprint(_after(tiny_vit, 25))
    for key in ("saved_tensors", "saved_new_bytes", "graph_nodes", "trainable_tensors"):
        assert many[key] == few[key], (key, few, many)
    # one magnitude per task is the only trainable number that grows (the current pair and head chunk are the same)
    assert many["trainable_numbers"] - few["trainable_numbers"] == 25 - 3
    assert few["saved_new_bytes"] > 0 and few["graph_nodes"] > 100  # the hooks did see the step


def test_first_task_saves_the_same_activations(tiny_vit):
    # no stored direction yet: the frozen sum is skipped (fewer nodes), but the activations saved are the same bytes
    one, later = _footprint(_after(tiny_vit, 1)), _footprint(_after(tiny_vit, 10))
    assert one["saved_new_bytes"] == later["saved_new_bytes"]
    assert one["saved_tensors"] <= later["saved_tensors"]


def test_the_footprint_sees_activations_kept_per_direction(tiny_vit):
    """The measure is not blind: applying the stored directions to the activations, one by one (what the adapter
    avoids), makes the saved bytes grow with the tasks."""
    def per_direction_forward(adapter, x):
        alpha, extra = adapter.magnitudes.alpha, [0, 0]
        for k in range(len(adapter.magnitudes) - 1):  # the stored tasks (the last slot is the current pair's)
            for s, (B, A) in enumerate(adapter.directions(k)):
                extra[s] = extra[s] + alpha[k] * ((x @ A.T) @ B.T)
        q, key, v = adapter.base_layer(x).chunk(3, dim=-1)
        return torch.cat([q + extra[0], key, v + extra[1]], dim=-1)

    sizes = []
    for tasks in (3, 9):
        model = _after(tiny_vit, tasks)
        for a in model.adapters:
            a.forward = lambda x, a=a: per_direction_forward(a, x)
        sizes.append(_footprint(model)["saved_new_bytes"])
    assert sizes[1] > sizes[0]


@pytest.mark.parametrize("tasks", [1, 20])
def test_merged_inference_costs_the_backbone(tiny_vit, tasks):
    model = _after(tiny_vit, tasks).eval()
    model.freeze_task()
    x = torch.randn(2, 3, TINY_IMG, TINY_IMG)
    with torch.no_grad():
        unmerged_logits = model(x)
        unmerged = count_flops(lambda: model(x))
        model.merge()
        merged = count_flops(lambda: model(x))
        torch.testing.assert_close(model(x), unmerged_logits, rtol=1e-4, atol=1e-4)
    bare = tiny_vit(rank=4)  # no task: every adapter is its frozen W0 alone
    bare.head.add_classes(CLASSES)
    with torch.no_grad():
        backbone = count_flops(lambda: bare(x))
    assert merged == backbone < unmerged
