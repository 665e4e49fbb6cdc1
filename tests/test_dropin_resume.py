"""Resume in a plain Avalanche script, killed and restarted in a fresh process, and adapters saved without the backbone.

The loop is the README's (train an experience, then evaluate, each experience) with Avalanche's forgetting, BWT
and our AAA metric. A run killed with SIGKILL in the middle of its third experience and resumed in a new
interpreter must end with bit-identical weights and identical metric values (history included) to an
uninterrupted run. Run as a script, this file is that loop (the test starts it with ``python``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
from avalanche.benchmarks.scenarios.task_aware import with_task_labels
from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metrics import accuracy_metrics, bwt_metrics, forgetting_metrics
from avalanche.training.plugins import EvaluationPlugin
from safetensors.torch import load_file, save_file

from avalanche_sdlora import SDLoRARR, SDLoRAViT, sdlora_vit
from avalanche_sdlora.adapter_io import CONFIG_FILE, TENSORS_FILE, load_adapters, save_adapters
from avalanche_sdlora.checkpoint import CheckpointPlugin, load_checkpoint, save_checkpoint
from avalanche_sdlora.metrics import AverageAnytimeAccuracy

ROOT = Path(__file__).resolve().parent.parent
KILL_EXPERIENCE, KILL_ITERATION = 2, 1


pytestmark = pytest.mark.usefixtures("one_thread")  # as the fresh processes use: float sums must not depend on it


def tensor_benchmark():
    """6 classes in 3 experiences of random 32x32 images, from Avalanche's own generator."""
    g = torch.Generator().manual_seed(7)

    def split(n_per_class):
        y = torch.arange(6).repeat_interleave(n_per_class)
        x = torch.randn(len(y), 3, 32, 32, generator=g)
        return _make_taskaware_tensor_classification_dataset(x, y)

    return with_task_labels(class_incremental_benchmark({"train": split(4), "test": split(2)},
                                                        class_order=list(range(6)), num_experiences=3))


class SigKill(SupervisedPlugin):
    """Kills the process the way a scheduler or the OOM killer does: no exception, no cleanup."""

    def after_training_iteration(self, strategy, **kwargs):
        if (strategy.experience.current_experience, strategy.clock.train_exp_iterations) == (KILL_EXPERIENCE,
                                                                                             KILL_ITERATION):
            os.kill(os.getpid(), signal.SIGKILL)


def run_loop(ckpt_dir: Path, out: Path | None = None, kill: bool = False) -> dict:
    """The README's loop with CheckpointPlugin; returns (and writes to ``out``) what the test compares."""
    torch.manual_seed(0)
    model = sdlora_vit("vit_tiny_patch16_224", img_size=32, rank=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evaluator = EvaluationPlugin(accuracy_metrics(stream=True, experience=True),
                                     forgetting_metrics(experience=True, stream=True),
                                     bwt_metrics(experience=True, stream=True), AverageAnytimeAccuracy(), loggers=[])
    plugin = CheckpointPlugin(ckpt_dir)
    strategy = SDLoRARR(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                        train_mb_size=4, eval_mb_size=8, evaluator=evaluator, rank_schedule={0: 2, 2: 1},
                        plugins=[plugin] + ([SigKill()] if kill else []))
    benchmark = tensor_benchmark()
    start = plugin.resume(strategy)
    results = {}
    for t, experience in enumerate(benchmark.train_stream[start:], start):
        strategy.train(experience)
        results[t] = strategy.eval(benchmark.test_stream[: t + 1])
    report = {"start": start, "results": results, "history": {k: list(map(list, v)) for k, v in
                                                             evaluator.get_all_metrics().items()}}
    if out is not None:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
        (out / "report.json").write_text(json.dumps(report))
    report["state"] = model.state_dict()
    return report


def _fresh_process(ckpt_dir: Path, out: Path, kill: bool) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-W", "ignore", __file__, str(ckpt_dir), str(out), "kill" if kill else "-"],
                          env=env, capture_output=True, text=True, timeout=300)


