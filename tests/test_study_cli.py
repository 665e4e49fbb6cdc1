"""The budget study gathers compare runs into tidy CSVs and plots, and skips finished cells."""

import pandas as pd
import pytest

from benchmarks import study
from benchmarks.units import percent

TINY = ["--classes", "4", "--n-experiences", "2", "--test-per-class", "3", "--img-size", "32", "--threads", "1"]


def test_study_grid_and_outputs(tmp_path):
    args = ["--methods", "sdlora", "seq-lora", "--epochs", "1", "--train-per-class", "4", "--lr", "0.01", "0.05",
            "--seeds", "0", "--jobs", "1", "--out", str(tmp_path)]
    cells = study.main(args + TINY)
    assert len(cells) == 4 and set(cells["lr"]) == {0.01, 0.05} and (cells["device"] == "cpu").all()
    per_task = pd.read_csv(tmp_path / "per_task.csv")
    assert {"method", "seed", "epochs", "train_per_class", "lr", "experience", "acc_seen", "alphas",
            "update_norm", "device"} <= set(per_task.columns)
    sd = per_task[per_task["method"] == "sdlora"]
    assert (sd["update_norm"] > 0).all()
    for f in ("cells.csv", "final_vs_budget.png", "alphas.png", "drift.png"):
        assert (tmp_path / f).exists(), f
    before = (tmp_path / "per_task.csv").read_text()
    study.main(args + TINY)  # every cell finished: nothing reruns, same rows
    assert (tmp_path / "per_task.csv").read_text() == before
    # a finished cell asked for another seed runs only that seed
    seeds = args.index("--seeds")
    more = args[:seeds] + ["--seeds", "0", "1"] + args[seeds + 2:]
    more[more.index("--lr") + 1: more.index("--lr") + 3] = ["0.01"]
    study.main(more + TINY)
    per_task = pd.read_csv(tmp_path / "per_task.csv")
    assert set(per_task.loc[per_task["lr"] == 0.01, "seed"]) == {0, 1}
    assert set(per_task.loc[per_task["lr"] == 0.05, "seed"]) == {0}


def test_study_reuses_a_comparison_run_as_a_cell(tmp_path):
    from benchmarks import compare

    run = compare.main(["--methods", "ncm", "seq-lora", "--seeds", "0", "--epochs", "2", "--train-per-class", "4",
                        "--batch-size", "4", "--quiet", "--out", str(tmp_path / "cmp"), "--run-id", "r"] + TINY)
    cells = study.main(["--gather-only", "--reuse", str(run), "--methods", "ncm", "--out", str(tmp_path / "s")])
    assert cells[["method", "epochs", "train_per_class"]].values.tolist() == [["ncm", 2, 4]]  # seq-lora filtered out
    runs = pd.read_csv(tmp_path / "s" / "runs.csv", float_precision="round_trip")
    assert {"acc_pct", "aaa_pct", "forgetting_pct", "final_update_norm"} <= set(runs.columns)
    # in percent: 100 x the fraction of the run's last row (per_task.csv keeps Avalanche's fractions)
    last = pd.read_csv(run / "per_task.csv").query("method == 'ncm'")["acc_seen"].iloc[-1]
    assert runs["acc_pct"].iloc[0] == percent(last)


def test_cut_short_cells_are_compared_at_the_last_experience_every_run_reached():
    # sdlora stopped after experience 1 on seed 0; seq-lora went on to 2: compare both at experience 1, never at 2.
    rows = [("sdlora", 0, 0, 0.9), ("sdlora", 0, 1, 0.8), ("sdlora", 1, 0, 0.9), ("sdlora", 1, 1, 0.7),
            ("sdlora", 1, 2, 0.6), ("seq-lora", 0, 0, 0.95), ("seq-lora", 0, 1, 0.75), ("seq-lora", 0, 2, 0.5)]
    per_task = pd.DataFrame(rows, columns=["method", "seed", "experience", "acc_seen"]).assign(
        epochs=10, train_per_class=500, lr=0.01, n_experiences=3, update_norm=1.0)
    finished = pd.DataFrame({"method": ["sdlora", "sdlora", "seq-lora"], "seed": [0, 1, 0], "epochs": 10,
                             "train_per_class": 500, "lr": 0.01, "finished": [False, True, True]})
    out = study.unfinished_cells(per_task, finished, ["method", "epochs", "train_per_class", "lr"])
    assert out["experience"].tolist() == [1, 1]
    got = dict(zip(out["method"], out["acc_seen_mean"]))
    assert got["sdlora"] == pytest.approx(0.75) and got["seq-lora"] == pytest.approx(0.75)
    assert out.loc[out["method"] == "sdlora", "last_experience_per_seed"].item() == "0:1 1:2"
    assert out["epochs"].dtype.kind == "i"
    # a study whose runs all finished writes no unfinished.csv
    assert study.unfinished_cells(per_task, finished.assign(finished=True), ["method", "epochs", "train_per_class",
                                                                            "lr"]).empty


def test_device_label_is_cpu_or_the_gpu_name_for_old_and_new_run_folders():
    assert study.device_label({"device": "cpu"}) == "cpu"  # written before device_name was recorded
    assert study.device_label({"device": "cpu", "device_name": "AMD EPYC"}) == "cpu"
    assert study.device_label({"device": "cuda", "device_name": "NVIDIA H100 80GB HBM3"}) == "NVIDIA H100 80GB HBM3"
    assert study.device_label({"device": "cuda:1"}) == "cuda:1"


def test_a_study_under_another_protocol_finds_its_own_finished_cells(tmp_path):
    # cells live in runs/<protocol>/<cell> for every protocol: a rerun resumes them instead of refusing to overwrite
    args = ["--methods", "ncm", "--epochs", "1", "--train-per-class", "4", "--lr", "0.01", "--seeds", "0", "--jobs", "1",
            "--protocol", "cifar100-tiny224", "--batch-size", "4", "--out", str(tmp_path)] + TINY
    study.main(args)
    cell = tmp_path / "runs" / "cifar100-tiny224" / "e1-n4-lr0.01"
    assert (cell / "DONE").exists()
    before = (cell / "parts" / "ncm-seed0.csv").read_text()
    cells = study.main(args)  # nothing left to run
    assert (cell / "parts" / "ncm-seed0.csv").read_text() == before and len(cells) == 1
