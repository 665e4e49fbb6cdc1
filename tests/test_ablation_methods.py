"""The Table 4 rows of the comparison (``benchmarks/methods/sdlora_ablations.py``): each registered method builds
the SD-LoRA strategy of its variant and trains exactly that variant's parameters at experience 1 (the first
experience where the variants differ); its stored parameters count what it keeps.

``tests/test_methods.py`` runs them through ``benchmarks.compare`` with every other method (rows, recipe, resume).
"""

import pytest
import torch
from avalanche.core import SupervisedPlugin

from benchmarks import compare, inputs
from benchmarks.config import config_from_flags
from benchmarks.methods import get_method
from benchmarks.methods.sdlora_ablations import ABLATIONS, ablation_config
from conftest import TINY, make_evaluator

PAIR = {f"backbone.blocks.{i}.attn.qkv.lora_{m}" for i in range(12) for m in "AB"}
HEAD1 = {"head.rows.1.weight", "head.rows.1.bias"}
# Per method: (parameters with requires_grad at experience 1, magnitude slots that get a gradient there,
#              old magnitudes reset to alpha_init when experience 1 starts, live pair after it)
EXPECTED = {
    "sdlora-keep-alphas": (PAIR | HEAD1 | {"magnitudes.alpha"}, {0, 1}, False, False),
    "sdlora-fixed-direction": (HEAD1 | {"magnitudes.alpha"}, {0}, True, False),
    "sdlora-single-component": (PAIR | HEAD1 | {"magnitudes.alpha"}, {0}, False, True),
    "sdlora-frozen-old-magnitudes": (PAIR | HEAD1 | {"magnitudes.alpha"}, {1}, False, False),
}


class Probe(SupervisedPlugin):
    """At experience 1: the magnitudes after the growth plugin set it up, the trainable set and gradient slots."""

    def __init__(self):
        super().__init__()
        self.alpha_after_0 = self.alpha_start_1 = None
        self.trainable, self.slots = set(), set()

    def after_training_exp(self, strategy, **kwargs):
        if strategy.experience.current_experience == 0:
            self.alpha_after_0 = strategy.model.magnitudes.alpha.detach().clone()

    def before_training_exp(self, strategy, **kwargs):  # runs after the growth plugin's (user plugins come last)
        if strategy.experience.current_experience == 1:
            self.alpha_start_1 = strategy.model.magnitudes.alpha.detach().clone()

    def before_update(self, strategy, **kwargs):
        if strategy.experience.current_experience != 1:
            return
        self.trainable |= {n for n, p in strategy.model.named_parameters() if p.requires_grad}
        g = strategy.model.magnitudes.alpha.grad
        self.slots |= {int(k) for k in torch.nonzero(g).flatten()}


@pytest.fixture(scope="module")
def tiny():
    cfg = inputs.resolved(config_from_flags(compare.parse_args(TINY)))
    return cfg, inputs.make_benchmark(cfg)


@pytest.mark.parametrize("method", list(ABLATIONS))
def test_each_ablation_row_trains_its_variants_parameters_at_experience_1(method, tiny):
    cfg, bench = tiny
    torch.manual_seed(0)
    probe = Probe()
    strategy = get_method(method).build(cfg, 4, make_evaluator(), [probe])
    variant, fixed, _ = ABLATIONS[method]
    assert strategy.options.variant == variant and strategy.options.reset_alphas == fixed.get("reset_alphas", True)
    for exp in bench.train_stream:
        strategy.train(exp)
    trainable, slots, reset, live = EXPECTED[method]
    assert probe.trainable == trainable
    assert probe.slots == slots
    old = probe.alpha_after_0[:1]
    if reset:
        assert probe.alpha_start_1[:1].tolist() == pytest.approx([cfg.sdlora.alpha_init])
    else:
        assert torch.equal(probe.alpha_start_1[:1], old)
    model = strategy.model
    if method == "sdlora-frozen-old-magnitudes":
        assert torch.equal(model.magnitudes.alpha[:1], old)  # held at its learned value through experience 1
    head = sum(p.numel() for p in model.head.parameters())
    pair = sum(a.lora_A.numel() + a.lora_B.numel() for a in model.adapters) if live else 0
    assert (model.adapters[0].lora_A is not None) == live
    assert get_method(method).stored_params(strategy) == head + model.stored_adapter_params() + pair
    if live:  # the one pair is what single-component stores, as for seq-lora
        assert model.stored_adapter_params() == len(model.magnitudes) == 1


def test_rows_use_sdlora_s_recipe_and_keep_every_other_option():
    from benchmarks.config import RunConfig

    cfg = RunConfig(lr=0.03).replace(sdlora=RunConfig().sdlora.replace(alpha_init=0.5, head_init="zeros"))
    for method, (variant, fixed, _) in ABLATIONS.items():
        assert get_method(method).recipe(cfg) == get_method("sdlora").recipe(cfg)
        opts = ablation_config(cfg, method).sdlora
        assert opts == cfg.sdlora.replace(variant=variant, **fixed)
    # --reset-alphas false makes sdlora itself the keep-alphas row
    off = cfg.replace(sdlora=cfg.sdlora.replace(reset_alphas=False))
    assert ablation_config(off, "sdlora-keep-alphas").sdlora == off.sdlora
