"""``python -m benchmarks.findings`` on the tiny slice: each finding's computation against an independent one.

The comparison is the session's ``tiny_run`` (every registered method through compare, checkpoints included), read
with ``--runs``; the command itself trains SD-LoRA under the paper's recipe and one LoRA per task.
"""

import shutil

import pandas as pd
import pytest
import torch

from avalanche_sdlora.plugins.distillation import direction_residuals
from benchmarks.findings import command, report
from benchmarks.findings.interpolation import path_model
from benchmarks.findings.low_loss import distance_rows
from benchmarks.findings.sources import build_strategy, load_model, single_task_folder, task_seed
from benchmarks.local_paths import portable_path
from benchmarks.run_folder import RunFolder
from benchmarks.units import percent
from conftest import TINY

POINTS = 3


@pytest.fixture(scope="module")
def findings(tiny_run, tmp_path_factory):
    run_dir, _ = tiny_run
    out = tmp_path_factory.mktemp("findings")
    command.main(TINY + ["--runs", str(run_dir), "--out", str(out), "--points", str(POINTS)])
    return out, RunFolder(run_dir)


def test_distances_are_the_dense_updates_distances_computed_by_hand(findings):
    out, _ = findings
    rows = pd.read_csv(out / "f1a_distances.csv")
    cfg = command.parse_args(TINY).config
    # by hand: each task's update B A per q/v slice of every block, from its checkpoint's raw factors, in float64
    updates = []
    for t in range(cfg.n_experiences):
        folder = single_task_folder(out, cfg, t, "same")
        model = load_model(folder, "seq-lora", task_seed(0, t, "same"), 0)
        assert model.num_directions == 0 and model.magnitudes.alpha.tolist() == [1.0]  # one live pair, alpha 1
        updates.append([(a.lora_B.double() @ a.lora_A.double()) for a in model.adapters])
    by_hand = {(0, "W0"): sum(float((u ** 2).sum()) for u in updates[0]) ** 0.5,
               (1, "W0"): sum(float((u ** 2).sum()) for u in updates[1]) ** 0.5,
               (0, "1"): sum(float(((u - v) ** 2).sum()) for u, v in zip(*updates)) ** 0.5}
    got = {(int(r.a), str(r.b)): r.distance for r in rows.itertuples()}
    assert got.keys() == by_hand.keys()
    for key, d in by_hand.items():
        assert got[key] == pytest.approx(d, rel=1e-5)
    assert set(rows["task_init"]) == {"same"} and set(rows["seed"]) == {0}


def test_distance_rows_known_answers():
    v = torch.tensor([3.0, 0.0])
    rows = distance_rows({0: v, 1: v.clone(), 2: torch.tensor([0.0, 4.0])})
    got = {(r["a"], r["b"]): r["distance"] for r in rows}
    assert got == {(0, "W0"): 3.0, (1, "W0"): 3.0, (2, "W0"): 4.0, (0, 1): 0.0, (0, 2): 5.0, (1, 2): 5.0}


def test_interpolation_ends_are_the_recorded_models_to_the_image(findings):
    out, run = findings
    path = pd.read_csv(out / "f3_interpolation.csv")
    assert sorted(set(path["lam"])) == [0.0, 0.5, 1.0]
    rows = run.gather()
    for method in ("sdlora", "seq-lora"):
        p = path[path["method"] == method].set_index(["lam", "test_experience", "head"])
        r = rows[(rows["method"] == method) & (rows["seed"] == 0)].set_index("experience")
        ends = ((0.0, 0, "own", r.loc[0, "acc_exp_0"]), (1.0, 0, "seen", r.loc[1, "acc_exp_0"]),
                (1.0, 1, "seen", r.loc[1, "acc_exp_1"]))
        for lam, exp, head, recorded in ends:
            got = p.loc[(lam, exp, head)]
            assert got["n_correct"] == round(recorded * got["n_images"]), (method, lam, exp, head)
            assert got["accuracy_pct"] == pytest.approx(100 * recorded, abs=1e-10)  # percent (benchmarks.units)