def test_killed_loop_resumes_in_a_fresh_process_to_identical_weights_and_metrics(tmp_path):
    full = run_loop(tmp_path / "uninterrupted")
    ckpt = tmp_path / "ckpt"
    (tmp_path / "killed").mkdir()
    killed = _fresh_process(ckpt, tmp_path / "killed", kill=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    (tmp_path / "resumed").mkdir()
    resumed = _fresh_process(ckpt, tmp_path / "resumed", kill=False)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    report = json.loads((tmp_path / "resumed" / "report.json").read_text())
    # the checkpoint of experience 1 was written when experience 2 started, after experience 1's evaluation
    assert report["start"] == KILL_EXPERIENCE
    assert report["results"][str(KILL_EXPERIENCE)] == full["results"][KILL_EXPERIENCE]
    for name in ("AAA/eval_phase/test_stream", "StreamForgetting/eval_phase/test_stream",
                 "StreamBWT/eval_phase/test_stream"):
        assert name in report["results"][str(KILL_EXPERIENCE)], name
    assert report["history"] == json.loads(json.dumps(full["history"]))  # every value emitted, before the kill too
    weights = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert weights.keys() == full["state"].keys()
    for k, v in full["state"].items():
        assert torch.equal(weights[k], v), k
    assert not list(ckpt.glob(".*.tmp"))


# ---------------------------------------------------------------------- adapters without the backbone
def _trained(seed: int = 0, **kwargs):
    """A tiny SD-LoRA model with two finished tasks, a live third pair and a head of 6 classes."""
    torch.manual_seed(seed)
    model = sdlora_vit("vit_tiny_patch16_224", img_size=32, rank=2, **kwargs).eval()
    g = torch.Generator().manual_seed(1)
    for task in range(3):
        model.head.add_classes([2 * task, 2 * task + 1])
        model.add_task()
        with torch.no_grad():
            for a in model.adapters:
                a.lora_B.copy_(torch.randn(a.lora_B.shape, generator=g) * 0.05)
            model.magnitudes.alpha.add_(0.1 * task)
        if task < 2:
            model.freeze_task()
    return model


def _fresh(seed: int = 0, name: str = "vit_tiny_patch16_224", img_size: int = 32, **kwargs):
    torch.manual_seed(seed)
    return sdlora_vit(name, img_size=img_size, rank=2, **kwargs).eval()


def test_save_adapters_round_trip_onto_a_base_built_by_name(tmp_path):
    model = _trained()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    expected = model(x)
    folder = model.save_pretrained(tmp_path / "adapters")
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_FILE, TENSORS_FILE]
    cfg = json.loads((folder / CONFIG_FILE).read_text())
    assert {k: cfg[k] for k in ("model_name", "timm_name", "img_size", "options", "merged", "format")} == {
        "model_name": "vit_tiny_patch16_224", "timm_name": "vit_tiny_patch16_224", "img_size": [32, 32],
        "options": model.options.to_dict(), "merged": False, "format": "avalanche-sdlora-adapters/1"}
    saved = load_file(str(folder / TENSORS_FILE))
    assert not [k for k in saved if k.startswith("backbone.") and ".qkv." not in k]  # no frozen backbone
    assert not [k for k in saved if "base_layer" in k]
    torch.manual_seed(0)  # from_pretrained builds the (random, seed-0) base by name from the saved config
    loaded = SDLoRAViT.from_pretrained(folder).eval()
    assert torch.equal(loaded(x), expected)
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert {n for n, p in loaded.named_parameters() if p.requires_grad} == \
        {n for n, p in model.named_parameters() if p.requires_grad}


