"""The paper protocols (imagenet-r-5 ... cub-10) through ``benchmarks.compare`` on synthetic trees, and SD-LoRA's
``paper`` / ``official`` presets: what they resolve to, the README's table of them, the Adam recipe, resumes."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from safetensors.torch import save_file
from test_datasets import aper_tree, coda_tree

from avalanche_sdlora.datasets import PAPER_PROTOCOLS
from benchmarks import compare, inputs, runner
from benchmarks.config import RunConfig, config_from_flags
from benchmarks.methods import get_method
from benchmarks.presets import PRESETS, preset_table
from benchmarks.protocols import PAPER_BATCH_SIZE, PAPER_EPOCHS, PAPER_WEIGHTS, PROTOCOLS, authors_lr, dataset_of
from conftest import TINY, make_evaluator

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["n01443537", "n01484850", "n01494475"]
# A random ViT-Tiny at 32 px stands in for the paper's ViT-B/16: one experience of two classes, one epoch.
SMALL = ["--model", "vit_tiny_patch16_224", "--img-size", "32", "--n-experiences", "1", "--classes", "2",
         "--epochs", "1", "--batch-size", "4", "--quiet", "--threads", "1"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """Random ViT-Tiny weights saved as a file, as a user's --checkpoint would be."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    path = tmp_path_factory.mktemp("weights") / "vit_tiny_random.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def synthetic_data(protocol: str, base: Path) -> tuple[list[str], str]:
    """A tiny tree (or npz) in the layout the protocol's benchmark reads: (extra flags, the split it gives)."""
    bench = dataset_of(protocol)
    if bench == "cifar100":
        rng, y = np.random.RandomState(0), np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
        np.savez(base / "cifar100.npz", x_train=rng.randint(0, 256, (9, 32, 32, 3), dtype=np.uint8), y_train=y,
                 x_test=rng.randint(0, 256, (9, 32, 32, 3), dtype=np.uint8), y_test=y)
        return ["--data", str(base / "cifar100.npz")], "npz"
    if bench == "domainnet":
        coda_tree(base / "DomainNet", base / "lists", CLASSES, 2, 1, marker="DomainNet", domains=("clipart", "real"),
                  name="domainnet")
        return ["--data", str(base / "DomainNet"), "--lists", str(base / "lists")], "coda"
    if protocol == "imagenet-r-20":  # the original tree with CODA-Prompt's lists
        coda_tree(base / "imagenet-r", base / "lists", CLASSES, 3, 2)
        return ["--data", str(base / "imagenet-r"), "--split", "coda", "--lists", str(base / "lists")], "coda"
    aper_tree(base / bench, CLASSES, 3, 2)
    return ["--data", str(base)], "aper"  # the folder above the unpacked archive is accepted too


@pytest.mark.parametrize("protocol", sorted(PAPER_PROTOCOLS))
def test_every_paper_protocol_runs_sdlora_on_a_synthetic_tree(protocol, tmp_path, weights):
    data, split = synthetic_data(protocol, tmp_path)
    preset = ["--preset", "paper"] if protocol == "imagenet-r-10" else []
    run_dir = compare.main(["--protocol", protocol, *data, "--checkpoint", str(weights), *SMALL, *preset,
                            "--out", str(tmp_path / "runs"), "--run-id", "t"])
    rows = pd.read_csv(run_dir / "per_task.csv")
    assert list(rows["experience"]) == [0] and 0 <= rows["acc_seen"].iloc[0] <= 1
    assert (run_dir / "csv" / "sdlora" / "seed0" / "eval_results.csv").exists()  # Avalanche's per-seed log
    config = json.loads((run_dir / "config.json").read_text())
    info = config["benchmark"]
    assert (info["name"], info["split"], info["n_classes"], info["n_experiences"]) == (
        dataset_of(protocol), split, 2, 1)
    assert info["normalization"] == [[0.5] * 3] * 2  # vit_tiny_patch16_224's timm config
    assert config["identity"]["split"] == split and config["split"] == split
    data_id = config["identity"]["data"]
    assert ("sha256" in data_id) if split == "npz" else data_id["files"] > 0 and len(data_id["files_sha256"]) == 64
    if split == "coda":
        name = dataset_of(protocol)
        assert set(data_id["split_lists"]) == {f"{name}_train.yaml", f"{name}_test.yaml"}
    recipe = config["recipes"]["sdlora"]
    if preset:
        assert recipe == {"optimizer": "adam", "lr": 8e-3, "source": "--preset paper"}
        assert config["sdlora"]["direction_norm"] == "frobenius" and config["identity"]["preset"] == "paper"
    else:
        assert recipe == {"optimizer": "sgd", "lr": PROTOCOLS[protocol]["lr"], "source": "protocol"}


