"""The paper's Table 4 ablations (``variant``): what trains in every experience, what stays bit-identical, what is
stored, and that checkpoints resume them exactly.

Tiny random ViTs at 32 px, three experiences of a tensor benchmark, several optimizer steps per experience.
"""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.plugins import EvaluationPlugin
from test_dropin import tensor_benchmark

from avalanche_sdlora import AdapterGrowthPlugin, SDLoRA, SDLoRAKD, SDLoRAOptions, SDLoRARR, sdlora_vit
from avalanche_sdlora.checkpoint import CheckpointPlugin, load_checkpoint, save_checkpoint
from avalanche_sdlora.options import VARIANTS
from avalanche_sdlora.variants import SingleComponent

pytestmark = pytest.mark.usefixtures("one_thread")  # one torch thread (tests/conftest.py)

RANK = 2
PAIR = [f"backbone.blocks.{i}.attn.qkv.lora_{m}" for i in range(12) for m in "AB"]


def evaluator():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return EvaluationPlugin(accuracy_metrics(stream=True), loggers=[])


def dirs(model):
    return [(a.dir_A.clone(), a.dir_B.clone(), a.dir_scale.clone(), a.dir_slot.clone()) for a in model.adapters]


def pair(model):
    return None if model.adapters[0].lora_A is None else [(a.lora_A.detach().clone(), a.lora_B.detach().clone())
                                                           for a in model.adapters]


class Probe(SupervisedPlugin):
    """Per experience: the state after the growth plugin set the task up, every step's gradients, the state after it."""

    def __init__(self):
        super().__init__()
        self.exps = []

    def before_training_exp(self, strategy, **kwargs):  # after the growth plugin's hook (it is listed first)
        m = strategy.model
        self.exps.append({"alpha0": m.magnitudes.alpha.detach().clone(), "dirs0": dirs(m), "pair0": pair(m),
                          "heads0": [w.detach().clone() for w in m.head.weights],
                          "trainable": set(), "grad": set(), "alpha_grad": set(), "steps": 0})

    def before_update(self, strategy, **kwargs):
        rec = self.exps[-1]
        rec["steps"] += 1
        for n, p in strategy.model.named_parameters():
            if p.requires_grad:  # (a frozen tensor keeps the stale .grad of the task that trained it)
                rec["trainable"].add(n)
                if p.grad is not None and torch.count_nonzero(p.grad):
                    rec["grad"].add(n)
        g = strategy.model.magnitudes.alpha.grad
        rec["alpha_grad"] |= {int(k) for k in torch.nonzero(g).flatten()}

    def after_training_exp(self, strategy, **kwargs):  # after the growth plugin froze or normalised the pair
        m = strategy.model
        self.exps[-1].update(alpha1=m.magnitudes.alpha.detach().clone(), dirs1=dirs(m), pair1=pair(m),
                             heads1=[w.detach().clone() for w in m.head.weights], n_dirs=m.num_directions,
                             n_mags=len(m.magnitudes), stored_rank=m.adapters[0].stored_rank)


def run(variant, reset_alphas=True, normalize_current=False, optimizer=None, plugins=(), cls=SDLoRA, **kw):
    torch.manual_seed(0)
    model = sdlora_vit("vit_tiny_patch16_224", img_size=32, rank=RANK, normalize_current=normalize_current)
    opt = (optimizer or (lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9)))(model.parameters())
    probe = Probe()
    strategy = cls(model=model, optimizer=opt, train_mb_size=4, train_epochs=2, evaluator=evaluator(),
                   plugins=[probe, *plugins], variant=variant, reset_alphas=reset_alphas, **kw)
    for exp in tensor_benchmark().train_stream:
        strategy.train(exp)
    return strategy, probe.exps


@functools.lru_cache(maxsize=None)
def trained(variant, **kw):
    """``run`` with the default optimizer, once per configuration (tests only read the result)."""
    return run(variant, **kw)