def test_a_merged_model_saves_adapters_that_rebuild_it(tmp_path):
    model = _trained()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    model.merge()
    merged_out = model(x)
    model.save_adapters(tmp_path / "merged")
    loaded = load_adapters(tmp_path / "merged", _fresh())
    assert all(a.merged for a in loaded.adapters)
    assert torch.equal(loaded(x), merged_out)  # the update is applied once, as in the saved model
    with pytest.raises(ValueError, match=r"the model is merged.*call model.unmerge\(\) before loading"):
        load_adapters(tmp_path / "merged", loaded)


@pytest.mark.parametrize("other, message", [
    (dict(name="vit_small_patch16_224"), r"saved on 'vit_tiny_patch16_224' at 32 px \(12 blocks, width 192\) but "
                                         r"this model is 'vit_small_patch16_224' at 32 px \(12 blocks, width 384\)"),
    (dict(name="deit_tiny_patch16_224"), r"but this model is 'deit_tiny_patch16_224'"),
    (dict(img_size=48), r"but this model is 'vit_tiny_patch16_224' at 48 px"),
    (dict(seed=1), r"base weights of this model differ from those the adapters in .*adapter_model\.safetensors"),
    (dict(direction_norm="frobenius"), r"other options \{'direction_norm': \('factors', 'frobenius'\)\}"),
])
def test_a_mismatched_base_is_refused_in_one_sentence(tmp_path, other, message):
    _trained().save_adapters(tmp_path / "a")
    base = _fresh(**other)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises(ValueError, match=message) as err:
        load_adapters(tmp_path / "a", base)
    assert "sdlora_vit('vit_tiny_patch16_224', img_size=32, rank=2" in str(err.value)  # how to build the right base
    after = base.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)  # untouched


def test_a_twelve_block_adapter_file_does_not_load_into_fewer_blocks(tmp_path):
    _trained().save_adapters(tmp_path / "a")
    torch.manual_seed(0)
    shallow = sdlora_vit("vit_tiny_patch16_224", img_size=32, rank=2)
    shallow.backbone.blocks = shallow.backbone.blocks[:6]
    with pytest.raises(ValueError, match=r"\(12 blocks, width 192\) but this model is .*\(6 blocks, width 192\)"):
        load_adapters(tmp_path / "a", shallow)


def test_a_flipped_bit_in_the_adapter_file_is_caught(tmp_path):
    folder = _trained().save_adapters(tmp_path / "a")
    data = bytearray((folder / TENSORS_FILE).read_bytes())
    data[-5] ^= 0x01
    (folder / TENSORS_FILE).write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"adapter_model\.safetensors' is damaged \(its sha256 differs"):
        load_adapters(folder, _fresh())


def test_checkpoints_hold_adapters_not_the_backbone(tmp_path):
    model = _trained()
    save_checkpoint(tmp_path, 0, model)
    tensors = load_file(str(tmp_path / "exp0.safetensors"))
    backbone_bytes = sum(v.numel() * v.element_size() for k, v in model.backbone.state_dict().items()
                         if "base_layer" in k or ".qkv." not in k)
    adapter_bytes = sum(v.numel() * v.element_size() for k, v in tensors.items())
    assert not [k for k in tensors if "base_layer" in k or k.startswith("model.backbone.patch_embed")]
    assert (tmp_path / "exp0.safetensors").stat().st_size < 2 * adapter_bytes < backbone_bytes / 10
    restored = _fresh()
    load_checkpoint(tmp_path, 0, restored)
    a, b = model.state_dict(), restored.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pickle_claim_the_models_pickle_and_the_optimizer_does_not():
    """What the README says about Avalanche's (dill) checkpointing, measured in this environment."""
    import dill

    model = _fresh()
    dill.loads(dill.dumps(model))
    with pytest.raises(Exception, match="sentinel"):
        dill.dumps(torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1))


if __name__ == "__main__":  # the fresh process of the resume test
    torch.set_num_threads(1)
    ckpt_dir, out_dir, mode = sys.argv[1:4]
    run_loop(Path(ckpt_dir), Path(out_dir), kill=mode == "kill")
