"""The machine-drift report: the same runs on two machines matched and differenced by hand, a superseded
unfinished run left out, the refusals (two runs of one machine, nothing matched, another experiment), and every
committed report regenerating from its run folders."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks import machine_drift, predictions
from benchmarks.run_folder import RunFolder
from conftest import fake_run

ROOT = Path(__file__).resolve().parent.parent


def _on(folder: Path, machine: str) -> Path:
    """``folder`` as if it had trained on ``machine`` (fake_run records none)."""
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "device_name": machine}))
    return folder


def _two_machines(root: Path) -> tuple[Path, Path]:
    a = _on(fake_run(root / "gpu", {("sdlora", 1993): [0.9, 0.60, 0.55], ("seq-lora", 1993): [0.9, 0.55, 0.50],
                                    ("ncm", 1993): [0.9, 0.5, 0.4]}), "NVIDIA H200")
    b = _on(fake_run(root / "cpu", {("sdlora", 1993): [0.9, 0.62, 0.58], ("seq-lora", 1993): [0.88, 0.55, 0.47]}),
            "Intel(R) Xeon(R) Processor")
    return a, b


def test_pairs_and_summary_by_hand(tmp_path):
    a, b = _two_machines(tmp_path / "runs")
    out = machine_drift.main([str(a), str(b), "--out", str(tmp_path / "drift")])
    pairs = pd.read_csv(out / "pairs.csv").set_index("method")
    assert sorted(pairs.index) == ["sdlora", "seq-lora"]  # ncm ran on one machine only: nothing to match
    sd, seq = pairs.loc["sdlora"], pairs.loc["seq-lora"]
    assert (sd["machine"], sd["other_machine"]) == ("NVIDIA H200", "Intel(R) Xeon(R) Processor")  # first folder's first
    assert sd[["acc_reference_pct", "acc_other_pct", "acc_diff_pts"]].tolist() == pytest.approx([55.0, 58.0, 3.0])
    assert sd["largest_gap_pts"] == pytest.approx(3.0) and sd["first_experience_apart"] == 2  # task 1 equal
    # AAA is the mean of the seen-class curve: (0.9 + .62 + .58 - 0.9 - .60 - .55) / 3 = +1.667 points
    assert sd["aaa_diff_pts"] == pytest.approx(5 / 3)
    assert seq[["acc_diff_pts", "largest_gap_pts", "first_experience_apart"]].tolist() == pytest.approx([-3.0, -3.0, 1])
    summary = pd.read_csv(out / "summary.csv").set_index("method")
    assert summary.loc["sdlora", ["n_runs", "n_other_higher", "n_other_lower"]].tolist() == [1, 1, 0]
    assert summary.loc["seq-lora", "acc_diff_abs_mean_pts"] == pytest.approx(3.0)
    curves = pd.read_csv(out / "curves.csv")
    assert len(curves) == 2 * 2 * 3 and set(curves["machine"]) == {"NVIDIA H200", "Intel(R) Xeon(R) Processor"}
    table = (out / "table.md").read_text()
    assert "| sdlora | NVIDIA H200 | Intel Xeon | 1 | +3.00 | 3.00 | 1 / 0 |" in table
    assert "| seq-lora | 1993 | 1993 | NVIDIA H200 (runs/gpu) | Intel Xeon (runs/cpu) | 50.00 | 47.00 | -3.00 |" in table


def test_an_unfinished_run_another_folder_finished_is_left_out_and_two_finished_are_refused(tmp_path):
    a, b = _two_machines(tmp_path / "runs")
    stopped = _on(fake_run(tmp_path / "runs" / "cpu-stopped", {("sdlora", 1993): [0.9, 0.61, 0.56]}),
                  "Intel(R) Xeon(R) Processor")
    rows = pd.read_csv(stopped / "parts" / "sdlora-seed1993.csv")
    rows.iloc[:2].assign(n_experiences=3).to_csv(stopped / "parts" / "sdlora-seed1993.csv", index=False)
    out = machine_drift.main([str(a), str(stopped), str(b), "--out", str(tmp_path / "drift")])
    pairs = pd.read_csv(out / "pairs.csv")
    assert pairs.loc[pairs["method"] == "sdlora", "other_run"].tolist() == ["runs/cpu"]  # named from the report's parent
    twice = _on(fake_run(tmp_path / "runs" / "cpu-again", {("sdlora", 1993): [0.9, 0.6, 0.5]}),
                "Intel(R) Xeon(R) Processor")
    with pytest.raises(SystemExit, match=r"sdlora order 1993 seed 1993 ran twice on Intel\(R\) Xeon\(R\) Processor "
                                         r"\(runs/cpu, runs/cpu-again\); take one of them"):
        machine_drift.main([str(a), str(b), str(twice), "--out", str(tmp_path / "d2")])


def test_refusals_name_the_problem(tmp_path):
    a, b = _two_machines(tmp_path / "runs")
    with pytest.raises(SystemExit, match="no method, class order and seed of these folders ran on two machine types"):
        machine_drift.main([str(a), "--out", str(tmp_path / "d")])
    other = _on(fake_run(tmp_path / "runs" / "e5", {("sdlora", 1993): [0.9, 0.6, 0.5]}, epochs=5), "AMD EPYC")
    with pytest.raises(SystemExit, match="did not run the same experiment"):
        machine_drift.main([str(a), str(other), "--out", str(tmp_path / "d")])
    with pytest.raises(SystemExit, match="--out is required"):
        machine_drift.main([str(a), str(b)])
    (tmp_path / "orders-report").mkdir()
    (tmp_path / "orders-report" / "sources.json").write_text(json.dumps({"runs": [], "reference": "sdlora"}))
    with pytest.raises(SystemExit, match="no sources.json written by python -m benchmarks.machine_drift"):
        machine_drift.main(["--again", str(tmp_path / "orders-report")])


def test_a_report_regenerates_from_its_sources_anywhere(tmp_path, monkeypatch):
    a, b = _two_machines(tmp_path / "runs")
    out = machine_drift.main([str(a), str(b), "--out", str(tmp_path / "drift")])
    before = {name: (out / name).read_text() for name in [*machine_drift.TABLES, machine_drift.SOURCES]}
    monkeypatch.chdir(tmp_path / "runs")
    machine_drift.main(["--again", str(out)])
    assert {name: (out / name).read_text() for name in [*machine_drift.TABLES, machine_drift.SOURCES]} == before
    assert machine_drift.is_report(out) and not machine_drift.is_report(tmp_path / "runs")


def test_again_with_run_folders_adds_them_and_records_a_command_that_rebuilds_it_from_nothing(tmp_path,
                                                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    a, b = (str(f.relative_to(tmp_path)) for f in _two_machines(tmp_path / "runs"))
    epyc = _on(fake_run(tmp_path / "runs" / "epyc", {("sdlora", 1993): [0.9, 0.61, 0.57]}), "AMD EPYC 7B13")
    c = str(epyc.relative_to(tmp_path))
    machine_drift.main([a, b, "--out", "drift"])
    grown = machine_drift.main(["--again", str(tmp_path / "drift"), c])  # recorded from here, not absolute
    command = json.loads((grown / machine_drift.SOURCES).read_text())["command"]
    assert command == f"python -m benchmarks.machine_drift {a} {b} {c} --out drift"
    once = machine_drift.main([a, b, c, "--out", "once"])
    for name in machine_drift.TABLES:
        assert (grown / name).read_text() == (once / name).read_text(), name
    assert "AMD EPYC" in (grown / "pairs.csv").read_text()
    with pytest.raises(SystemExit, match=f"error: {a} is already one of the folders drift reads"):
        machine_drift.main(["--again", "drift", a])
    with pytest.raises(SystemExit, match="--again rebuilds drift in place; drop --out"):
        machine_drift.main(["--again", "drift", c, "--out", "elsewhere"])


def test_every_committed_machine_drift_report_regenerates_from_its_runs():
    reports = sorted(p.parent for p in (ROOT / "results").rglob(machine_drift.SOURCES)
                     if machine_drift.is_report(p.parent))
    if not reports:
        pytest.skip("no machine-drift report committed yet (python -m benchmarks.machine_drift ... --out results/...)")
    for report in reports:
        runs, _ = machine_drift.sources_of(report)
        for name, text in machine_drift.build(runs, report).items():
            assert (report / name).read_text() == text, (report, name)


def test_the_paired_bound_where_both_runs_kept_predictions(tmp_path):
    """sdlora ends at 55 % on one machine and 58 % on the other over 100 images, the other right on 3 more images
    and wrong on none the first got right: d = 0.03, bound 2 sqrt((3/100 - 0.03^2) / 100) = 3.41 points."""
    a, b = _two_machines(tmp_path / "runs")
    y = np.arange(100) % 10
    for folder, right in ((a, 55), (b, 58)):
        pred = np.where(np.arange(100) < right, y, (y + 1) % 10)
        predictions.save(RunFolder(folder).predictions("sdlora", 1993), predictions.Predictions(2, y, pred))
    out = machine_drift.main([str(a), str(b), "--out", str(tmp_path / "drift")])
    pairs = pd.read_csv(out / "pairs.csv").set_index("method")
    assert pairs.loc["sdlora", "acc_diff_bound_pts"] == pytest.approx(200 * ((0.03 - 0.03 ** 2) / 100) ** 0.5)
    assert np.isnan(pairs.loc["seq-lora", "acc_diff_bound_pts"])  # no predictions kept: no bound, no ±
    assert "| +3.00 ± 3.41 |" in (out / "table.md").read_text()
    # another run's file (scoring 50 %, not the run's 58 %) is refused, naming it
    predictions.save(RunFolder(b).predictions("sdlora", 1993), predictions.Predictions(2, y, np.where(y < 5, y, 0)))
    with pytest.raises(SystemExit, match="does not hold the predictions of its run's last experience"):
        machine_drift.main([str(a), str(b), "--out", str(tmp_path / "drift")])
