"""Bad input gets one clear error that names the problem and the fix."""

import numpy as np
import pandas as pd
import pytest
import torch
from avalanche.benchmarks.scenarios.deprecated.generators import nc_benchmark
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.plugins import EvaluationPlugin
from safetensors.torch import save_file

from avalanche_sdlora import SDLoRA, create_backbone, sdlora_vit
from avalanche_sdlora.data import ImageTensorDataset, load_cifar100, split_cifar100
from avalanche_sdlora.model import read_state_dict


def test_missing_asset_path_names_the_argument(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"not found at .*nope\.npz.*path="):
        load_cifar100(tmp_path / "nope.npz")


def test_npz_without_expected_keys(tmp_path):
    p = tmp_path / "bad.npz"
    np.savez(p, images=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(KeyError, match=r"lacks keys \['x_train', 'y_train', 'x_test', 'y_test'\]"):
        load_cifar100(p)


def test_unreadable_npz(tmp_path):
    p = tmp_path / "garbage.npz"
    p.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable npz"):
        load_cifar100(p)


def test_weights_of_another_width(tmp_path):
    small = create_backbone("vit_small_patch16_224", img_size=32)
    p = tmp_path / "small.safetensors"
    save_file({k: v.contiguous() for k, v in small.state_dict().items()}, str(p))
    with pytest.raises(ValueError, match=r"do not fit 'vit_tiny_patch16_224'.*model_name= that matches checkpoint="):
        create_backbone("vit_tiny_patch16_224", checkpoint=p, img_size=32)


def test_corrupt_weights_file(tmp_path):
    p = tmp_path / "w.safetensors"
    p.write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="could not read weights"):
        read_state_dict(p)


def test_model_that_is_not_a_vit():
    with pytest.raises(TypeError, match="SD-LoRA needs a timm"):
        sdlora_vit("resnet18")


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown timm model 'vit_tinyy_patch16_224'"):
        sdlora_vit("vit_tinyy_patch16_224")


def test_class_count_not_divisible():
    with pytest.raises(ValueError, match=r"100 classes cannot be split evenly into 7 experiences"):
        split_cifar100(n_experiences=7, train_per_class=1, test_per_class=1, img_size=8)


@pytest.mark.parametrize("field, value, says", [("train_mb_size", 0, "a positive integer"),
                                               ("train_epochs", -1, "0 or more")])  # 0 epochs: as Naive, issue 34
def test_non_positive_batch_size_or_negative_epochs(field, value, says):
    model = sdlora_vit("vit_tiny_patch16_224", img_size=32)
    kwargs = {"train_mb_size": 4, "train_epochs": 1, field: value}
    with pytest.raises(ValueError, match=f"{field} must be {says}, got {value}"):
        SDLoRA(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), **kwargs)


def test_non_positive_rank():
    with pytest.raises(ValueError, match="rank must be a positive integer, got 0"):
        sdlora_vit("vit_tiny_patch16_224", img_size=32, rank=0)


def _strategy(**kw):
    torch.manual_seed(0)
    model = sdlora_vit("vit_tiny_patch16_224", img_size=32)
    ev = EvaluationPlugin(accuracy_metrics(stream=True), loggers=[])
    return SDLoRA(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), train_mb_size=4,
                  evaluator=ev, **kw)


def _dataset(labels):
    return ImageTensorDataset(torch.zeros(len(labels), 3, 32, 32, dtype=torch.uint8), np.array(labels))


def _overlapping_streams():
    """Two one-experience streams built from overlapping class sets ({0, 1} then {1, 2}: a user-made stream)."""
    a = nc_benchmark(_dataset([0, 1] * 4), _dataset([0, 1]), n_experiences=1, task_labels=False, seed=0)
    b = nc_benchmark(_dataset([1, 2] * 4), _dataset([1, 2]), n_experiences=1, task_labels=False, seed=0)
    return a, b


def test_experiences_that_share_classes():
    a, b = _overlapping_streams()
    s = _strategy()
    s.train(a.train_stream[0])
    with pytest.raises(ValueError, match=r"experience 0 shares classes \[1\] with earlier experiences"):
        s.train(b.train_stream[0])



@pytest.mark.parametrize("method", ["inflora", "simplecil", "dualprompt"])
def test_peers_refuse_experiences_that_share_classes_before_changing_the_model(method):
    # The peers' shared ClassIncrementalTemplate: the refusal names the strategy and the fix, and comes before any
    # model adaptation or plugin (InfLoRA's subspace pass, the prompts' task switch) has touched the model.
    from benchmarks.peers import aper, dualprompt, inflora

    build = {"inflora": inflora.build_strategy, "simplecil": aper.build_simplecil_strategy,
             "dualprompt": dualprompt.build_strategy}[method]
    a, b = _overlapping_streams()
    torch.manual_seed(0)
    s = build(model_name="vit_tiny_patch16_224", checkpoint=None, img_size=32, num_classes=3, n_experiences=2,
              epochs=1, batch_size=4, eval_batch_size=8, device="cpu",
              evaluator=EvaluationPlugin(accuracy_metrics(stream=True), loggers=[]), plugins=[])
    s.train(a.train_stream[0])
    before = {k: v.clone() for k, v in s.model.state_dict().items()}
    with pytest.raises(ValueError, match=r"experience 0 shares classes \[1\] with earlier experiences; "
                                         r".*is class-incremental: build the benchmark with disjoint classes"):
        s.train(b.train_stream[0])
    after = s.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert s._seen_classes == {0, 1}