def test_a_resume_is_refused_for_another_preset_or_a_changed_tree(tmp_path, weights):
    data, _ = synthetic_data("imagenet-r-10", tmp_path)
    args = ["--protocol", "imagenet-r-10", *data, "--checkpoint", str(weights), *SMALL, "--preset", "paper"]
    run_dir = compare.main(args + ["--out", str(tmp_path / "runs"), "--run-id", "t"])
    (run_dir / "DONE").unlink()
    with pytest.raises(SystemExit, match='--preset: the run\'s "paper", this call\'s "official"'):
        compare.main(args[:-1] + ["official", "--resume", str(run_dir)])
    with pytest.raises(SystemExit, match=r'--sdlora-optimizer: the run\'s "adam", this call\'s "sgd"'):
        compare.main(args + ["--sdlora-optimizer", "sgd", "--resume", str(run_dir)])
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "imagenet-r", moved / "imagenet-r")  # a copied tree is the same input
    assert compare.main([*args, "--data", str(moved), "--resume", str(run_dir)]) == run_dir
    (run_dir / "DONE").unlink()
    (moved / "imagenet-r" / "train" / CLASSES[0] / "train_0.jpg").write_bytes(b"x" * 10)  # a truncated image
    with pytest.raises(SystemExit, match=r"--data \(the data's content\): the run's 'imagenet-r' \(15 files"):
        compare.main([*args, "--data", str(moved), "--resume", str(run_dir)])


def test_paper_protocols_carry_the_papers_budget_and_the_npz_protocols_are_unchanged():
    for name, (bench, tasks) in PAPER_PROTOCOLS.items():
        p = PROTOCOLS[name]
        assert (p["model"], p["img_size"], p["train_per_class"], p["n_experiences"], p["batch_size"]) == (
            "vit_base_patch16_224", 224, None, tasks, PAPER_BATCH_SIZE)
        assert p["epochs"] == PAPER_EPOCHS.get(bench, 20) and p["lr"] == authors_lr(bench, tasks)[0]
    assert {n: PROTOCOLS[n]["epochs"] for n in ("imagenet-r-5", "domainnet-5", "cub-10")} == {
        "imagenet-r-5": 30, "domainnet-5": 10, "cub-10": 20}
    # the npz protocols as every committed result ran them
    split = {"n_experiences": 10, "class_order_seed": 1993, "eval_batch_size": 256, "train_per_class": None,
             "batch_size": 128, "lr": 0.01, "eval_amp": False, "img_size": 224, "epochs": 20, "train_amp": "float32"}
    assert PROTOCOLS["cifar100-tiny128"] == {**split, "model": "vit_tiny_patch16_224", "img_size": 128,
                                             "train_per_class": 100, "epochs": 3, "batch_size": 32, "eval_amp": True}
    assert PROTOCOLS["cifar100-tiny224"] == {**split, "model": "vit_tiny_patch16_224"}
    assert PROTOCOLS["cifar100-paper"] == {**split, "model": "vit_base_patch16_224"}
    # issue 30: the headline's full-data protocol, cifar100-tiny128 on every training image (float32 training)
    assert PROTOCOLS["cifar100-tiny128-full"] == {**PROTOCOLS["cifar100-tiny128"], "train_per_class": None}
    assert authors_lr("imagenet-r", 10)[0] == 0.008 and "InR-T20.log" in authors_lr("imagenet-r", 10)[1]


