"""Exact resume: a run killed after an experience and resumed equals an uninterrupted run, bit for bit on CPU."""

import pandas as pd
import pytest

from benchmarks import compare

TINY = ["--classes", "6", "--n-experiences", "3", "--train-per-class", "4", "--test-per-class", "3",
        "--img-size", "32", "--epochs", "1", "--batch-size", "4", "--quiet", "--threads", "1"]
COLS = ["experience", "acc_seen", "acc_exp_0", "acc_exp_1", "acc_exp_2", "alphas", "stored_params"]


def _table(run_dir):
    df = pd.read_csv(run_dir / "per_task.csv")
    return df[df["method"] == "sdlora-kd"].sort_values("experience")[COLS].reset_index(drop=True)


def test_killed_run_resumes_to_identical_metrics(tmp_path, monkeypatch):
    args = TINY + ["--methods", "sdlora-kd", "--out", str(tmp_path)]
    clean = _table(compare.main(args + ["--run-id", "clean"]))

    real_save = compare.save_checkpoint

    def crash_after_exp1(directory, experience, *a, **kw):
        path = real_save(directory, experience, *a, **kw)
        if experience == 1:
            raise KeyboardInterrupt("simulated kill")
        return path

    monkeypatch.setattr(compare, "save_checkpoint", crash_after_exp1)
    with pytest.raises(KeyboardInterrupt):
        compare.main(args + ["--run-id", "killed"])
    killed = tmp_path / "cifar100-cpu" / "killed"
    assert len(pd.read_csv(killed / "per_task.csv")) == 1  # experience 0's row survived the crash
    monkeypatch.setattr(compare, "save_checkpoint", real_save)
    resumed = _table(compare.main(TINY + ["--methods", "sdlora-kd", "--resume", str(killed)]))
    pd.testing.assert_frame_equal(resumed, clean, check_exact=True)


def test_same_seed_same_numbers_twice(tmp_path):
    args = TINY + ["--methods", "sdlora", "--out", str(tmp_path)]
    a = pd.read_csv(compare.main(args + ["--run-id", "a"]) / "per_task.csv")
    b = pd.read_csv(compare.main(args + ["--run-id", "b"]) / "per_task.csv")
    pd.testing.assert_frame_equal(a[COLS], b[COLS], check_exact=True)


def test_resume_with_other_configuration_is_refused(tmp_path):
    run_dir = compare.main(TINY + ["--methods", "ncm", "--out", str(tmp_path), "--run-id", "r"])
    (run_dir / "DONE").unlink()
    with pytest.raises(SystemExit, match="another configuration"):
        compare.main(TINY + ["--methods", "ncm", "--epochs", "2", "--resume", str(run_dir)])