CASES = [("full", {}), ("fixed-direction", {}), ("fixed-direction", {"reset_alphas": False}),
         ("single-component", {}), ("single-component", {"normalize_current": True}),
         ("frozen-old-magnitudes", {"reset_alphas": False})]


# The specification, written out independently of the growth plugin's table: per 0-based experience t, whether a
# pair trains, which magnitude slots get a gradient, (stored directions, magnitudes) after it, and the live pair after.
SPEC = {
    "full": dict(pair=lambda t: True, slots=lambda t: set(range(t + 1)), counts=lambda t: (t + 1, t + 1), live=False),
    "fixed-direction": dict(pair=lambda t: t == 0, slots=lambda t: {0}, counts=lambda t: (1, 1), live=False),
    "single-component": dict(pair=lambda t: True, slots=lambda t: {0}, counts=lambda t: (0, 1), live=True),
    "frozen-old-magnitudes": dict(pair=lambda t: True, slots=lambda t: {t}, counts=lambda t: (t + 1, t + 1),
                                  live=False),
}


@pytest.mark.parametrize("variant, kw", CASES, ids=[v + "".join(f"-{a}={b}" for a, b in k.items()) for v, k in CASES])
def test_each_variant_trains_exactly_its_parameters(variant, kw):
    strategy, exps = trained(variant, **kw)
    model, spec = strategy.model, SPEC[variant]
    assert len(exps) == 3
    for t, e in enumerate(exps):
        assert e["steps"] == 4
        expected = set(PAIR if spec["pair"](t) else []) | {"magnitudes.alpha", f"head.rows.{t}.weight", f"head.rows.{t}.bias"}
        assert e["trainable"] == expected, t  # requires_grad: the pair (if any), the magnitudes, this task's rows
        assert e["grad"] == expected, t  # and every one of them got a gradient
        assert e["alpha_grad"] == spec["slots"](t), t  # magnitudes with a non-zero gradient, by slot
        n_dirs, n_mags = spec["counts"](t)
        assert (e["n_dirs"], e["n_mags"], e["stored_rank"]) == (n_dirs, n_mags, RANK * n_dirs), t
        assert (e["pair1"] is not None) == spec["live"], t
        # Bit-identical: stored directions (and slots) and old head rows.
        for before, after in zip(e["dirs0"], e["dirs1"]):
            r = before[3].numel()
            assert torch.equal(after[0][:, :r], before[0]) and torch.equal(after[1][:, :, :r], before[1])
            assert torch.equal(after[2][:, :r], before[2]) and torch.equal(after[3][:r], before[3])
        for k in range(t):
            assert torch.equal(e["heads1"][k], e["heads0"][k])
        assert not torch.equal(e["heads1"][t], e["heads0"][t])
        alpha0, alpha1 = e["alpha0"], e["alpha1"]
        if t == 0:
            assert alpha0.tolist() == pytest.approx([0.8])
            continue
        prev = exps[t - 1]["alpha1"]
        old = len(prev)  # magnitudes that existed before this experience
        if variant == "frozen-old-magnitudes":  # frozen at the value each learned, never reset
            assert torch.equal(alpha1[:old], prev) and torch.equal(alpha0[:old], prev)
            assert alpha1[t] != alpha0[t]
        elif kw.get("reset_alphas", True) and variant != "single-component":  # reset to alpha_init, then trained
            assert alpha0[:old].tolist() == pytest.approx([0.8] * old) and not torch.equal(alpha1[:old], alpha0[:old])
        else:  # trained on from the learned value
            assert torch.equal(alpha0[:old], prev) and not torch.equal(alpha1[:old], prev)
        if spec["live"]:  # the one pair carries over as it was left, normalised
            assert all(torch.equal(a, b) for (a, _), (b, _) in zip(e["pair0"], exps[t - 1]["pair1"]))
            assert all(torch.equal(a, b) for (_, a), (_, b) in zip(e["pair0"], exps[t - 1]["pair1"]))
    for a in model.adapters:
        if spec["live"]:  # normalised as a finished direction would be: ||B|| ||A|| = 1 per slice ('factors')
            for s in range(2):
                assert float(a.lora_B[s].norm() * a.lora_A[s].norm()) == pytest.approx(1.0, abs=1e-5)