def test_paper_protocol_errors_name_the_flag(tmp_path, monkeypatch, weights):
    for var in ("SDLORA_DATA", "SDLORA_IMAGENET_R", "SDLORA_SPLIT_LISTS"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(SystemExit, match=f"needs --checkpoint PATH.*{re.escape(PAPER_WEIGHTS)}"):
        compare.main(["--protocol", "imagenet-r-10", "--data", str(tmp_path)])
    ckpt = ["--checkpoint", str(weights), "--model", "vit_tiny_patch16_224", "--img-size", "32"]
    with pytest.raises(SystemExit, match=r"no imagenet-r folder given: pass --data PATH, or set \$SDLORA_IMAGENET_R"):
        compare.main(["--protocol", "imagenet-r-10", *ckpt])
    aper_tree(tmp_path / "imagenet-r", CLASSES, 1, 1)
    with pytest.raises(SystemExit, match="split lists .* pass --lists FOLDER or set"):
        compare.main(["--protocol", "imagenet-r-10", "--data", str(tmp_path), "--split", "coda", *ckpt])
    with pytest.raises(SystemExit, match="--lists is for a split made of CODA-Prompt's lists"):
        compare.main(["--protocol", "imagenet-r-10", "--data", str(tmp_path), "--lists", str(tmp_path), *ckpt])
    with pytest.raises(SystemExit, match="--split official: imagenet-r has the splits aper, coda"):
        compare.main(["--protocol", "imagenet-r-10", "--data", str(tmp_path), "--split", "official", *ckpt])
    with pytest.raises(SystemExit, match="--split is for the paper protocols"):
        compare.main(["--split", "aper"])
    with pytest.raises(SystemExit, match="found 3 classes in .*for a deliberate subset pass --classes N"):
        compare.main(["--protocol", "imagenet-r-10", "--data", str(tmp_path), *ckpt, "--out", str(tmp_path / "r")])
    with pytest.raises(SystemExit, match=r"--classes 5: imagenet-r at .* has 3 classes; pass 1 to 3"):
        compare.main(["--protocol", "imagenet-r-10", "--data", str(tmp_path), *ckpt, "--classes", "5",
                      "--n-experiences", "1", "--out", str(tmp_path / "r")])


# ---------------------------------------------------------------- presets


def _sdlora_fields(cfg: RunConfig) -> dict:
    return {"sdlora_optimizer": cfg.sdlora_optimizer, "sdlora_lr": cfg.sdlora_lr,
            **{k: getattr(cfg.sdlora, k) for k in ("alpha_init", "reset_alphas", "direction_norm",
                                                    "normalize_current", "rank_schedule")}}


@pytest.mark.parametrize("protocol", ["cifar100-tiny128", "imagenet-r-10", "domainnet-5"])
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_preset_sets_the_recipe_of_its_table_and_never_the_budget(name, protocol):
    preset = PRESETS[name]
    cfg = config_from_flags(compare.parse_args(["--protocol", protocol, "--preset", name]))
    expected = {"sdlora_optimizer": preset.optimizer.value,
                "sdlora_lr": preset.lr.value or authors_lr(dataset_of(protocol),
                                                           PROTOCOLS[protocol]["n_experiences"])[0],
                **{k: s.value for k, s in preset.options.items()}}
    assert _sdlora_fields(cfg) == expected and cfg.preset == name
    assert RunConfig.for_protocol(protocol, preset=name) == cfg  # the Python API resolves it the same way
    assert RunConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg  # config.json keeps what it resolved to
    plain = RunConfig.for_protocol(protocol)
    budget = ("model", "img_size", "train_per_class", "epochs", "batch_size", "lr", "n_experiences", "class_order_seed")
    assert {k: getattr(cfg, k) for k in budget} == {k: getattr(plain, k) for k in budget}
    recipe = get_method("sdlora").recipe(cfg)
    assert (recipe.optimizer, recipe.lr) == (expected["sdlora_optimizer"], expected["sdlora_lr"])
    # flags given beside a preset override it
    cfg = config_from_flags(compare.parse_args(["--protocol", protocol, "--preset", name, "--alpha-init", "0.5",
                                                "--sdlora-lr", "0.001"]))
    assert cfg.sdlora.alpha_init == 0.5 and cfg.sdlora_lr == 0.001
    assert cfg.sdlora.direction_norm == preset.options["direction_norm"].value


def test_the_documented_presets_are_the_preset_objects():
    assert PRESETS["paper"].optimizer.value == "adam" and PRESETS["paper"].lr.value == 8e-3
    assert PRESETS["official"].options["alpha_init"].value == 0.8
    assert PRESETS["official"].lr_for("cifar100-tiny128") == 0.008  # the authors' CIFAR-100 lr, not the protocol's
    doc = (ROOT / "docs" / "reproducing.md").read_text()
    assert preset_table() in doc, "docs/reproducing.md's preset table is stale: paste benchmarks.presets.preset_table()"


def test_every_reproduce_command_of_the_docs_parses_and_covers_every_cell():
    section = (ROOT / "docs" / "reproducing.md").read_text()
    commands = [ln.strip() for ln in section.splitlines() if ln.strip().startswith("python -m benchmarks.compare")]
    cells = {}
    for command in commands:
        argv = command.split()[3:]
        args = compare.parse_args(argv)
        assert args.methods == ["sdlora", "sdlora-rr", "sdlora-kd"] and args.config.preset == "paper", command
        cells[args.config.protocol] = args.config
    assert set(cells) == set(PAPER_PROTOCOLS)
    for name, cfg in cells.items():  # the protocol's own budget: no command changes it
        assert (cfg.epochs, cfg.batch_size, cfg.img_size, cfg.model) == tuple(
            PROTOCOLS[name][k] for k in ("epochs", "batch_size", "img_size", "model"))
    rows = [r.split(" | ") for r in section.splitlines() if r.startswith("| `") and r.count(" | ") == 6]
    assert {p for r in rows for p in re.findall(r"`([a-z0-9-]+)`", r[0])} == set(PAPER_PROTOCOLS)
    for row in rows:  # the protocol table's epochs and batch are the protocols'
        for name in re.findall(r"`([a-z0-9-]+)`", row[0]):
            assert (int(row[3]), int(row[4])) == (PROTOCOLS[name]["epochs"], PROTOCOLS[name]["batch_size"]), row


# ---------------------------------------------------------------- the Adam recipe


def _tiny_cfg(*flags: str) -> RunConfig:
    return inputs.resolved(config_from_flags(compare.parse_args(TINY + list(flags))))


def test_adam_is_used_when_asked_and_the_default_stays_the_shared_sgd(tiny_bench, tmp_path):
    default, sgd, adam = _tiny_cfg(), _tiny_cfg("--sdlora-optimizer", "sgd", "--sdlora-lr", "0.01"), \
        _tiny_cfg("--preset", "paper", "--direction-norm", "factors", "--normalize-current", "false",
                  "--alpha-init", "0.8", "--reset-alphas", "true", "--rank-schedule", "0:10,3:8,7:6")
    assert adam.sdlora == default.sdlora  # only the optimizer and lr differ from the default run
    built = {k: get_method("sdlora").build(c, 4, make_evaluator(), []).optimizer
             for k, c in (("default", default), ("adam", adam))}
    assert type(built["default"]) is torch.optim.SGD and built["default"].defaults["momentum"] == 0.9
    assert built["default"].defaults["lr"] == 0.01 and built["default"].defaults["weight_decay"] == 0
    assert type(built["adam"]) is torch.optim.Adam and built["adam"].defaults["lr"] == 8e-3
    rows = {k: pd.DataFrame(runner.run("sdlora", 0, c, tiny_bench, tmp_path / k)).drop(
        columns=["train_seconds", "eval_seconds"]) for k, c in (("default", default), ("sgd", sgd), ("adam", adam))}
    assert rows["default"].equals(rows["sgd"])  # the explicit SGD path is the default path, to the last bit
    assert not rows["default"]["update_norm"].equals(rows["adam"]["update_norm"])
