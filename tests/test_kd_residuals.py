"""``python -m benchmarks.kd_residuals``: KD's statistic read back from a compare run's checkpoints."""

import pytest
import torch

from avalanche_sdlora import sdlora_vit
from avalanche_sdlora.checkpoint import load_checkpoint
from avalanche_sdlora.plugins.distillation import direction_residuals
from benchmarks import compare, kd_residuals
from benchmarks.config import RunConfig
from benchmarks.inputs import resolve_checkpoint
from benchmarks.run_folder import RunFolder
from conftest import TINY6, _require_cifar


def test_residuals_of_a_run_are_its_models_own(tmp_path, capsys):
    """The model is rebuilt on the run's weights file (a random base is refused by the adapters' fingerprint) and the
    printed residuals are that checkpoint's direction_residuals."""
    _require_cifar()
    torch.manual_seed(0)
    folder = compare.main(["--methods", "sdlora-kd", *TINY6, "--out", str(tmp_path), "--run-id", "r"])
    ckpt = folder / "checkpoints" / "sdlora-kd-seed0"
    res = kd_residuals.main([str(ckpt)])
    cfg = RunConfig.from_json(RunFolder(folder).read_config())
    model = sdlora_vit(cfg.model, img_size=cfg.img_size, options=cfg.sdlora,
                       checkpoint=resolve_checkpoint(cfg.model, cfg.checkpoint))
    load_checkpoint(ckpt, 2, model)
    assert len(res) == 2 and res == pytest.approx(direction_residuals(model), abs=0)
    assert "direction 2: relative residual" in capsys.readouterr().out