def test_fixed_direction_is_full_sdlora_without_the_later_components():
    """Experience 0 is the same run bit for bit, so the stored direction is SD-LoRA's first one."""
    full, full_exps = trained("full")
    fixed, exps = trained("fixed-direction")
    assert torch.equal(exps[0]["alpha1"], full_exps[0]["alpha1"])
    assert [len(e["heads1"]) for e in exps] == [1, 2, 3]
    for a, b in zip(full.model.adapters, fixed.model.adapters):
        r = b.stored_rank
        assert torch.equal(a.dir_A[:, :r], b.dir_A) and torch.equal(a.dir_B[:, :, :r], b.dir_B)


def test_single_component_is_alpha_times_a_unit_direction_in_the_papers_form():
    """normalize_current=True: W = W0 + alpha * B A / ||B A||_F per slice, and normalising at a task end changes
    nothing the network computes (only the factors' scale)."""
    torch.manual_seed(0)
    model = sdlora_vit("vit_tiny_patch16_224", img_size=32, rank=RANK, normalize_current=True)
    strategy = SDLoRA(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), train_mb_size=4,
                      evaluator=evaluator(), variant="single-component")
    for exp in tensor_benchmark().train_stream[:2]:
        strategy.train(exp)
    model.eval()
    alpha = model.magnitudes.alpha
    for a in model.adapters:
        BA = torch.bmm(a.lora_B, a.lora_A)
        expected = alpha[0] * BA / BA.flatten(1).norm(dim=1)[:, None, None]
        torch.testing.assert_close(a.delta_weight(), expected, rtol=1e-5, atol=1e-7)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for a in model.adapters:
            a.lora_B.mul_(7.0)  # any scale of the pair: the same function
        y = model(x)
        SingleComponent().end_task(model)
        torch.testing.assert_close(model(x), y, rtol=1e-5, atol=1e-5)


def test_frozen_old_magnitudes_stay_bit_identical_under_weight_decay():
    """AdamW's decoupled decay moves a parameter without a gradient: the growth plugin writes frozen slots back."""
    strategy, exps = run("frozen-old-magnitudes", reset_alphas=False,
                         optimizer=lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.5))
    for t in (1, 2):
        assert torch.equal(exps[t]["alpha1"][:t], exps[t - 1]["alpha1"])
        assert exps[t]["alpha1"][t] != 0.8
    growth = next(p for p in strategy.plugins if isinstance(p, AdapterGrowthPlugin))
    assert growth.variant.held_slots == [0, 1]


def test_variants_with_rank_reduction():
    for variant, ranks in (("frozen-old-magnitudes", [2, 1, 1]), ("fixed-direction", [2])):
        strategy, exps = run(variant, reset_alphas=False, cls=SDLoRARR, rank_schedule={0: 2, 1: 1})
        assert torch.bincount(strategy.model.adapters[0].dir_slot).tolist() == ranks
        if variant == "frozen-old-magnitudes":
            assert exps[2]["alpha_grad"] == {2} and torch.equal(exps[2]["alpha1"][:2], exps[1]["alpha1"])


