"""Streams SD-LoRA cannot learn from get one sentence; online class-incremental streams with task boundaries work
(issue 34)."""

from __future__ import annotations

import warnings

import pytest
import torch
from avalanche.benchmarks.scenarios import DatasetExperience
from avalanche.benchmarks.scenarios.online import split_online_stream

from avalanche_sdlora import SDLoRA, sdlora_vit
from test_plugin_compat import BENCH, IMG, evaluator


def strategy():
    torch.manual_seed(0)
    model = sdlora_vit("vit_tiny_patch16_224", img_size=IMG, rank=2)
    return SDLoRA(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), train_mb_size=4,
                  evaluator=evaluator())


def test_an_experience_without_a_class_list_is_one_sentence():
    s = strategy()
    exp = DatasetExperience(dataset=BENCH.train_stream[0].dataset, current_experience=0)  # built by hand
    with pytest.raises(ValueError, match=r"^experience 0 has no classes_in_this_experience; SD-LoRA adds head rows "
                                         r".*use a class-incremental benchmark"):
        s.train(exp, eval_streams=[])
    assert len(s.model.head.rows) == 0 and len(s.model.magnitudes) == 0


def test_online_stream_without_task_boundaries_is_one_sentence():
    s = strategy()
    online = split_online_stream(BENCH.train_stream[:1], experience_size=1)  # one-sample experiences
    with pytest.raises(ValueError, match=r"^online experience 0 has no class list and no task boundaries; .*"
                                         r"access_task_boundaries=True"):
        s.train(next(iter(online)))
    assert len(s.model.magnitudes) == 0


def test_online_stream_with_task_boundaries_trains_one_pair_per_original_experience():
    s = strategy()
    online = split_online_stream(BENCH.train_stream[:2], experience_size=3, access_task_boundaries=True)
    steps = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for sub in online:
            before = s.model.magnitudes.alpha.detach().clone()
            s.train(sub)
            steps += 1
            assert not torch.equal(before[: len(before)], s.model.magnitudes.alpha[: len(before)]) or sub.is_first_subexp
        assert steps == 6  # 8 samples per experience in sub-experiences of 3
        assert len(s.model.magnitudes) == 2 and len(s.model.head.rows) == 2  # one task per original experience
        assert sorted(s.model.head.class_ids.tolist()) == [0, 1, 2, 3]
        assert all(a.lora_A is None and a.stored_rank == 4 for a in s.model.adapters)  # two rank-2 directions frozen
        res = s.eval(BENCH.test_stream[:2])
    assert 0 <= res["Top1_Acc_Stream/eval_phase/test_stream"] <= 1