def test_the_path_between_one_model_and_itself_is_that_model(findings, images):
    _, run = findings
    theta = load_model(run, "sdlora", 0, 1)
    fresh = build_strategy(run, "sdlora").model
    with torch.no_grad():
        want = theta(images)
        for lam in (0.0, 0.3, 1.0):
            torch.testing.assert_close(path_model(fresh, theta, theta, lam)(images), want, rtol=1e-4, atol=1e-4)
        # the ends are the two models bit for bit, in float32 and under the evaluation's bfloat16 autocast
        theta1 = load_model(run, "sdlora", 0, 0)
        for amp in (False, True):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                assert torch.equal(path_model(fresh, theta1, theta, 1.0)(images), theta(images))
                start, own = path_model(fresh, theta1, theta, 0.0)(images), theta1(images)
                assert torch.equal(start[:, :own.shape[1]], own)  # task 1's logits; task 2's rows are theta2's
        # the midpoint of two models: its adapted weights are W0 plus the mean update; k is untouched
        mid = path_model(fresh, theta1, theta, 0.5)
        for a, a0, a1, a2 in zip(mid.adapters, fresh.adapters, theta1.adapters, theta.adapters):
            dq, dk, dv = (a.base_layer.weight - a0.base_layer.weight).chunk(3)
            want_q, want_v = (0.5 * (a1.delta_weight() + a2.delta_weight())).unbind(0)
            torch.testing.assert_close(dq, want_q, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(dv, want_v, rtol=1e-4, atol=1e-6)
            assert not dk.any()


def test_residuals_are_the_kd_plugins_fit_and_alphas_are_the_recorded_ones(findings):
    from benchmarks.findings.directions import residual_rows

    out, run = findings
    # SD-LoRA-KD records its own fit at each decision: the residual computed from its checkpoint is the same number
    kd = run.gather()
    kd = kd[(kd["method"] == "sdlora-kd") & (kd["experience"] == 1)].iloc[0]
    assert not kd["kd_absorbed"]
    newest = [r for r in residual_rows(run, "sdlora-kd", 0) if r["newest"]]
    assert [r["experience"] for r in newest] == [1]
    assert newest[0]["relative_residual"] == pytest.approx(kd["kd_relative_residual"], rel=1e-12)
    res = pd.read_csv(out / "f2_residuals.csv")
    authors = res[(res["recipe"] == "authors") & res["newest"]]
    model = load_model(run, "sdlora", 0, 1)
    assert authors["relative_residual"].tolist() == pytest.approx(direction_residuals(model), rel=1e-12)
    alphas = pd.read_csv(out / "f2_alphas.csv")
    last = alphas[(alphas["recipe"] == "authors") & (alphas["experience"] == 1)].sort_values("task")["alpha"]
    assert last.tolist() == pytest.approx(model.magnitudes.alpha.tolist(), abs=5e-5)  # per_task.csv keeps 4 decimals
    paper = alphas[alphas["recipe"] == "paper"]
    assert paper[paper["experience"] == 0]["alpha"].iloc[0] == pytest.approx(1.0, abs=0.2)  # initialised to 1


def test_readme_is_computed_from_the_csvs(findings, tmp_path):
    out, _ = findings
    copy = tmp_path / "f"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("runs"))
    command.main(["--report-only", "--out", str(copy)])
    assert (copy / "README.md").read_text() == (out / "README.md").read_text()
    verdicts = pd.read_csv(copy / "verdicts.csv")
    assert set(verdicts["finding"]) == set(report.CLAIMS)
    text = (copy / "README.md").read_text()
    for claim in report.CLAIMS.values():
        assert claim in text
    # change the measurement: the text and the verdict follow it
    rows = pd.read_csv(copy / "f1a_distances.csv")
    between = rows["kind"] == "between_tasks"
    for scale, verdict in ((1e-6, "holds"), (1e6, "does not hold")):
        changed = rows.copy()
        changed.loc[between, "distance"] = rows.loc[between, "distance"] * scale
        summary = report.summarize_distances(changed).iloc[0]
        assert report.verdict_f1a(summary)[1] == verdict
    changed.to_csv(copy / "f1a_distances.csv", index=False)
    command.main(["--report-only", "--out", str(copy)])
    got = pd.read_csv(copy / "verdicts.csv").set_index("finding").loc["f1a"]
    assert got["verdict"] == "does not hold"
    assert f"{changed.loc[between, 'distance'].mean():.4g}" in got["measured"] in (copy / "README.md").read_text()
    for png in ("f1a_distances.png", "f1b_accuracy.png", "f2_directions_magnitudes.png", "f3_interpolation.png"):
        assert (copy / png).stat().st_size > 0


