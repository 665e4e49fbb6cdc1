"""SD-LoRA-KD (absorbing spanned directions) and SD-LoRA-RR (rank schedule)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from avalanche.core import SupervisedPlugin
from conftest import randomize_current_pair, stream_acc

from avalanche_sdlora import (AdapterGrowthPlugin, DistillationPlugin, RankReductionPlugin, SDLoRA, SDLoRAKD,
                              SDLoRARR)
from avalanche_sdlora.plugins.distillation import direction_gram, direction_residuals, fit_last_direction
from avalanche_sdlora.plugins.rank_reduction import AUTHORS_SCHEDULE, PAPER_SCHEDULE, rank_for_task

C0, C1 = 0.7, -1.9


def fake_strategy(model, plugins=(), exp=2):
    return SimpleNamespace(model=model, plugins=list(plugins), make_optimizer=lambda **kw: None,
                           clock=SimpleNamespace(train_exp_counter=exp),
                           experience=SimpleNamespace(current_experience=exp))


def two_orthogonal_tasks(tiny_vit, direction_norm="frobenius"):
    """Tasks 0 and 1 whose A factors live on disjoint input features: D_0 and D_1 are exactly orthogonal."""
    model = tiny_vit(rank=4, direction_norm=direction_norm)
    g = torch.Generator().manual_seed(0)
    for t in range(2):
        model.add_task(reset_alphas=False)
        with torch.no_grad():
            for a in model.adapters:
                A = torch.zeros_like(a.lora_A)
                half = a.in_features // 2
                A[:, :, t * half:(t + 1) * half] = torch.randn(A.shape[0], A.shape[1], half, generator=g)
                a.lora_A.copy_(A)
                a.lora_B.copy_(torch.randn(a.lora_B.shape, generator=g) * 0.1)
        model.freeze_task()
    model.head.add_classes([0, 1, 2])
    return model


def add_combination_task(model, c0, c1):
    """Task 2 = c0 D_0 + c1 D_1 exactly, written into the new pair's factors (rank 4 + 4)."""
    model.add_task(rank=8, reset_alphas=False)
    with torch.no_grad():
        for a in model.adapters:
            (B0q, A0q), (B0v, A0v) = a.directions(0)
            (B1q, A1q), (B1v, A1v) = a.directions(1)
            a.lora_A.copy_(torch.stack([torch.cat([A0q, A1q]), torch.cat([A0v, A1v])]))
            a.lora_B.copy_(torch.stack([torch.cat([c0 * B0q, c1 * B1q], 1), torch.cat([c0 * B0v, c1 * B1v], 1)]))


@pytest.mark.parametrize("direction_norm", ["frobenius", "factors"])
def test_kd_absorbs_direction_spanned_by_old_ones(tiny_vit, images, direction_norm):
    model = two_orthogonal_tasks(tiny_vit, direction_norm)
    stored_before = model.stored_adapter_params()
    dirs_before = [(a.dir_A.clone(), a.dir_B.clone(), a.dir_scale.clone()) for a in model.adapters]
    add_combination_task(model, C0, C1)
    with torch.no_grad():
        model.magnitudes.alpha.copy_(torch.tensor([1.1, 0.5, 0.9]))
    model.freeze_task()
    if direction_norm == "factors":
        # ||B||_F ||A||_F differs between the q and v slices, so the stored direction is only a combination of the
        # old ones if both slices got the same scale: give them one, keeping the test about the KD rule itself.
        # The same holds across blocks, so every layer gets one common scale for the new direction.
        common = model.adapters[0].dir_scale[0, model.adapters[0].dir_slot == 2][0].item()
        for a in model.adapters:
            a.dir_scale[:, a.dir_slot == 2] = common
    assert model.num_directions == 3 and model.stored_adapter_params() > stored_before
    with torch.no_grad():
        y = model(images)

    plugin = DistillationPlugin()
    plugin.after_training_exp(fake_strategy(model))

    rec = plugin.history[-1]
    assert rec["absorbed"] and rec["relative_residual"] < 1e-5  # float32 round-off
    assert model.num_directions == 2 and len(model.magnitudes) == 2
    if direction_norm == "frobenius":  # unit-norm orthogonal D_0, D_1: the coefficients are known in closed form
        norm = (C0 ** 2 + C1 ** 2) ** 0.5
        assert rec["coefficients"] == pytest.approx([C0 / norm, C1 / norm], abs=1e-5)
        assert model.magnitudes.alpha.tolist() == pytest.approx([1.1 + 0.9 * C0 / norm, 0.5 + 0.9 * C1 / norm],
                                                                abs=1e-5)
    else:  # the ratio of the coefficients is still the ratio of the combination
        c = rec["coefficients"]
        assert c[0] / c[1] == pytest.approx(C0 / C1, rel=1e-4)
    assert model.stored_adapter_params() == stored_before
    for a, (A, B, s) in zip(model.adapters, dirs_before):
        assert torch.equal(a.dir_A, A) and torch.equal(a.dir_B, B) and torch.equal(a.dir_scale, s)
    with torch.no_grad():
        torch.testing.assert_close(model(images), y, rtol=0, atol=1e-5)


