"""The comparison harness: every method runs 2 experiences on a tiny slice and logs the expected columns."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from benchmarks import compare, predictions, runner
from benchmarks.methods import get_method, method_names
from benchmarks.run_folder import RunFolder
from conftest import TINY, TINY6, TINY_METHOD_OPTIONS

METHODS = method_names()


def test_every_method_logs_expected_columns(tiny_run):
    run_dir, methods = tiny_run
    per_task = pd.read_csv(run_dir / "per_task.csv")
    for col in ("method", "seed", "experience", "acc_seen", "acc_exp_0", "acc_exp_1", "trainable_params",
                "stored_params", "train_seconds", "eval_seconds"):
        assert col in per_task.columns, col
    assert set(per_task["method"]) == set(methods)
    seq = per_task[per_task["method"].map(lambda m: get_method(m).schedule != "joint")]
    assert seq.groupby("method")["experience"].apply(list).map(lambda e: e == [0, 1]).all()
    summary = pd.read_csv(run_dir / "summary.csv")
    assert set(summary["method"]) == set(methods)
    assert {"acc_mean_pct", "acc_std_pct", "aaa_mean_pct", "aaa_std_pct", "forgetting_pct", "bwt_pct",
            "trainable_params", "stored_params", "train_seconds", "n_seeds"} <= set(summary.columns)
    assert ((summary["acc_mean_pct"] >= 0) & (summary["acc_mean_pct"] <= 100)).all()  # percent (benchmarks.units)
    for f in ("table.md", "seen_accuracy.png", "final_accuracy.png", "config.json", "DONE"):
        assert (run_dir / f).exists(), f
    assert (run_dir / "csv" / "sdlora" / "seed0" / "eval_results.csv").exists()  # Avalanche's CSVLogger
    # its training accuracy/loss and test loss columns hold the values (Avalanche writes 0 without their metrics)
    train_log = pd.read_csv(run_dir / "csv" / "sdlora" / "seed0" / "training_results.csv")
    eval_log = pd.read_csv(run_dir / "csv" / "sdlora" / "seed0" / "eval_results.csv")
    assert (train_log["training_loss"] > 0).all() and train_log["training_accuracy"].between(0, 1).all()
    assert train_log["training_accuracy"].gt(0).any() and (eval_log["eval_loss"] > 0).all()
    assert list(train_log.columns) == ["training_exp", "epoch", "training_accuracy", "training_loss"]  # no empty val_*
    # the magnitudes as a long table: one row per (method, seed, experience, task), the numbers of per_task's string
    long = pd.read_csv(run_dir / "magnitudes.csv")
    sd = per_task[per_task["method"] == "sdlora"].sort_values("experience")
    got = long[long["method"] == "sdlora"].sort_values(["experience", "task"])
    assert list(got.groupby("experience")["task"].apply(list)) == [[0], [0, 1]]
    assert got["alpha"].tolist() == [float(a) for text in sd["alphas"].astype(str) for a in text.split()]
    with_alphas = per_task.loc[per_task["alphas"].astype(str).str.strip().ne("") & per_task["alphas"].notna(), "method"]
    assert set(long["method"]) == set(with_alphas)  # every method that records magnitudes, and only those


def test_every_method_keeps_its_predictions_and_they_score_its_accuracy(tiny_run):
    # the per-image predictions behind paired bounds: after the last experience, on every seen class's test images,
    # scoring exactly the accuracy Avalanche's metric reported for that row
    run_dir, methods = tiny_run
    per_task = pd.read_csv(run_dir / "per_task.csv")
    folder = RunFolder(run_dir)
    first = None
    for method in methods:
        last = per_task[per_task["method"] == method].sort_values("experience").iloc[-1]
        kept = predictions.load(folder.predictions(method, 0))
        assert kept.experience == last["experience"], method
        assert len(kept.y_true) == 4 * 3  # 4 classes x 3 test images, all seen after the last experience
        assert kept.accuracy == pytest.approx(last["acc_seen"], abs=1e-12), method
        if first is None:
            first = kept
        np.testing.assert_array_equal(kept.y_true, first.y_true)  # one order of images for every method
    assert len({tuple(predictions.load(folder.predictions(m, 0)).y_pred) for m in methods}) > 1


def test_our_aaa_matches_avalanche_metric_plugin(tiny_run):
    run_dir, _ = tiny_run
    per_task = pd.read_csv(run_dir / "per_task.csv")
    g = per_task[per_task["method"] == "sdlora"].sort_values("experience")
    assert g["aaa_avalanche"].iloc[-1] == pytest.approx(g["acc_seen"].mean(), abs=1e-6)


def test_finished_run_is_never_overwritten(tiny_run):
    run_dir, _ = tiny_run
    before = (run_dir / "per_task.csv").read_bytes()
    with pytest.raises(SystemExit, match="never overwritten"):
        compare.main(TINY + ["--methods", "ncm", "--out", str(run_dir.parent.parent), "--run-id", "t"])
    assert (run_dir / "per_task.csv").read_bytes() == before
    assert json.loads((run_dir / "config.json").read_text())["protocol"] == "cifar100-tiny128"


def test_unknown_method_is_a_clear_error():
    with pytest.raises(SystemExit, match=r"^error: unknown method\(s\) \['lora-magic'\]"):
        compare.parse_args(["--methods", "sdlora", "lora-magic"])


def test_resume_refuses_a_run_made_under_other_sdlora_defaults(tiny_run, tmp_path):
    # e.g. a run started when direction_norm="frobenius" was the default, resumed after it became "factors"
    run_dir, _ = tiny_run
    copy = tmp_path / "cifar100-tiny128" / "old"
    shutil.copytree(run_dir, copy)
    (copy / "DONE").unlink()
    config = json.loads((copy / "config.json").read_text())
    assert config["identity"]["direction_norm"] == "factors"
    config["identity"]["direction_norm"] = "frobenius"
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit, match='--direction-norm: the run\'s "frobenius", this call\'s "factors"'):
        compare.main(TINY + TINY_METHOD_OPTIONS + ["--methods", "sdlora", "--resume", str(copy)])
    # naming the run's option explicitly is accepted (ncm finished already, so nothing reruns)
    assert compare.main(TINY + TINY_METHOD_OPTIONS + ["--methods", "ncm", "--resume", str(copy),
                                                      "--direction-norm", "frobenius"]) == copy


def test_resume_adds_seeds_to_a_finished_run_and_keeps_its_parts(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    copy = tmp_path / "cifar100-tiny128" / "more"
    shutil.copytree(run_dir, copy)
    before = (copy / "parts" / "ncm-seed0.csv").read_bytes()
    compare.main(TINY + TINY_METHOD_OPTIONS + ["--methods", "ncm", "--seeds", "0", "1", "--resume", str(copy)])
    assert (copy / "parts" / "ncm-seed0.csv").read_bytes() == before
    assert (copy / "parts" / "ncm-seed1.csv").exists() and (copy / "DONE").exists()
    # the reports of a resumed run cover every method in it, not only those named in the resuming call
    summary = pd.read_csv(copy / "summary.csv")
    assert set(summary["method"]) == set(METHODS)
    assert int(summary.loc[summary["method"] == "ncm", "n_seeds"].iloc[0]) == 2
    assert set(pd.read_csv(copy / "per_task.csv")["method"]) == set(METHODS)
    # config.json keeps every call that wrote into the folder, the first one included
    calls = json.loads((copy / "config.json").read_text())["calls"]
    assert len(calls) == 2 and calls[0]["methods"] == list(METHODS) and calls[1]["seeds"] == [0, 1]
    assert "--resume" in calls[1]["command"] and calls[1]["wall_seconds"] is not None


def test_a_killed_resume_stays_on_record_with_no_wall_time(tiny_run, tmp_path, monkeypatch):
    # a call killed at a session's end leaves rows behind: its command and machine stay in config.json's calls
    run_dir, _ = tiny_run
    copy = tmp_path / "cifar100-tiny128" / "killed"
    shutil.copytree(run_dir, copy)
    before = json.loads((copy / "config.json").read_text())

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as a SIGINT or the end of a session would stop it

    monkeypatch.setattr(runner, "run", killed)
    with pytest.raises(KeyboardInterrupt):
        compare.main(TINY + TINY_METHOD_OPTIONS + ["--methods", "ncm", "--seeds", "0", "1", "--resume", str(copy)])
    config = json.loads((copy / "config.json").read_text())
    assert config["command"] == before["command"]  # the top-level fields still describe the last finished call
    assert config["calls"][:-1] == before["calls"]
    assert "--seeds 0 1" in config["calls"][-1]["command"] and config["calls"][-1]["wall_seconds"] is None
    monkeypatch.undo()
    compare.main(TINY + TINY_METHOD_OPTIONS + ["--methods", "ncm", "--seeds", "0", "1", "--resume", str(copy)])
    calls = json.loads((copy / "config.json").read_text())["calls"]
    assert len(calls) == len(before["calls"]) + 2
    assert calls[-2]["wall_seconds"] is None and calls[-1]["wall_seconds"] is not None


def test_a_failing_method_does_not_cost_the_others_and_leaves_the_run_unfinished(tmp_path, monkeypatch, capsys):
    real = runner.run

    def diverging_lwf(method, *args, **kwargs):
        if method == "lwf":
            raise FloatingPointError("loss is nan at experience 1")
        return real(method, *args, **kwargs)

    monkeypatch.setattr(runner, "run", diverging_lwf)
    with pytest.raises(SystemExit, match=r"1 of 2 runs failed(.|\n)*lwf-seed0: FloatingPointError: loss is nan"):
        compare.main(TINY + ["--methods", "lwf", "ncm", "--out", str(tmp_path), "--run-id", "f"])
    run_dir = tmp_path / "cifar100-tiny128" / "f"
    assert "lwf seed 0 failed, the other runs go on" in capsys.readouterr().err
    assert (run_dir / "parts" / "ncm-seed0.csv").exists() and not (run_dir / "DONE").exists()
    assert json.loads((run_dir / "config.json").read_text())["failed"] == {
        "lwf-seed0": "FloatingPointError: loss is nan at experience 1"}
    monkeypatch.setattr(runner, "run", real)
    compare.main(TINY + ["--methods", "ncm", "--seeds", "1", "--resume", str(run_dir)])  # lwf not retried here
    assert "lwf-seed0" in json.loads((run_dir / "config.json").read_text())["failed"]
    assert not (run_dir / "DONE").exists()
    # the cause is fixed: resume reruns only the failed run
    compare.main(TINY + ["--methods", "lwf", "ncm", "--seeds", "0", "--resume", str(run_dir)])
    assert (run_dir / "DONE").exists() and (run_dir / "parts" / "lwf-seed0.csv").exists()


def test_resume_without_methods_or_seeds_continues_the_runs_own(tiny_run, tmp_path, capsys):
    # the command's defaults (sdlora, seed 0) are not the run's: a resume must not train them into another run
    run_dir, _ = tiny_run
    copy = tmp_path / "cifar100-tiny128" / "own"
    shutil.copytree(run_dir, copy)
    (copy / "parts" / "ncm-seed0.csv").unlink()
    shutil.rmtree(copy / "csv" / "ncm", ignore_errors=True)
    compare.main(TINY + TINY_METHOD_OPTIONS + ["--resume", str(copy)])
    assert (copy / "parts" / "ncm-seed0.csv").exists() and (copy / "DONE").exists()
    assert "1 to run" in capsys.readouterr().out
    assert json.loads((copy / "config.json").read_text())["calls"][-1]["methods"] == list(METHODS)


def test_resume_takes_the_flags_it_leaves_out_from_the_run(tiny_run, tmp_path):
    # TINY is far from the defaults (4 classes, 32 px, 1 epoch, ...): a bare --resume continues with the run's values
    # (before, every left-out flag was the default and the call was refused for each), and reruns ncm as it was
    run_dir, _ = tiny_run
    copy = tmp_path / "cifar100-tiny128" / "bare"
    shutil.copytree(run_dir, copy)
    (copy / "parts" / "ncm-seed0.csv").unlink()
    shutil.rmtree(copy / "csv" / "ncm", ignore_errors=True)
    assert compare.main(["--resume", str(copy), "--quiet"]) == copy
    timing = ["train_seconds", "eval_seconds"]
    again = pd.read_csv(copy / "parts" / "ncm-seed0.csv").drop(columns=timing)
    pd.testing.assert_frame_equal(again, pd.read_csv(run_dir / "parts" / "ncm-seed0.csv").drop(columns=timing))
    assert (copy / "DONE").exists()


def test_resumed_flags_fill_only_what_was_left_out(tmp_path):
    import argparse

    from benchmarks.config import RunConfig, add_run_flags
    from benchmarks.resume import resumed_flags

    parser = argparse.ArgumentParser()
    add_run_flags(parser)
    saved = RunConfig.for_protocol("cifar100-tiny128", epochs=7, img_size=64, data=str(tmp_path / "elsewhere.npz"),
                                   class_order="seed").to_json()
    args = parser.parse_args(["--epochs", "2"])
    filled = resumed_flags(args, saved)
    assert args.epochs == 2 and "--epochs" not in filled  # given: kept (the identity check then refuses it)
    assert args.img_size == 64 and args.class_order == "seed" and args.rank == 10
    assert args.data is None and "--data" not in filled  # a path that does not exist here is found as in a new run
    assert resumed_flags(parser.parse_args([]), {"protocol": "no-such-protocol"}) == []


def test_planned_runs_are_the_config_the_calls_and_the_parts(tmp_path):
    from benchmarks.run_folder import RunFolder

    folder = RunFolder(tmp_path / "r")
    assert folder.planned_runs() == ([], [])
    (folder.path / "parts").mkdir(parents=True)
    folder.write_config({"methods": ["ncm"], "seeds": [1], "identity": {},
                         "calls": [{"methods": ["sdlora", "ncm"], "seeds": [0]}, {"methods": ["ncm"], "seeds": [1]}]})
    (folder.path / "parts" / "lwf-seed3.csv").write_text("method,seed,experience\nlwf,3,0\n")  # a killed extension
    assert folder.planned_runs() == (["sdlora", "ncm", "lwf"], [0, 1, 3])


def test_resume_refuses_another_ewc_lambda(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    copy = tmp_path / "cifar100-tiny128" / "ewc"
    shutil.copytree(run_dir, copy)
    assert json.loads((copy / "config.json").read_text())["ewc_lambda"] == 100.0
    with pytest.raises(SystemExit, match="--ewc-lambda: the run's 100.0, this call's 1000.0"):
        compare.main(TINY + TINY_METHOD_OPTIONS + ["--methods", "ewc", "--seeds", "1", "--resume", str(copy),
                                                   "--ewc-lambda", "1000"])
    assert not (copy / "parts" / "ewc-seed1.csv").exists()


def test_workers_load_in_dataloader_processes_and_are_recorded(tmp_path):
    run_dir = compare.main(TINY + ["--methods", "sdlora", "--workers", "1", "--out", str(tmp_path), "--run-id", "w"])
    config = json.loads((run_dir / "config.json").read_text())
    assert config["workers"] == 1 and config["device"] == "cpu" and config["device_name"]
    per_task = pd.read_csv(run_dir / "per_task.csv")
    assert per_task["experience"].tolist() == [0, 1] and per_task["acc_seen"].between(0, 1).all()


def test_negative_workers_is_a_clear_error():
    with pytest.raises(SystemExit, match="--workers must be 0 or more"):
        compare.parse_args(["--workers", "-1"])


def test_parallel_run_reports_a_failed_run_s_finished_rows(tmp_path, capsys):
    # --jobs 2 (worker processes): lr 1e9 makes naive's loss NaN in its second experience, after one finished row
    with pytest.raises(SystemExit, match="1 of 2 runs failed"):
        compare.main(TINY + ["--methods", "naive", "ncm", "--lr", "1e9", "--jobs", "2", "--out", str(tmp_path),
                             "--run-id", "p"])
    assert "naive seed 0 failed, the other runs go on" in capsys.readouterr().err
    run_dir = tmp_path / "cifar100-tiny128" / "p"
    summary = pd.read_csv(run_dir / "summary.csv").set_index("method")
    assert summary.loc["naive", "n_unfinished"] == 1 and summary.loc["ncm", "n_seeds"] == 1
    assert "0 (+1 unfinished)" in (run_dir / "table.md").read_text()


def test_a_row_is_not_kept_from_a_model_that_is_not_finite(tmp_path, monkeypatch):
    # A step can leave NaN weights behind a finite loss; the experience's evaluation would then run on NaN logits.
    from avalanche.core import SupervisedPlugin

    class PoisonAfterExperience1(SupervisedPlugin):
        def after_training_exp(self, strategy, **kwargs):
            if strategy.experience.current_experience == 1:
                with torch.no_grad():
                    next(p for p in strategy.model.parameters() if p.requires_grad).fill_(float("nan"))

    real = runner.run
    monkeypatch.setattr(runner, "run", lambda *a, **kw: real(*a, **{**kw, "plugins": [PoisonAfterExperience1()]}))
    with pytest.raises(SystemExit, match="1 of 1 runs failed") as err:
        compare.main(TINY6 + ["--methods", "naive", "--out", str(tmp_path), "--run-id", "nan"])
    assert "NaN or inf after training experience 1" in str(err.value)
    run_dir = tmp_path / "cifar100-tiny128" / "nan"
    assert pd.read_csv(run_dir / "parts" / "naive-seed0.csv")["experience"].tolist() == [0]
    assert "after training experience 1" in json.loads((run_dir / "config.json").read_text())["failed"]["naive-seed0"]


def test_a_run_that_fails_before_its_first_row_says_so_and_how_to_go_on(tmp_path, monkeypatch):
    def fails_at_once(method, *args, **kwargs):
        raise FloatingPointError("loss is nan at experience 0, epoch 0, iteration 0")

    monkeypatch.setattr(runner, "run", fails_at_once)
    with pytest.raises(SystemExit) as err:
        compare.main(TINY + ["--methods", "sdlora", "--out", str(tmp_path), "--run-id", "f0"])
    message = str(err.value)
    assert "no rows were kept" in message and "parts" not in message
    assert not (tmp_path / "cifar100-tiny128" / "f0" / "parts").exists()
    # the advice names what --resume can retry and what needs a new run
    assert "--resume" in message and "another --run-id" in message and "--lr" in message


def _spawned_children(pid):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = Path(f"/proc/{d}/cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"spawn_main" in cmdline:
            out.append(int(d))
    return out


def _wait_for(condition, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_one_writer_per_run_folder_and_per_task_follows_parallel_workers(tmp_path):
    # compare --jobs 2 runs in a thread of this process; its two worker processes are stopped after a first row.
    run_dir = tmp_path / "cifar100-tiny128" / "par"
    argv = TINY6 + ["--methods", "sdlora", "seq-lora", "--jobs", "2", "--out", str(tmp_path), "--run-id", "par"]
    outcome = {}

    def run():
        try:
            outcome["run_dir"] = compare.main(argv)
        except BaseException as err:  # noqa: BLE001 - re-raised by the test
            outcome["error"] = err

    writer = threading.Thread(target=run)
    writer.start()
    workers = []
    try:
        assert _wait_for(lambda: "error" in outcome or any(
            len(p.read_text().splitlines()) > 1 for p in (run_dir / "parts").glob("*.csv")), 240), outcome
        workers = _spawned_children(os.getpid())
        for w in workers:
            os.kill(w, signal.SIGSTOP)
        assert len(workers) == 2 and "error" not in outcome

        def per_task_has_every_part_row():  # while no worker ends, the parent folds their parts into per_task.csv
            parts = [pd.read_csv(p) for p in (run_dir / "parts").glob("*.csv")]
            return (run_dir / "per_task.csv").exists() and len(pd.read_csv(run_dir / "per_task.csv")) == sum(
                map(len, parts))

        assert _wait_for(per_task_has_every_part_row, 20)
        # a second writer, in another process, is refused naming the holder
        second = subprocess.run(
            [sys.executable, "-c", "import sys; from benchmarks.run_folder import RunLock; "
                                   "RunLock(sys.argv[1], 'second').acquire()", str(run_dir)],
            cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=60,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
        assert second.returncode == 1, second.stderr
        assert re.search(rf"is in use by pid {os.getpid()} on {re.escape(socket.gethostname())} since \S+ "
                         r"\(python -m benchmarks.compare .*--run-id par\)", second.stderr), second.stderr
        # and so is compare itself (another open file, so another lock, even in this process)
        with pytest.raises(SystemExit, match=rf"in use by pid {os.getpid()}"):
            compare.main(TINY6 + ["--methods", "sdlora", "--resume", str(run_dir)])
    finally:
        for w in workers:
            os.kill(w, signal.SIGCONT)
        writer.join(240)
    assert outcome.get("run_dir") == run_dir, outcome
    assert (run_dir / "DONE").exists() and not (run_dir / ".lock").exists()


def test_a_killed_writer_does_not_block_the_next_one(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    copy = tmp_path / "cifar100-tiny128" / "k"
    shutil.copytree(run_dir, copy)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from benchmarks.run_folder import RunLock; "
                               "RunLock(sys.argv[1], 'holder').acquire(); print('locked', flush=True); sys.stdin.read()",
         str(copy)], cwd=Path(__file__).resolve().parent.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SystemExit, match=rf"in use by pid {holder.pid} .*\(holder\)"):
            compare.main(TINY + TINY_METHOD_OPTIONS + ["--methods", "ncm", "--resume", str(copy)])
        holder.kill()  # kill -9: its lock file stays, its lock goes
        holder.wait(30)
        assert (copy / ".lock").exists()
        assert compare.main(TINY + TINY_METHOD_OPTIONS + ["--methods", "ncm", "--resume", str(copy)]) == copy
    finally:
        if holder.poll() is None:
            holder.kill()
    assert not (copy / ".lock").exists()
