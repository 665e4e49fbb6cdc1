"""Exact resume: a run killed at chosen points and resumed equals an uninterrupted run, bit for bit on CPU."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from avalanche_sdlora.assets import default_asset
from benchmarks import compare, migrate, peer_checkpoint, predictions, reports
from conftest import TINY6 as TINY
METHODS = ["naive", "seq-lora", "sdlora"]  # an Avalanche baseline (restarts) and two checkpointed methods
LOGS = ("training_results.csv", "eval_results.csv")


def _rows(path):
    """A CSV of rows as written (every field as text), without the wall-clock columns."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    return df.drop(columns=[c for c in df.columns if c.endswith("_seconds")])


def _assert_same_run(resumed, clean, methods=METHODS):
    if methods == METHODS:
        pd.testing.assert_frame_equal(_rows(resumed / "per_task.csv"), _rows(clean / "per_task.csv"))
        pd.testing.assert_frame_equal(_rows(resumed / "summary.csv"), _rows(clean / "summary.csv"))
    for method in methods:
        pd.testing.assert_frame_equal(_rows(resumed / "parts" / f"{method}-seed0.csv"),
                                      _rows(clean / "parts" / f"{method}-seed0.csv"))
        got, want = (predictions.load(f / "predictions" / f"{method}-seed0.csv") for f in (resumed, clean))
        assert got.experience == want.experience
        np.testing.assert_array_equal(got.y_pred, want.y_pred)  # the same image-by-image answers
        np.testing.assert_array_equal(got.y_true, want.y_true)
        for log in LOGS:
            got = (resumed / "csv" / method / "seed0" / log).read_text()
            assert got == (clean / "csv" / method / "seed0" / log).read_text(), (method, log)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """The uninterrupted run every resumed one must equal."""
    return compare.main(TINY + ["--methods", *METHODS, "--out", str(tmp_path_factory.mktemp("clean")), "--run-id", "c"])


def test_killed_runs_resume_to_identical_rows_and_logs(clean, tmp_path, monkeypatch):
    args = TINY + ["--methods", *METHODS]
    killed = tmp_path / "cifar100-tiny128" / "killed"
    real_save, real_write = peer_checkpoint.save, reports.write_csv

    # kill 1: while naive's row of experience 1 is being written (the part keeps experience 0 only)
    def kill_in_naive_row(df, path):
        if path.name == "naive-seed0.csv" and len(df) == 2:
            raise KeyboardInterrupt("kill")
        return real_write(df, path)

    monkeypatch.setattr(reports, "write_csv", kill_in_naive_row)
    with pytest.raises(KeyboardInterrupt):
        compare.main(args + ["--out", str(tmp_path), "--run-id", "killed"])
    assert len(pd.read_csv(killed / "parts" / "naive-seed0.csv")) == 1
    monkeypatch.setattr(reports, "write_csv", real_write)

    # kill 2: seq-lora, as its third experience ends (rows and checkpoints of experiences 0 and 1 exist)
    def kill_before_seq_lora_exp2(strategy, directory, experience, *a, **kw):
        if "seq-lora" in str(directory) and experience == 2:
            raise KeyboardInterrupt("kill")
        return real_save(strategy, directory, experience, *a, **kw)

    monkeypatch.setattr(peer_checkpoint, "save", kill_before_seq_lora_exp2)
    with pytest.raises(KeyboardInterrupt):
        compare.main(args + ["--resume", str(killed)])
    assert len(pd.read_csv(killed / "parts" / "seq-lora-seed0.csv")) == 2

    # kill 3: sdlora, after experience 1's checkpoint but before its row (it resumes from experience 0's)
    def kill_after_sdlora_exp1(strategy, directory, experience, *a, **kw):
        path = real_save(strategy, directory, experience, *a, **kw)
        if "sdlora-seed0" in str(directory) and experience == 1:
            raise KeyboardInterrupt("kill")
        return path

    monkeypatch.setattr(peer_checkpoint, "save", kill_after_sdlora_exp1)
    with pytest.raises(KeyboardInterrupt):
        compare.main(args + ["--resume", str(killed)])
    monkeypatch.setattr(peer_checkpoint, "save", real_save)
    compare.main(args + ["--resume", str(killed)])
    _assert_same_run(killed, clean)
    # seq-lora's magnitude stayed fixed at 1 through the resume (it trained to 3.0 when a restored model unfroze it)
    seq = pd.read_csv(killed / "parts" / "seq-lora-seed0.csv")
    assert (seq["alphas"].astype(float) == 1.0).all()