def test_a_given_run_with_other_settings_is_refused_by_flag(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    with pytest.raises(SystemExit, match=r"--runs '.*' ran with other settings than this call: --epochs: the run's 1, "
                                         r"this call's 2"):
        command.main([*TINY, "--epochs", "2", "--runs", str(run_dir), "--out", str(tmp_path), "--only", "f3"])


def test_a_second_call_trains_nothing_and_writes_the_same_numbers(findings):
    out, run = findings
    before = {f: pd.read_csv(out / f) for f in ("f1a_distances.csv", "f2_residuals.csv", "f2_alphas.csv")}
    parts = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/parts/*.csv")}
    assert len(parts) == 3  # the paper-recipe run and the two single-task LoRAs
    command.main(TINY + ["--runs", str(run.path), "--out", str(out), "--only", "f1a", "f2"])
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/parts/*.csv")} == parts  # nothing retrained
    for f, df in before.items():
        pd.testing.assert_frame_equal(pd.read_csv(out / f), df)


def test_runs_may_be_split_over_folders_each_method_from_the_first_that_holds_it(findings, tiny_run, tmp_path):
    # e.g. SD-LoRA and seq-lora from the headline's run, the fixed direction from the Table 4 run
    import json

    out, _ = findings
    run_dir, _ = tiny_run
    a, b = tmp_path / "cifar100-tiny128" / "a", tmp_path / "cifar100-tiny128" / "b"
    shutil.copytree(run_dir, a, ignore=shutil.ignore_patterns("checkpoints"))
    shutil.copytree(run_dir, b, ignore=shutil.ignore_patterns("checkpoints"))
    (a / "parts" / "sdlora-fixed-direction-seed0.csv").unlink()
    with pytest.raises(SystemExit, match=r"--runs '.*a' has no finished run of sdlora-fixed-direction; add it with "):
        command.main(TINY + ["--runs", str(a), "--out", str(tmp_path / "refused"), "--only", "f1b"])
    assert not (tmp_path / "refused").exists()  # a refused call leaves no empty findings folder behind
    copy = tmp_path / "f"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("runs"))
    command.main(TINY + ["--runs", str(a), str(b), "--out", str(copy), "--only", "f1b"])
    pd.testing.assert_frame_equal(pd.read_csv(copy / "f1b_runs.csv"), pd.read_csv(out / "f1b_runs.csv"),
                                  check_like=True)
    sources = json.loads((copy / "sources.json").read_text())
    f1b = sources["comparison (f1b)"]
    # each method's folder, as a committed sources.json may name it (no absolute path: benchmarks.local_paths)
    a_, b_ = portable_path(str(a), copy), portable_path(str(b), copy)
    assert a_ != b_ and f1b["folder_of"] == {"sdlora": a_, "seq-lora": a_, "sdlora-fixed-direction": b_}
    # the earlier call's record of the comparison Findings 2 and 3 read is kept beside it
    assert sources["comparison (f1b, f2, f3)"]["findings"] == ["f1b", "f2", "f3"]
    # the same call again is one call in the history, at its latest place
    command.main(TINY + ["--runs", str(a), str(b), "--out", str(copy), "--only", "f1b"])
    calls = [c["command"] for c in json.loads((copy / "sources.json").read_text())["calls"]]
    assert len(calls) == len(set(calls)) and "--only f1b" in calls[-1]
    readme = (copy / "README.md").read_text()
    assert f"sdlora-fixed-direction `{b_}`" in readme
    # both calls are named, oldest first
    assert sources["calls"][-1]["only"] == ["f1b"] and "--only f1b" in sources["calls"][-1]["command"]
    assert "Commands, oldest first" in readme and readme.index(sources["calls"][0]["command"]) < readme.index(
        sources["calls"][-1]["command"])


def test_mean_cosine_of_task_updates_is_recovered_from_the_distances():
    # cosines 0.6 (u0, u1), 1 (u0, u2), 0.6 (u1, u2): mean 11/15
    updates = {0: torch.tensor([1.0, 0.0]), 1: torch.tensor([0.6, 0.8]), 2: torch.tensor([1.0, 0.0])}
    rows = pd.DataFrame([{"task_init": "same", "seed": 0, **r} for r in distance_rows(updates)])
    s = report.summarize_distances(rows).iloc[0]
    assert s["mean_cosine"] == pytest.approx(11 / 15)
    assert s["share_pairs_closer"] == 1.0  # |u0-u1| = |u1-u2| = 0.894 < 1 and u0 = u2
    assert "mean cosine between two tasks' updates 0.733" in report.verdict_f1a(s)[0]


def test_the_committed_findings_regenerate_from_their_csvs(tmp_path):
    """``--report-only`` on the committed findings folder writes back its summaries, verdicts and README byte for
    byte (its CSVs in percent, benchmarks.units: what the committed text was computed from)."""
    from pathlib import Path

    committed = Path(__file__).resolve().parent.parent / "results" / "findings"
    copy = tmp_path / "f"
    shutil.copytree(committed, copy)
    report.write(copy)
    for path in sorted(committed.iterdir()):
        if path.suffix in (".csv", ".md"):
            assert (copy / path.name).read_text() == path.read_text(), path.name
    header = (committed / "f3_summary.csv").read_text().splitlines()[0].split(",")
    assert "task1_largest_drop_pts" in header and "task1_acc_start_pct" in header


def test_findings_measured_in_fractions_are_migrated_to_percent_and_their_report_rebuilt(tmp_path):
    """A findings folder written before units (f1b_runs.csv with fractions under bare names): the migration writes
    them in percent, then rebuilds the summary and README from them (means of 100 x the fractions)."""
    from benchmarks import migrate

    runs = pd.DataFrame([{"method": m, "seed": s, "acc": a, "aaa": a + 0.1, "forgetting": 0.2, "bwt": -0.2,
                          "stored_params": 10, "train_seconds": 1.0}
                         for m, accs in (("sdlora-fixed-direction", (0.52, 0.54)), ("seq-lora", (0.5, 0.51)),
                                         ("sdlora", (0.55, 0.56))) for s, a in enumerate(accs)])
    runs.to_csv(tmp_path / "f1b_runs.csv", index=False)
    changed = migrate.migrate(tmp_path)
    assert tmp_path / "f1b_runs.csv" in changed and tmp_path / "README.md" in changed
    written = pd.read_csv(tmp_path / "f1b_runs.csv", float_precision="round_trip")
    assert written["acc_pct"].tolist() == [percent(a) for a in runs["acc"]] and "acc" not in written
    summary = pd.read_csv(tmp_path / "f1b_summary.csv").set_index("method")
    assert summary.loc["sdlora", "acc_mean_pct"] == pytest.approx(55.5)
    text = (tmp_path / "README.md").read_text()
    assert "sdlora Acc 55.50 ± 0.71" in text  # 100 x the mean of 0.55 and 0.56, its sample std 100 x 0.00707
    assert "fixed-direction is +2.50 points from seq-lora and -2.50 from SD-LoRA" in text
    assert migrate.migrate(tmp_path) == []  # once