def test_kd_keeps_a_new_direction(tiny_vit, images):
    model = two_orthogonal_tasks(tiny_vit)
    stored_before = model.stored_adapter_params()
    model.add_task(reset_alphas=False)
    randomize_current_pair(model, seed=5, scale=0.1)
    model.freeze_task()
    with torch.no_grad():
        y = model(images)
    plugin = DistillationPlugin()
    plugin.after_training_exp(fake_strategy(model))
    rec = plugin.history[-1]
    assert not rec["absorbed"] and rec["relative_residual"] > 0.9
    assert model.num_directions == 3 and len(model.magnitudes) == 3
    per_task = 12 * (2 * 4 * 192 + 2 * 192 * 4 + 2 * 4) + 1
    assert model.stored_adapter_params() == stored_before + per_task
    with torch.no_grad():
        assert torch.equal(model(images), y)


def test_kd_needs_two_directions(tiny_vit):
    model = tiny_vit()
    model.add_task()
    model.freeze_task()
    with pytest.raises(ValueError):
        fit_last_direction(model)
    plugin = DistillationPlugin()
    plugin.after_training_exp(fake_strategy(model, exp=1))
    assert plugin.history == [] and model.num_directions == 1
    with pytest.raises(ValueError):
        DistillationPlugin(threshold=-1)


def test_rank_schedule():
    paper = [10, 10, 10, 8, 8, 8, 8, 6, 6, 6]
    assert [rank_for_task(t, PAPER_SCHEDULE) for t in range(10)] == paper
    assert [rank_for_task(t, AUTHORS_SCHEDULE) for t in range(10)] == [10, 10, 10, 10, 8, 8, 8, 8, 6, 6]
    with pytest.raises(ValueError):
        rank_for_task(0, {2: 4})
    with pytest.raises(ValueError):
        RankReductionPlugin({1: 4})


def test_rank_reduction_adds_pairs_of_scheduled_rank(tiny_vit):
    """A simulated 10-task run through the plugin's hooks: RankReductionPlugin is the growth plugin itself."""
    model = tiny_vit(rank=10)
    rr = RankReductionPlugin()
    assert isinstance(rr, AdapterGrowthPlugin)
    strategy = fake_strategy(model, [rr])
    ranks = []
    for _ in range(10):
        rr.before_training_exp(strategy)
        r = {a.lora_A.shape[1] for a in model.adapters} | {a.lora_B.shape[2] for a in model.adapters}
        assert len(r) == 1
        ranks.append(r.pop())
        rr.after_training_exp(strategy)
    assert ranks == [10, 10, 10, 8, 8, 8, 8, 6, 6, 6]
    counts = torch.bincount(model.adapters[5].dir_slot).tolist()
    assert counts == ranks and len(model.magnitudes) == 10
    assert rr.state_dict() == {"task": 10}


class RankProbe(SupervisedPlugin):
    def __init__(self):
        super().__init__()
        self.ranks = []

    def before_training_epoch(self, strategy, **kwargs):
        self.ranks.append(strategy.model.adapters[0].lora_A.shape[1])


def test_sdlora_rr_in_avalanche(tiny_vit, tiny_bench, make_strategy):
    model = tiny_vit(rank=10)
    probe = RankProbe()
    strategy = make_strategy(SDLoRARR, model, rank_schedule={0: 4, 1: 2}, plugins=[probe])
    for t, exp in enumerate(tiny_bench.train_stream):
        strategy.train(exp)
        assert 0.0 <= stream_acc(strategy.eval(tiny_bench.test_stream[: t + 1])) <= 1.0
    assert probe.ranks == [4, 2]
    assert torch.bincount(model.adapters[0].dir_slot).tolist() == [4, 2]
    assert len(model.magnitudes) == 2