def test_a_checkpoint_without_metric_state_reruns_its_run_from_the_start(clean, tmp_path, monkeypatch, capsys):
    # checkpoints written before they held the evaluator's state: resuming from one would get forgetting, BWT and
    # AAA wrong, so the (method, seed) starts again (and still equals the uninterrupted run)
    real_state, real_save = peer_checkpoint.strategy_state, peer_checkpoint.save

    def kill_after_exp1(strategy, directory, experience, *a, **kw):
        path = real_save(strategy, directory, experience, *a, **kw)
        if experience == 1:
            raise KeyboardInterrupt("kill")
        return path

    monkeypatch.setattr(peer_checkpoint, "strategy_state", lambda s: {k: v for k, v in real_state(s).items() if k != "evaluator"})
    monkeypatch.setattr(peer_checkpoint, "save", kill_after_exp1)
    args = TINY + ["--methods", "sdlora"]
    with pytest.raises(KeyboardInterrupt):
        compare.main(args + ["--out", str(tmp_path), "--run-id", "old"])
    monkeypatch.undo()
    run_dir = compare.main(args + ["--resume", str(tmp_path / "cifar100-tiny128" / "old")])
    assert "holds no metric state (an older format); rerunning from the first experience" in capsys.readouterr().out
    _assert_same_run(run_dir, clean, methods=["sdlora"])


def test_same_seed_same_numbers_twice(tmp_path):
    args = TINY + ["--methods", "sdlora", "--out", str(tmp_path)]
    a = compare.main(args + ["--run-id", "a"])
    b = compare.main(args + ["--run-id", "b"])
    pd.testing.assert_frame_equal(_rows(a / "per_task.csv"), _rows(b / "per_task.csv"))


@pytest.fixture(scope="module")
def finished_ncm(tmp_path_factory):
    """A finished one-method run (ncm trains in one pass: cheap) to resume with other settings."""
    out = tmp_path_factory.mktemp("ncm")
    return compare.main(TINY + ["--methods", "ncm", "--out", str(out), "--run-id", "r"])


def test_a_training_free_method_logs_no_training_rows_and_a_real_test_loss(finished_ncm):
    """ncm's one pass over an experience takes no training step: no row of zeros in the training log (it would
    read as accuracy 0 and loss 0); its test loss is the cross-entropy of its prototype scores, not 0."""
    logs = finished_ncm / "csv" / "ncm" / "seed0"
    assert (logs / "training_results.csv").read_text() == "training_exp,epoch,training_accuracy,training_loss\n"
    ev = pd.read_csv(logs / "eval_results.csv")
    assert len(ev) and (ev["eval_loss"] > 0).all()


@pytest.mark.parametrize("change, named", [
    (["--epochs", "2"], "--epochs: the run's 1, this call's 2"),
    (["--classes", "12"], "--classes: the run's 6, this call's 12"),
    (["--test-per-class", "2"], "--test-per-class: the run's 3, this call's 2"),
    (["--threads", "2"], "--threads (torch threads per (method, seed); --jobs 2 or more means 1): the run's 1"),
    (["--workers", "1"], "--workers"),
    (["--ewc-lambda", "1000"], "--ewc-lambda: the run's 100.0, this call's 1000.0"),
    (["--data", "OTHER_NPZ"], "--data (the data's content): the run's 'cifar100.npz'"),
    (["--checkpoint", "OTHER_WEIGHTS"], "--checkpoint (the weights' content)"),
])
def test_resume_refuses_every_setting_that_changes_a_number(finished_ncm, tmp_path, change, named):
    if "OTHER_NPZ" in change:  # another npz (content differs); it is refused before it is read as data
        np.savez(tmp_path / "other.npz", x_train=np.zeros((24, 32, 32, 3), np.uint8), y_train=np.arange(24) % 6,
                 x_test=np.zeros((18, 32, 32, 3), np.uint8), y_test=np.arange(18) % 6)
        change = ["--data", str(tmp_path / "other.npz")]
    if "OTHER_WEIGHTS" in change:
        (tmp_path / "w.safetensors").write_bytes(b"other weights")
        change = ["--checkpoint", str(tmp_path / "w.safetensors")]
    before, threads = (finished_ncm / "config.json").read_text(), torch.get_num_threads()
    try:
        with pytest.raises(SystemExit, match="was run with other settings") as err:
            compare.main(TINY + change + ["--methods", "ncm", "--seeds", "1", "--resume", str(finished_ncm)])
    finally:
        torch.set_num_threads(threads)
    assert named in str(err.value) and "another --run-id" in str(err.value)
    assert (finished_ncm / "config.json").read_text() == before and not (finished_ncm / "parts" / "ncm-seed1.csv").exists()


