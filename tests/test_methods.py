"""Every registered method: 2 experiences through ``benchmarks.compare`` on a tiny slice, traits that hold, resume.

The registry is the only place the harness learns what a method is, so each trait is checked against the
strategy the method builds: the recorded optimizer and learning rate against the optimizer object, the forward
passes at inference against the patch embeddings that run, the stored parameters against the rows, and
checkpointable methods against a resume that must not retrain a finished experience.
"""

import json
import re
import shutil

import pandas as pd
import pytest
from safetensors.torch import load_file
from timm.layers import PatchEmbed
from torch import nn

from benchmarks import compare, inputs
from benchmarks.config import RunConfig, config_from_flags
from benchmarks.methods import check_method_options, get_method, method_names, register_method
from conftest import TINY, TINY_METHOD_OPTIONS, make_evaluator

METHODS = method_names()


def _rows(path):
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _without_seconds(df):
    return df.drop(columns=[c for c in df.columns if c.endswith("_seconds")])


@pytest.fixture(scope="module")
def tiny_cfg():
    return inputs.resolved(config_from_flags(compare.parse_args(TINY + TINY_METHOD_OPTIONS)))


@pytest.fixture(scope="module")
def tiny_benchmark(tiny_cfg):
    return inputs.make_benchmark(tiny_cfg)


@pytest.mark.parametrize("method", METHODS)
def test_rows_are_written_and_the_recorded_recipe_is_the_methods(tiny_run, method):
    run_dir, _ = tiny_run
    m = get_method(method)
    part = pd.read_csv(run_dir / "parts" / f"{method}-seed0.csv")
    assert part["experience"].tolist() == ([1] if m.schedule == "joint" else [0, 1])
    assert part["acc_seen"].between(0, 1).all()
    assert (part["stored_params"] > 0).all()  # every method keeps something beyond the backbone after a task
    config = json.loads((run_dir / "config.json").read_text())
    recipe = m.recipe(RunConfig.from_json(config))
    assert config["recipes"][method] == vars(recipe)
    # a method that trains by gradient has trainable parameters; a prototype or ridge classifier alone has none
    assert (part["trainable_params"].max() > 0) == (recipe.optimizer is not None)


@pytest.mark.parametrize("method", METHODS)
def test_the_built_strategy_has_the_traits_the_registry_states(method, tiny_cfg, tiny_benchmark):
    m = get_method(method)
    strategy = m.build(tiny_cfg, 4, make_evaluator(), [])
    recipe = m.recipe(tiny_cfg)
    if recipe.optimizer is not None:
        group = strategy.optimizer.param_groups[0]
        assert type(strategy.optimizer).__name__.lower() == recipe.optimizer
        assert group.get("initial_lr", group["lr"]) == pytest.approx(recipe.lr)
    strategy.train(tiny_benchmark.train_stream[0])
    assert m.stored_params(strategy) > 0
    # forward passes at inference: how many times a patch embedding runs for one evaluation minibatch
    modules = [v for v in vars(strategy).values() if isinstance(v, nn.Module)]
    embeds = {id(e): e for mod in modules for e in mod.modules() if isinstance(e, PatchEmbed)}
    calls = []
    handles = [e.register_forward_hook(lambda *a: calls.append(1)) for e in embeds.values()]
    try:
        strategy.eval(tiny_benchmark.test_stream[:1])  # 6 images, eval batch 256: one minibatch
    finally:
        for h in handles:
            h.remove()
    assert len(calls) == m.forward_passes(1)  # after one experience


@pytest.mark.parametrize("method", METHODS)
def test_a_resumed_run_equals_the_uninterrupted_one(tiny_run, method, tmp_path):
    # killed after its first row: a checkpointable method continues from its checkpoint (the row is not retrained),
    # the others start again; either way the rows equal the uninterrupted run's
    run_dir, _ = tiny_run
    copy = tmp_path / "cifar100-tiny128" / "r"
    shutil.copytree(run_dir, copy)
    (copy / "DONE").unlink()
    part = copy / "parts" / f"{method}-seed0.csv"
    lines = part.read_text().splitlines(keepends=True)
    if len(lines) > 2:
        part.write_text("".join(lines[:2]))
    else:  # joint's one row: nothing to keep
        part.unlink()
    compare.main(TINY + TINY_METHOD_OPTIONS + ["--methods", method, "--resume", str(copy)])
    clean, resumed = _rows(run_dir / "parts" / part.name), _rows(part)
    pd.testing.assert_frame_equal(_without_seconds(resumed), _without_seconds(clean))
    if get_method(method).checkpointable:
        assert resumed.iloc[0].equals(clean.iloc[0])  # seconds included: experience 0 was not trained again


def test_a_peers_checkpoints_do_not_store_its_frozen_backbone_again(tiny_run):
    # every peer keeps the pretrained attention projection of block 0 frozen: its checkpoints record its digest
    # (benchmarks.peer_checkpoint) instead of the tensor, so they hold what the method trained, not 22 MB of ViT
    run_dir, methods = tiny_run
    peers = 0
    for folder in sorted((run_dir / "checkpoints").iterdir()):
        meta = json.loads(max(folder.glob("exp*.json")).read_text())
        if "state" not in meta:
            continue  # SD-LoRA's format stores only its adapters and head
        peers += 1
        proj = [k for k in meta.get("omitted", {}) if re.search(r"blocks\.0\.attn\.(attn\.)?proj\.weight$", k)]
        stored = load_file(max(folder.glob("exp*.safetensors")))
        assert len(proj) == 1 and f"state.{proj[0]}" not in stored, folder.name
    assert peers >= 10  # every checkpointable peer of the registry


def test_method_options_are_checked_by_name():
    with pytest.raises(ValueError, match=r"ranpac has no option 'N'; its options are lr, optimizer, M, "):
        check_method_options((("ranpac", "N", 64),))
    with pytest.raises(ValueError, match="unknown method 'ranpak'"):
        check_method_options((("ranpak", "M", 64),))
    with pytest.raises(ValueError, match="sdlora has no option 'rank'; its options are optimizer, lr"):
        check_method_options((("sdlora", "rank", 4),))  # SD-LoRA's options are flags of their own


def test_peer_recipe_flag_and_method_options_choose_optimizer_and_lr():
    dual = get_method("dualprompt")
    reference = RunConfig()
    assert vars(dual.recipe(reference)) == {"optimizer": "adam", "lr": 1e-3, "source": "reference"}
    shared = RunConfig(peer_recipe="shared", lr=0.05)
    assert vars(dual.recipe(shared)) == {"optimizer": "sgd", "lr": 0.05, "source": "protocol"}
    given = RunConfig(method_options=(("dualprompt", "lr", 0.02),))
    assert vars(dual.recipe(given)) == {"optimizer": "adam", "lr": 0.02, "source": "--method-option"}
    assert vars(get_method("sdlora").recipe(shared)) == {"optimizer": "sgd", "lr": 0.05, "source": "protocol"}


def test_a_name_is_registered_once():
    with pytest.raises(ValueError, match="method 'sdlora' is registered twice"):
        register_method("sdlora", summary="", stored_params=len, recipe=len)(lambda *a: None)
