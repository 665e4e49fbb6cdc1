"""The head's per-experience columns of SD-LoRA's and sequential LoRA's rows (issue 32: whether a long sequence
collapses through the head): mean row norms of the past tasks' classes and of the newest task's, by hand."""

import math
from types import SimpleNamespace

import pytest
import torch

from avalanche_sdlora.head import FrozenPastHead
from benchmarks.methods import get_method
from benchmarks.methods.sdlora import head_columns


def test_row_norms_of_past_and_newest_tasks_by_hand():
    head = FrozenPastHead(in_features=2)
    head.add_classes([0, 1])
    head.add_classes([2])
    with torch.no_grad():
        head.weights[0].copy_(torch.tensor([[3.0, 4.0], [0.0, 1.0]]))  # row norms 5 and 1: mean 3
        head.weights[1].copy_(torch.tensor([[6.0, 8.0]]))  # 10
    strategy = SimpleNamespace(model=SimpleNamespace(head=head), plugins=[])
    assert head_columns(strategy, 1) == {"head_row_norm_past": pytest.approx(3.0), "head_row_norm_newest": 10.0}
    one = FrozenPastHead(in_features=2)
    one.add_classes([0])
    first = head_columns(SimpleNamespace(model=SimpleNamespace(head=one), plugins=[]), 0)
    assert math.isnan(first["head_row_norm_past"])  # no past task after the first
    for method in ("sdlora", "sdlora-rr", "seq-lora"):
        assert get_method(method).extra_columns is head_columns, method
    kd = get_method("sdlora-kd").extra_columns(strategy, 1)  # KD's decision columns and the head's
    assert kd["head_row_norm_newest"] == 10.0
