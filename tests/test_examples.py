"""Every script of examples/ runs at tiny scale (what CI runs of them): the drop-in loop with its adapters and
export, SD-LoRA on a user's ImageFolder tree, SD-LoRA beside L2P with Avalanche's loggers, and the torchrun loop on
two gloo processes."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch.distributed as dist
from PIL import Image

from conftest import _require_cifar

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TINY = ["--classes", "4", "--n-experiences", "2", "--train-per-class", "3", "--test-per-class", "2",
        "--img-size", "32", "--epochs", "1"]


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines main(); runs nothing
    return module


def test_every_example_is_tested_here():
    tested = {"dropin", "imagefolder", "sdlora_vs_l2p", "torchrun"}
    assert {p.stem for p in EXAMPLES.glob("*.py")} == tested


def test_dropin_trains_saves_reloads_and_exports(tmp_path):
    _require_cifar()
    final = _example("dropin").main(TINY + ["--out", str(tmp_path / "adapters")])  # exits if the logits differ
    assert (tmp_path / "adapters" / "adapter_config.json").is_file()
    assert set(final) == {"Top1_Acc_Stream/eval_phase/test_stream/Task000", "AAA/eval_phase/test_stream"}


def _image_folder(root: Path, classes=("cat", "dog", "fox", "owl"), per_class=(3, 2)) -> Path:
    rng = np.random.RandomState(0)
    for split, n in zip(("train", "test"), per_class):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.randint(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


def test_imagefolder_learns_a_users_png_tree_task_by_task(tmp_path, capsys):
    root = _image_folder(tmp_path / "data")
    accs = _example("imagefolder").main([str(root), "--n-experiences", "2", "--img-size", "32", "--epochs", "1",
                                         "--batch-size", "4", "--out", str(tmp_path / "adapters")])
    assert len(accs) == 2 and all(0 <= a <= 1 for a in accs)
    out = capsys.readouterr().out
    assert "task 1 (cat, dog)" in out and "task 2 (fox, owl)" in out  # ImageFolder's sorted names, in order
    assert (tmp_path / "adapters" / "adapter_model.safetensors").is_file()


def test_sdlora_and_l2p_write_avalanches_logs(tmp_path, capsys):
    _require_cifar()
    seen = _example("sdlora_vs_l2p").main(TINY + ["--out", str(tmp_path), "--quiet"])
    assert set(seen) == {"sdlora", "l2p"} and all(len(v) == 2 for v in seen.values())
    for method in seen:
        evals = pd.read_csv(tmp_path / method / "eval_results.csv")
        assert len(evals) and (tmp_path / method / "log.txt").stat().st_size > 0
    assert "| sdlora | " in capsys.readouterr().out


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed without gloo")
def test_torchrun_example_on_two_gloo_processes(tmp_path):
    _require_cifar()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(EXAMPLES / "torchrun.py"), *TINY, "--batch-size", "4",  # 6 images per experience: 3 per rank
           "--out", str(tmp_path)]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    final = json.loads((tmp_path / "final.json").read_text())
    assert final["world_size"] == 2 and 0 <= final["AAA/eval_phase/test_stream"] <= 1
    assert "2 rank(s): " in proc.stdout  # rank 0 alone reports
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("exp*.json")) == ["exp0.json", "exp1.json"]