@pytest.mark.parametrize("threshold", [9e-4, 1.0])
def test_sdlora_kd_in_avalanche(tiny_vit, tiny_bench, make_strategy, threshold):
    model = tiny_vit(rank=4)
    strategy = make_strategy(SDLoRAKD, model, kd_threshold=threshold)
    kd = [p for p in strategy.plugins if isinstance(p, DistillationPlugin)]
    assert len(kd) == 1
    strategy.train(tiny_bench.train_stream[0])
    stored_1 = model.stored_adapter_params()
    strategy.train(tiny_bench.train_stream[1])
    acc = stream_acc(strategy.eval(tiny_bench.test_stream))
    assert 0.0 <= acc <= 1.0
    assert len(kd[0].history) == 1  # ran once, after the second direction was frozen
    rel = kd[0].history[0]["relative_residual"]
    if threshold < 1.0:  # a trained direction is not spanned by one old direction
        assert not kd[0].history[0]["absorbed"] and rel > threshold
        assert len(model.magnitudes) == 2 and model.stored_adapter_params() > stored_1
    else:  # rel <= 1 always: everything is absorbed
        assert kd[0].history[0]["absorbed"]
        assert len(model.magnitudes) == 1 and model.stored_adapter_params() == stored_1


def test_plain_sdlora_has_no_variant_plugins(tiny_vit, make_strategy):
    strategy = make_strategy(SDLoRA, tiny_vit())
    assert not any(isinstance(p, (DistillationPlugin, RankReductionPlugin)) for p in strategy.plugins)
    assert sum(isinstance(p, AdapterGrowthPlugin) for p in strategy.plugins) == 1


def test_direction_residuals_report_kd_statistic(tiny_vit):
    model = two_orthogonal_tasks(tiny_vit)
    add_combination_task(model, C0, C1)
    model.freeze_task()
    res = direction_residuals(model)
    assert len(res) == 2
    assert res[0] == pytest.approx(1.0, abs=1e-6)  # D_1 is orthogonal to D_0: nothing explained
    assert res[1] < 1e-6  # D_2 is an exact combination of D_0 and D_1
    assert fit_last_direction(model)[1] == pytest.approx(res[1], abs=1e-12)


@pytest.mark.parametrize("direction_norm", ["frobenius", "factors"])
def test_kd_fit_sums_over_every_layer(tiny_vit, direction_norm):
    """The Gram matrix and the fit equal a dense least squares over all blocks' flattened q and v directions."""
    model = tiny_vit(rank=3, direction_norm=direction_norm)
    for t in range(3):
        model.add_task(reset_alphas=False)
        randomize_current_pair(model, seed=10 + t, scale=0.1)
        model.freeze_task()
    flat = []
    for k in range(3):
        flat.append(torch.cat([(B.double() @ A.double()).flatten() for a in model.adapters
                               for B, A in a.directions(k)]))
    V = torch.stack(flat, 1)
    torch.testing.assert_close(direction_gram(model), V.T @ V, rtol=1e-5, atol=1e-6)
    coef, rel = fit_last_direction(model)
    dense = torch.linalg.lstsq(V[:, :2], V[:, 2:]).solution[:, 0]
    residual = V[:, 2] - V[:, :2] @ dense
    torch.testing.assert_close(coef, dense, rtol=1e-4, atol=1e-6)
    assert rel == pytest.approx(float(residual.norm() ** 2 / V[:, 2].norm() ** 2), rel=1e-3)


def test_kd_adds_one_gram_row_per_task_bit_for_bit_the_full_gram(tiny_vit, monkeypatch):
    """KD's fit after task t computes t inner products per layer and slice (the new row), not t^2 / 2 (issue 32)."""
    from avalanche_sdlora.plugins import distillation

    calls = []
    inner = distillation.lowrank_inner
    monkeypatch.setattr(distillation, "lowrank_inner", lambda *a: calls.append(1) or inner(*a))
    model = tiny_vit(rank=2)
    plugin = DistillationPlugin(threshold=0.0)  # nothing random is absorbed: every direction stays
    per_entry = 2 * len(model.adapters)  # q and v of every adapted block
    for t in range(6):
        model.add_task(reset_alphas=False)
        randomize_current_pair(model, seed=20 + t, scale=0.1)
        calls.clear()
        plugin.after_training_exp(SimpleNamespace(experience=SimpleNamespace(current_experience=t), model=model))
        n = model.num_directions
        expected = 0 if n < 2 else (n * (n + 1) // 2 if n == 2 else n)  # the first fit builds the Gram once
        assert len(calls) == expected * per_entry, (t, len(calls))
        if n >= 2:
            cached = plugin._gram[1]
            assert torch.equal(cached, direction_gram(model))  # the same sums in the same order
    assert [h["absorbed"] for h in plugin.history] == [False] * 5