def test_resume_accepts_the_same_weights_moved_elsewhere(finished_ncm, tmp_path):
    recorded = json.loads((finished_ncm / "config.json").read_text())["checkpoint"]  # by identity, not path
    moved = tmp_path / "elsewhere.safetensors"
    shutil.copy(default_asset(recorded["name"]), moved)  # another name, path and mtime; the same content
    assert compare.main(TINY + ["--methods", "ncm", "--checkpoint", str(moved), "--resume", str(finished_ncm)]) == finished_ncm
    again = json.loads((finished_ncm / "config.json").read_text())["checkpoint"]
    assert again == {**recorded, "name": "elsewhere.safetensors"}


def test_a_run_folder_from_before_identity_is_converted_then_checked_on_what_it_recorded(finished_ncm, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(finished_ncm, old)
    config = json.loads((old / "config.json").read_text())
    del config["identity"]  # as written by earlier versions of compare
    (old / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit, match=r"format of an older version .*python -m benchmarks\.migrate"):
        compare.main(TINY + ["--methods", "ncm", "--resume", str(old)])
    assert migrate.main([str(old)]) == [old / "config.json"]
    assert "data" not in json.loads((old / "config.json").read_text())["identity"]  # not made up
    with pytest.raises(SystemExit, match="--classes: the run's 6, this call's 12"):
        compare.main(TINY + ["--classes", "12", "--methods", "ncm", "--resume", str(old)])
    compare.main(TINY + ["--methods", "ncm", "--resume", str(old)])  # same settings: accepted, identity recorded
    assert json.loads((old / "config.json").read_text())["identity"]["data"]["name"] == "cifar100.npz"


def test_kill_while_writing_the_reports_then_resume_rebuilds_them(tmp_path, monkeypatch):
    real = reports.markdown_table
    monkeypatch.setattr(reports, "markdown_table", lambda s: (_ for _ in ()).throw(KeyboardInterrupt("kill")))
    with pytest.raises(KeyboardInterrupt):
        compare.main(TINY + ["--methods", "ncm", "--out", str(tmp_path), "--run-id", "k"])
    run_dir = tmp_path / "cifar100-tiny128" / "k"
    assert (run_dir / "per_task.csv").exists() and not (run_dir / "table.md").exists()
    # temporary files left by a killed writer are removed when the next writer takes the folder
    (run_dir / ".summary.csv.abc123.tmp").write_text("half")
    (run_dir / "parts" / ".ncm-seed0.csv.def456.tmp").write_text("half")
    # a resume with nothing left to run still rebuilds the reports; killed while doing so, it writes no DONE
    monkeypatch.setattr(reports, "plot", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt("kill")))
    monkeypatch.setattr(reports, "markdown_table", real)
    with pytest.raises(KeyboardInterrupt):
        compare.main(TINY + ["--methods", "ncm", "--resume", str(run_dir)])
    assert not (run_dir / "DONE").exists()
    monkeypatch.undo()
    compare.main(TINY + ["--methods", "ncm", "--resume", str(run_dir)])
    for f in ("table.md", "summary.csv", "seen_accuracy.png", "DONE"):
        assert (run_dir / f).exists(), f
    assert not list(run_dir.rglob("*.tmp")) and not (run_dir / ".lock").exists()
