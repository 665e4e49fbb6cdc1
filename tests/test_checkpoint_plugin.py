"""Checkpoints: exact resume in a plain Avalanche script, plugin and metric state, and integrity on disk."""

import json
import os
import warnings

import pytest
import torch
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.plugins import EvaluationPlugin
from safetensors.torch import save_file
from test_dropin_resume import tensor_benchmark

from avalanche_sdlora import SDLoRA, SDLoRAKD, SDLoRARR, sdlora_vit
from avalanche_sdlora.checkpoint import (CheckpointPlugin, latest_checkpoint, load_checkpoint, restore_strategy_state,
                                         save_checkpoint, strategy_state)

pytestmark = pytest.mark.usefixtures("one_thread")  # one torch thread (tests/conftest.py)


class Crash(SupervisedPlugin):
    """Raises in the first iteration of experience ``at``: a run that died in the middle of it."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def after_training_iteration(self, strategy, **kwargs):
        if strategy.experience.current_experience == self.at:
            raise KeyboardInterrupt("simulated kill")


class Counter(SupervisedPlugin):
    """A user plugin with its own state, exposed as interface 1 says (state_dict / load_state_dict)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def after_training_exp(self, strategy, **kwargs):
        self.count += 1

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


def _model(seed=0, name="vit_tiny_patch16_224"):
    torch.manual_seed(seed)
    return sdlora_vit(name, img_size=32, rank=2)


def _strategy(ckpt_dir, cls=SDLoRAKD, plugins=(), seed=0, **kw):
    model = _model(seed)
    plugin = CheckpointPlugin(ckpt_dir, config={"seed": seed})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ev = EvaluationPlugin(accuracy_metrics(stream=True), loggers=[])
    s = cls(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
            train_mb_size=4, evaluator=ev, plugins=[plugin, *plugins], **kw)
    return s, plugin


def _loop(strategy, benchmark, start=0, stop=None):
    for t, exp in enumerate(benchmark.train_stream[start:stop], start):
        strategy.train(exp)
        strategy.eval(benchmark.test_stream[: t + 1])


def _assert_same_weights(a, b):
    a, b = a.state_dict(), b.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("cls, kw", [(SDLoRAKD, {}), (SDLoRARR, {"rank_schedule": {0: 2, 1: 1}})])
def test_plugin_resume_equals_uninterrupted(tmp_path, cls, kw):
    bm = tensor_benchmark()
    full, _ = _strategy(tmp_path / "full", cls, **kw)
    _loop(full, bm)

    cut, _ = _strategy(tmp_path / "cut", cls, plugins=[Crash(at=2)], **kw)
    with pytest.raises(KeyboardInterrupt):
        _loop(cut, bm)
    resumed, plugin = _strategy(tmp_path / "cut", cls, **kw)
    start = plugin.resume(resumed)
    assert start == 2  # experience 1's checkpoint, written when experience 2 started
    _loop(resumed, bm, start)
    _assert_same_weights(full.model, resumed.model)


def test_a_run_killed_between_train_calls_resumes_from_the_experience_before(tmp_path):
    bm = tensor_benchmark()
    full, _ = _strategy(tmp_path / "full", SDLoRA)
    _loop(full, bm)
    cut, _ = _strategy(tmp_path / "cut", SDLoRA)
    _loop(cut, bm, 0, 2)  # experiences 0 and 1 trained and evaluated, then the process died
    resumed, plugin = _strategy(tmp_path / "cut", SDLoRA)
    assert plugin.resume(resumed) == 1  # experience 1 is trained again, to the same result
    _loop(resumed, bm, 1)
    _assert_same_weights(full.model, resumed.model)


def test_save_after_the_loop_keeps_the_last_experience(tmp_path):
    bm = tensor_benchmark()
    s, plugin = _strategy(tmp_path, SDLoRA)
    _loop(s, bm)
    assert latest_checkpoint(tmp_path) == 1
    plugin.save(s)
    again, plugin2 = _strategy(tmp_path, SDLoRA)
    assert plugin2.resume(again) == len(bm.train_stream)
    _assert_same_weights(s.model, again.model)


def test_plugin_state_goes_through_state_dict_keyed_by_class_and_index(tmp_path):
    bm = tensor_benchmark()
    first, second = Counter(), Counter()
    second.count = 10
    s, plugin = _strategy(tmp_path, SDLoRA, plugins=[first, second])
    _loop(s, bm, 0, 1)
    state = strategy_state(s)
    counters = {k: v for k, v in state["plugins"].items() if k.startswith("Counter")}
    assert counters == {"Counter[0]": {"count": 1}, "Counter[1]": {"count": 11}}
    assert "AdapterGrowthPlugin[0]" in state["plugins"]  # SD-LoRA's own plugins go the same way
    plugin.save(s)
    fresh, plugin2 = _strategy(tmp_path, SDLoRA, plugins=[Counter(), Counter()])
    plugin2.resume(fresh)
    counters = [p for p in fresh.plugins if isinstance(p, Counter)]
    assert [c.count for c in counters] == [1, 11]
    assert fresh.clock.train_exp_counter == 1 and fresh.clock.train_iterations == s.clock.train_iterations


