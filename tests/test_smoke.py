"""``benchmarks.compare --smoke``: the one-minute install check the README shows under the quick start."""

import pytest

from benchmarks import compare
from conftest import TINY


def test_smoke_sets_its_sizes_and_methods_and_given_flags_win():
    args = compare.parse_args(["--smoke"])
    cfg = args.config
    assert args.methods == compare.SMOKE["methods"]
    assert (cfg.classes, cfg.n_experiences, cfg.train_per_class, cfg.test_per_class, cfg.img_size, cfg.epochs,
            cfg.batch_size) == (10, 2, 30, 10, 64, 1, 16)
    assert cfg.protocol == "cifar100-tiny128" and cfg.model == "vit_tiny_patch16_224"  # the rest is the protocol's
    args = compare.parse_args(["--smoke", "--epochs", "2", "--methods", "ncm"])
    assert args.methods == ["ncm"] and args.config.epochs == 2 and args.config.img_size == 64
    assert compare.parse_args([]).config.img_size == 128  # without --smoke nothing changes


def test_smoke_is_refused_with_resume(tmp_path):
    with pytest.raises(SystemExit, match="--smoke starts a new run"):
        compare.parse_args(["--smoke", "--resume", str(tmp_path)])


def test_smoke_run_folder_is_named_smoke(tmp_path):
    run = compare.main(["--smoke", *TINY, "--methods", "ncm", "--out", str(tmp_path)])
    assert run.name.startswith("smoke-") and (run / "DONE").exists()
