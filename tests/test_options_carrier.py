"""One carrier for the options: the model owns its SDLoRAOptions, a strategy merges its keywords once, the growth
plugins read the strategy's in their hooks, and the adapter folder stores the whole options dict (issue 33)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from test_dropin import evaluator, tensor_benchmark

from avalanche_sdlora import (RankReductionPlugin, SDLoRA, SDLoRAKD, SDLoRAOptions, SDLoRARR, SDLoRAViT,
                              create_backbone, sdlora_vit)
from avalanche_sdlora.adapter_format import CONFIG_FILE
from avalanche_sdlora.options import DEFAULTS, FIELDS, MODEL_FIELDS, STRATEGY_FIELDS

IMG = 32


def _model(**changes) -> SDLoRAViT:
    torch.manual_seed(0)
    return sdlora_vit("vit_tiny_patch16_224", img_size=IMG, **{"rank": 2, **changes})


def test_every_field_has_a_scope_and_the_name_lists_come_from_the_dataclass():
    scopes = {f.name: f.metadata["scope"] for f in dataclasses.fields(SDLoRAOptions)}
    assert set(scopes.values()) == {"model", "strategy"}
    assert MODEL_FIELDS == ("normalize_current", "direction_norm", "head_init", "pair_init")
    assert set(MODEL_FIELDS) | set(STRATEGY_FIELDS) == set(FIELDS) and not set(MODEL_FIELDS) & set(STRATEGY_FIELDS)


def test_rank_reduction_plugin_in_plugins_trains_with_the_strategys_alpha_init():
    """The README's use of RR as a plugin: SDLoRA(alpha_init=0.5, plugins=[RankReductionPlugin(...)]) trained with
    alpha 0.8 before (the plugin's own None meant the model's options, not the strategy's)."""
    model = _model()
    seen = []

    class Probe(RankReductionPlugin):
        def before_training_exp(self, strategy, **kwargs):
            super().before_training_exp(strategy, **kwargs)
            seen.append(strategy.model.magnitudes.alpha.detach().clone())

    strategy = SDLoRA(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0), alpha_init=0.5,
                      train_mb_size=8, evaluator=evaluator(), plugins=[Probe({0: 2, 1: 1})])
    for exp in tensor_benchmark().train_stream[:2]:
        strategy.train(exp)
    assert [s.tolist() for s in seen] == [[0.5], [0.5, 0.5]]  # lr 0: what the task started with
    assert [a.stored_rank for a in model.adapters[:1]] == [3]  # the plugin's schedule: rank 2, then 1


def test_strategy_merges_its_keywords_once_and_refuses_other_model_options():
    model = _model(alpha_init=0.3, variant="fixed-direction")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    s = SDLoRA(model=model, optimizer=opt, evaluator=evaluator(), alpha_init=0.6, reset_alphas=None)
    assert s.options == model.options.replace(alpha_init=0.6)  # None: not given; the model's variant kept
    assert model.options.alpha_init == 0.3  # the model's own options are not changed by a strategy
    assert SDLoRARR(model=model, optimizer=opt, evaluator=evaluator(), rank_schedule={0: 3}).options.schedule == {0: 3}
    assert SDLoRAKD(model=_model(), optimizer=opt, evaluator=evaluator(), kd_threshold=0.5).options.kd_threshold == 0.5
    with pytest.raises(ValueError, match=r"options.head_init='zeros' differs from the model's 'linear'"):
        SDLoRA(model=model, optimizer=opt, evaluator=evaluator(), options=model.options.replace(head_init="zeros"))
    with pytest.raises(TypeError, match="unexpected keyword argument: direction_norm"):  # Avalanche's own check
        SDLoRA(model=model, optimizer=opt, evaluator=evaluator(), direction_norm="frobenius")


def test_the_model_takes_every_option_by_keyword():
    backbone = create_backbone("vit_tiny_patch16_224", img_size=IMG)
    model = SDLoRAViT(backbone, pair_init="span", rank=3)  # raised TypeError: the signature listed four options
    assert model.options == DEFAULTS.replace(pair_init="span", rank=3)
    with pytest.raises(TypeError, match="SDLoRAOptions has no option rnak"):
        sdlora_vit("vit_tiny_patch16_224", img_size=IMG, rnak=3)
    with pytest.raises(TypeError, match=r"sdlora_vit\(options=...\) takes an avalanche_sdlora.SDLoRAOptions, got dict"):
        sdlora_vit("vit_tiny_patch16_224", img_size=IMG, options={"rank": 3})


# A value other than the default for every option (a new field must be added here: the test checks that).
OTHER = {"rank": 5, "alpha_init": 0.5, "reset_alphas": False, "alpha_lr": 0.2, "normalize_current": True,
         "direction_norm": "frobenius", "head_init": "zeros", "pair_init": "span", "kd_threshold": 0.01,
         "variant": "fixed-direction", "rank_schedule": ((0, 4), (2, 2))}


@pytest.mark.parametrize("name", FIELDS)
def test_every_option_survives_save_pretrained_and_from_pretrained(tmp_path, name):
    assert set(OTHER) == set(FIELDS)
    model = _model(**{name: OTHER[name]})
    model.add_task()
    model.head.add_classes([0, 1])
    folder = model.save_pretrained(tmp_path / "a")
    torch.manual_seed(0)  # the same random base
    loaded = SDLoRAViT.from_pretrained(folder)
    assert loaded.options == model.options and getattr(loaded.options, name) == OTHER[name] != getattr(DEFAULTS, name)
    assert json.loads((folder / CONFIG_FILE).read_text())["options"] == model.options.to_dict()
    torch.manual_seed(0)
    again = sdlora_vit("vit_tiny_patch16_224", adapters=folder)  # the factory's way: size and options from the folder
    assert again.options == model.options
    x = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(1))
    assert torch.equal(loaded.eval()(x), model.eval()(x))


def test_pair_init_span_survives_the_round_trip_and_starts_the_next_pair_in_the_span(tmp_path):
    """A span model came back as 'random' (adapter_io kept four option names of its own)."""
    model = _model(pair_init="span")
    model.add_task()
    model.freeze_task()
    folder = model.save_pretrained(tmp_path / "a")
    torch.manual_seed(0)
    loaded = SDLoRAViT.from_pretrained(folder)
    assert loaded.options.pair_init == "span"
    loaded.add_task()
    a = loaded.adapters[0]
    q, _ = torch.linalg.qr(a.dir_A[0].T.double())
    A = a.lora_A[0].detach().double()
    assert (A - (A @ q) @ q.T).norm() < 1e-6 * A.norm()


def test_adapter_folders_written_before_the_options_dict_still_load(tmp_path):
    model = _model(direction_norm="frobenius")
    model.add_task()
    folder = model.save_pretrained(tmp_path / "a")
    cfg = json.loads((folder / CONFIG_FILE).read_text())
    legacy = {k: v for k, v in cfg.items() if k not in ("options", "timm_name")}
    legacy.update(rank=2, direction_norm="frobenius", normalize_current=False, head_init="linear")
    (folder / CONFIG_FILE).write_text(json.dumps(legacy))
    torch.manual_seed(0)
    loaded = SDLoRAViT.from_pretrained(folder)
    assert loaded.options == DEFAULTS.replace(rank=2, direction_norm="frobenius")
    with pytest.raises(ValueError, match=r"other options \{'direction_norm': \('frobenius', 'factors'\)\}"):
        _model().load_adapters(folder)