def _write_v1_checkpoint(directory, experience, model, extra):
    """A checkpoint exactly as the code before the adapter-only format wrote it (format 1)."""
    import random

    import numpy as np

    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors["rng.torch"] = torch.get_rng_state()
    save_file(tensors, str(directory / f"exp{experience}.safetensors"))
    np_state = np.random.get_state()
    meta = {"format": "avalanche-sdlora-checkpoint/1", "experience": experience, "config": {}, "extra": extra,
            "rng_python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
            "rng_numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])]}
    (directory / f"exp{experience}.json").write_text(json.dumps(meta))


def test_checkpoints_of_the_old_format_still_load(tmp_path):
    bm = tensor_benchmark()
    rr, _ = _strategy(tmp_path / "x", SDLoRARR, rank_schedule={0: 2, 1: 1})
    rr.train(bm.train_stream[0])
    old = {"seen_classes": [0, 1], "rank_reduction_task": 1,
           "distillation_history": [{"task": 2, "relative_residual": 0.5, "absorbed": False, "coefficients": [1.0]}]}
    _write_v1_checkpoint(tmp_path / "v1", 0, rr.model, old)
    assert latest_checkpoint(tmp_path / "v1") == 0
    for cls in (SDLoRARR, SDLoRAKD):
        fresh, _ = _strategy(tmp_path / "y", cls)
        restore_strategy_state(fresh, load_checkpoint(tmp_path / "v1", 0, fresh.model))
        _assert_same_weights(rr.model, fresh.model)
        assert fresh._seen_classes == {0, 1}
        if cls is SDLoRARR:
            assert [p.task for p in fresh.plugins if hasattr(p, "task")] == [1]
        else:
            assert [p.history for p in fresh.plugins if hasattr(p, "history")] == [old["distillation_history"]]


def test_trainable_flags_survive_a_checkpoint(tmp_path):
    model = _model()
    model.add_task()
    model.magnitudes.alpha.requires_grad_(False)  # seq-lora's fixed magnitude
    save_checkpoint(tmp_path, 0, model)
    fresh = _model()
    load_checkpoint(tmp_path, 0, fresh)
    assert not fresh.magnitudes.alpha.requires_grad
    assert {n for n, p in fresh.named_parameters() if p.requires_grad} == \
        {n for n, p in model.named_parameters() if p.requires_grad}


def test_checkpoint_from_other_configuration_or_model_is_refused(tmp_path):
    model = _model()
    model.add_task()
    save_checkpoint(tmp_path, 0, model, config={"seed": 0})
    with pytest.raises(ValueError, match=r"exp0\.json' comes from another configuration: \{'seed': \(0, 1\)\}"):
        load_checkpoint(tmp_path, 0, _model(), config={"seed": 1})
    with pytest.raises(ValueError, match=r"saved on 'vit_tiny_patch16_224' .* but this model is 'vit_small_patch16_224'"):
        load_checkpoint(tmp_path, 0, _model(name="vit_small_patch16_224"))
    with pytest.raises(ValueError, match=r"base weights of this model differ"):
        load_checkpoint(tmp_path, 0, _model(seed=1))


# ---------------------------------------------------------------------- integrity on disk
def _two_checkpoints(tmp_path):
    model = _model()
    model.add_task()
    save_checkpoint(tmp_path, 0, model)
    model.freeze_task()
    model.add_task()
    save_checkpoint(tmp_path, 1, model)
    return model


@pytest.mark.parametrize("damage", ["truncate", "flip", "json"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(tmp_path, damage):
    _two_checkpoints(tmp_path)
    if damage == "truncate":
        f = tmp_path / "exp1.safetensors"
        f.write_bytes(f.read_bytes()[:100])
    elif damage == "flip":
        f = tmp_path / "exp1.safetensors"
        data = bytearray(f.read_bytes())
        data[-7] ^= 0x10  # inside a tensor: safetensors alone would load it silently
        f.write_bytes(bytes(data))
    else:
        f = tmp_path / "exp1.json"
        f.write_text(f.read_text()[:50])
    with pytest.warns(RuntimeWarning, match=r"skipping checkpoint exp1 in .*: .*exp1\.(safetensors|json)' is damaged"):
        assert latest_checkpoint(tmp_path) == 0
    with pytest.raises(ValueError, match=rf"{f.name}' is damaged"):
        load_checkpoint(tmp_path, 1, _model())
    load_checkpoint(tmp_path, 0, _model())


def test_stale_temporary_files_are_removed_when_a_writer_starts(tmp_path):
    for name in (".exp0.safetensors.tmp", ".exp3.json.tmp"):
        (tmp_path / name).write_bytes(b"half a file")
    model = _model()
    save_checkpoint(tmp_path, 0, model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp0.json", "exp0.safetensors"]


def test_files_and_their_folder_are_synced_after_each_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(b))), real_replace(a, b)))
    save_checkpoint(tmp_path, 0, _model())
    d = str(tmp_path)
    for name in ("exp0.safetensors", "exp0.json"):
        final = str(tmp_path / name)
        i = events.index(("replace", final))
        synced = os.path.basename(events[i - 1][1])
        assert events[i - 1][0] == "fsync" and synced.startswith(f".{name}.") and synced.endswith(".tmp")  # data, then rename
        assert events[i + 1] == ("fsync", d)  # the rename itself on disk
    assert events.index(("replace", str(tmp_path / "exp0.json"))) > events.index(
        ("replace", str(tmp_path / "exp0.safetensors")))  # the JSON, which marks completeness, last