def test_nan_loss_names_experience_and_step():
    class PoisonInputs(SupervisedPlugin):
        def before_forward(self, strategy, **kwargs):
            if strategy.clock.train_epoch_iterations == 1:
                strategy.mbatch[0] = strategy.mb_x * float("nan")

    bm = nc_benchmark(_dataset([0, 1] * 4), _dataset([0, 1]), n_experiences=1, task_labels=False, seed=0)
    s = _strategy(plugins=[PoisonInputs()])
    with pytest.raises(FloatingPointError, match=r"loss is nan at experience 0, epoch 0, iteration 1"):
        s.train(bm.train_stream[0])


def test_experience_with_no_samples():
    from types import SimpleNamespace

    s = _strategy()
    s.experience = SimpleNamespace(dataset=[], classes_in_this_experience=[0], current_experience=3)
    with pytest.raises(ValueError, match="experience 3 has no samples"):
        s._before_training_exp()


# The command line: every error before the run loop is one line "error: ..." naming the flag, and exit status 1.
CLI_TINY = ["--classes", "6", "--n-experiences", "3", "--train-per-class", "4", "--test-per-class", "3",
            "--img-size", "32", "--epochs", "1", "--batch-size", "4", "--quiet", "--threads", "1", "--methods", "ncm"]


def _cli_error(capsys, argv):
    from benchmarks import compare

    assert compare.cli(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


@pytest.mark.parametrize("argv, expected", [
    (["--seeds", "-1"], "--seeds must be integers from 0 to 4294967295 (numpy's seed range), got -1"),
    (["--class-order-seed", "-5"], "--class-order-seed must be integers from 0"),
    (["--img-size", "8"], "--img-size 8 is not a multiple of vit_tiny_patch16_224's patch size 16"),
    (["--img-size", "33"], "--img-size 33 is not a multiple of vit_tiny_patch16_224's patch size 16 (the last pixels "
                           "would be ignored); pass e.g. --img-size 32 or 48"),
    (["--model", "resnet18"], "--model 'resnet18' is not a timm ViT"),
    (["--model", "vit_tinyy"], "--model 'vit_tinyy' is not a timm model name"),
    (["--classes", "150"], "--classes 150: CIFAR-100 has 100 classes; pass at most 100"),
    (["--train-per-class", "9999"], "--train-per-class 9999: "),
    (["--test-per-class", "101"], "--test-per-class 101: "),
    (["--eval-amp", "ture"], "expected true or false, got 'ture'"),
    (["--lr", "-0.1"], "--lr must be a positive number, got -0.1"),
    (["--lr", "nan"], "--lr must be a positive number, got nan"),
    (["--methods", "lora-magic"], "unknown method(s) ['lora-magic']"),
    (["--resume", "/nonexistent/run"], "--resume '/nonexistent/run' is not a run folder"),
    (["--data", "/nonexistent/c.npz"], "--data '/nonexistent/c.npz' is not a file"),
])
def test_cli_errors_are_one_line_naming_the_flag(capsys, argv, expected):
    err = _cli_error(capsys, CLI_TINY + argv)
    assert expected in err, err


def test_cli_per_class_limit_says_what_the_data_has(capsys):
    err = _cli_error(capsys, CLI_TINY + ["--train-per-class", "9999"])
    assert "has 500 images per class (the fewest of the chosen classes); pass at most 500" in err


def test_library_errors_before_the_run_loop_are_one_line_and_verbose_shows_the_traceback(tmp_path, capsys):
    from benchmarks import compare

    bad = tmp_path / "garbage.npz"
    bad.write_bytes(b"not a zip")
    argv = CLI_TINY + ["--data", str(bad), "--out", str(tmp_path), "--run-id", "g"]
    err = _cli_error(capsys, argv)
    assert "not a readable npz" in err and "--verbose prints the traceback" in err
    assert compare.cli(argv + ["--verbose"]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err
    assert not (tmp_path / "cifar100-tiny128" / "g").exists()  # nothing was created for a run that never started


def test_a_damaged_run_folder_checkpoint_is_named(tmp_path, monkeypatch, capsys):
    from benchmarks import compare, peer_checkpoint

    argv = CLI_TINY[:-1] + ["sdlora", "--out", str(tmp_path), "--run-id", "d"]
    run_dir = compare.main(argv)
    (run_dir / "DONE").unlink()
    part = run_dir / "parts" / "sdlora-seed0.csv"
    part.write_text("".join(part.read_text().splitlines(keepends=True)[:3]))  # rows of experiences 0 and 1

    def damaged(strategy, directory, experience, *args, **kwargs):
        raise ValueError("invalid safetensors header")

    real = peer_checkpoint.load
    monkeypatch.setattr(peer_checkpoint, "load", damaged)
    with pytest.raises(SystemExit, match="1 of 1 runs failed") as err:
        compare.main(CLI_TINY[:-1] + ["sdlora", "--resume", str(run_dir)])
    ckpt = run_dir / "checkpoints" / "sdlora-seed0"
    assert f"'{ckpt / 'exp1.safetensors'}' (and exp1.json): invalid safetensors header" in str(err.value)
    assert f"delete '{ckpt}'" in str(err.value)
    # a damaged file found by the library's checks is skipped, named, and the run goes on from the one before
    monkeypatch.setattr(peer_checkpoint, "load", real)
    (ckpt / "exp1.safetensors").write_bytes(b"\0" * 64)
    assert compare.main(CLI_TINY[:-1] + ["sdlora", "--resume", str(run_dir)]) == run_dir
    out = capsys.readouterr().out
    assert f"note: sdlora seed 0: skipping checkpoint exp1 in '{ckpt}'" in out and "exp1.safetensors" in out, out
    assert (run_dir / "DONE").exists() and len(pd.read_csv(run_dir / "parts" / "sdlora-seed0.csv")) == 3