def test_contradictions_and_unknown_values_are_refused_in_one_sentence(tiny_vit):
    assert list(VARIANTS) == ["full", "fixed-direction", "single-component", "frozen-old-magnitudes"]
    assert SDLoRAOptions().variant == "full"
    reset = r"variant='frozen-old-magnitudes' keeps old magnitudes at their learned values.*pass reset_alphas=False"
    with pytest.raises(ValueError, match=reset):
        SDLoRAOptions(variant="frozen-old-magnitudes")
    with pytest.raises(ValueError, match=reset), pytest.warns(DeprecationWarning, match="pass the options to the"):
        AdapterGrowthPlugin(variant="frozen-old-magnitudes", reset_alphas=True)  # the former way: still checked
    with pytest.raises(ValueError, match="variant must be one of 'full', 'fixed-direction'"):
        SDLoRAOptions(variant="fixed")
    model = tiny_vit(rank=RANK)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(ValueError, match=reset):
        SDLoRA(model=model, optimizer=opt, variant="frozen-old-magnitudes")
    bm = tensor_benchmark()
    # The plugin without reset_alphas reads the model's (True): refused before the model changes.
    with pytest.warns(DeprecationWarning):
        growth = AdapterGrowthPlugin(variant="frozen-old-magnitudes")
    s = SDLoRA(model=model, optimizer=opt, evaluator=evaluator(), growth=growth)
    with pytest.raises(ValueError, match=reset):
        s.train(bm.train_stream[0])
    assert len(model.magnitudes) == 0
    kd = SDLoRAKD(model=model, optimizer=opt, evaluator=evaluator(), variant="single-component")
    with pytest.raises(ValueError, match="variant='single-component' does not combine with knowledge distillation"):
        kd.train(bm.train_stream[0])
    assert len(model.magnitudes) == 0
    s = SDLoRA(model=model, optimizer=opt, evaluator=evaluator(), variant="fixed-direction")
    next(p for p in s.plugins if isinstance(p, AdapterGrowthPlugin)).load_state_dict({"task": 2})
    with pytest.raises(ValueError, match="trained with variant='full', this strategy has variant='fixed-direction'"):
        s.train(bm.train_stream[0])
    assert len(model.magnitudes) == 0


def test_save_and_load_checkpoint_round_trip_every_variant(tmp_path):
    for variant, kw in CASES[1::2]:
        strategy, _ = trained(variant, **kw)
        save_checkpoint(tmp_path / variant, 2, strategy.model)
        torch.manual_seed(0)  # the same random base (a real run: the same weights file)
        fresh = sdlora_vit("vit_tiny_patch16_224", img_size=32, rank=RANK, **{k: v for k, v in kw.items()
                                                                           if k == "normalize_current"})
        load_checkpoint(tmp_path / variant, 2, fresh)
        a, b = strategy.model.state_dict(), fresh.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert {n for n, p in fresh.named_parameters() if p.requires_grad} == \
            {n for n, p in strategy.model.named_parameters() if p.requires_grad}


class Crash(SupervisedPlugin):
    def after_training_iteration(self, strategy, **kwargs):
        if strategy.experience.current_experience == 2:
            raise KeyboardInterrupt("simulated kill")


@pytest.mark.parametrize("variant", ["single-component", "frozen-old-magnitudes"])
def test_checkpoint_plugin_resume_equals_uninterrupted(tmp_path, variant):
    def build(folder, plugins=()):
        torch.manual_seed(0)
        model = sdlora_vit("vit_tiny_patch16_224", img_size=32, rank=RANK)
        plugin = CheckpointPlugin(folder)
        s = SDLoRA(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), train_mb_size=4,
                   evaluator=evaluator(), plugins=[plugin, *plugins], variant=variant, reset_alphas=False)
        return s, plugin

    bm = tensor_benchmark()
    whole, _ = build(tmp_path / "whole")
    for exp in bm.train_stream:
        whole.train(exp)
    cut, _ = build(tmp_path / "cut", [Crash()])
    with pytest.raises(KeyboardInterrupt):
        for exp in bm.train_stream:
            cut.train(exp)
    resumed, plugin = build(tmp_path / "cut")
    assert plugin.resume(resumed) == 2
    growth = next(p for p in resumed.plugins if isinstance(p, AdapterGrowthPlugin))
    assert growth.state_dict() == {"task": 2, "variant": variant}
    resumed.train(bm.train_stream[2])
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    held = [next(p for p in s.plugins if isinstance(p, AdapterGrowthPlugin)).variant for s in (whole, resumed)]
    assert getattr(held[0], "held_slots", None) == getattr(held[1], "held_slots", None)
