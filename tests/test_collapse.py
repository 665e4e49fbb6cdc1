"""The long-sequence collapse report (issue 32): the verdict against the training-free baseline, the largest
one-task drop and the mechanism's state at the end, by hand on made-up rows."""

import numpy as np
import pandas as pd
import pytest

from benchmarks import collapse
from conftest import fake_run


def _with(folder, method, seed, **columns):
    """Add per-experience columns to a fake run's rows of (method, seed)."""
    for path in (folder / "parts" / f"{method}-seed{seed}.csv", folder / "per_task.csv"):
        rows = pd.read_csv(path)
        for name, values in columns.items():
            rows.loc[rows["method"] == method, name] = values
        rows.to_csv(path, index=False)


def test_verdict_drop_and_state_by_hand(tmp_path):
    folder = fake_run(tmp_path / "runs" / "long", {("sdlora", 1993): [0.9, 0.5, 0.3],
                                                   ("seq-lora", 1993): [0.9, 0.8, 0.6],
                                                   ("simplecil", 1993): [0.9, 0.6, 0.5]}, class_order_seed=1993)
    _with(folder, "sdlora", 1993, alphas=["1.0", "1.5 0.5", "3.0 0.5 0.25"], update_norm=[1.0, 2.0, 4.0],
          head_row_norm_past=[np.nan, 1.0, 1.0], head_row_norm_newest=[1.0, 2.0, 3.0])
    out = collapse.main([str(folder), "--out", str(tmp_path / "report")])
    table = pd.read_csv(out / "collapse.csv").set_index("method")
    sd = table.loc["sdlora"]
    assert sd["final_acc_pct"] == pytest.approx(30.0) and sd["minus_baseline_pts"] == pytest.approx(-20.0)
    assert bool(sd["collapses"]) is True
    assert sd["largest_drop_pts"] == pytest.approx(40.0) and sd["largest_drop_after_task"] == 1  # 90 -> 50
    assert (sd["alpha_min_final"], sd["alpha_max_final"]) == (0.25, 3.0)
    assert sd["update_norm_growth"] == pytest.approx(4.0) and sd["head_newest_to_past"] == pytest.approx(3.0)
    seq = table.loc["seq-lora"]
    assert bool(seq["collapses"]) is False and seq["minus_baseline_pts"] == pytest.approx(10.0)
    assert np.isnan(seq["alpha_min_final"])  # seq-lora's fake rows record no magnitudes
    curve = pd.read_csv(out / "curve.csv")
    assert curve.query("method == 'sdlora'")["acc_seen_pct"].tolist() == pytest.approx([90.0, 50.0, 30.0])
    text = (out / "table.md").read_text()
    assert "| sdlora | 3 | 30.00 | -20.00 | 1 of 1 | 40.00 | 0.25 / 3 | 4.00 | 3.00 | n/a |" in text
    assert (out / "curve.png").read_bytes()[:4] == b"\x89PNG" and (out / "curve.pdf").exists()


def test_without_the_baseline_there_is_no_verdict(tmp_path):
    folder = fake_run(tmp_path / "runs" / "long", {("sdlora", 1993): [0.9, 0.5]}, class_order_seed=1993)
    out = collapse.main([str(folder), "--out", str(tmp_path / "report")])
    assert "n/a (no baseline)" in (out / "table.md").read_text()


def test_the_probe_puts_simplecils_classifier_on_the_final_backbone(tmp_path):
    """feature_probe on a real tiny run: the model it reads is the one evaluated (its head recomputed gives the run's
    final accuracy), SimpleCIL's classifier on the pretrained backbone gives SimpleCIL's own run, and on SD-LoRA's
    final backbone the qkv weights it loads are W0 + the merged update (the swap took effect)."""
    import torch
    from conftest import TINY, _require_cifar

    from benchmarks import compare, feature_probe
    from benchmarks.findings.sources import build_strategy, load_model
    from benchmarks.run_folder import RunFolder

    _require_cifar()
    # under --class-order seed (the long runs'): each seed's own order, which the probe must rebuild
    run = compare.main(TINY + ["--methods", "sdlora", "seq-lora", "simplecil", "--class-order", "seed", "--seeds", "1994",
                               "--out", str(tmp_path), "--run-id", "p"])
    only = collapse.main([str(run), "--out", str(tmp_path / "only"), "--probe", "seq-lora"])  # one method's
    assert list(pd.read_csv(only / feature_probe.PROBE_FILE)["method"]) == ["seq-lora"]
    taken = collapse.main([str(run), "--take", str(run), "sdlora", "simplecil", "--out", str(tmp_path / "taken"),
                           "--probe"])  # a run the table does not hold is not probed
    assert list(pd.read_csv(taken / feature_probe.PROBE_FILE)["method"]) == ["sdlora"]
    with pytest.raises(SystemExit, match="--probe: unknown method"):
        collapse.main([str(run), "--out", str(tmp_path / "only"), "--probe", "sd-lora"])
    out = collapse.main([str(run), "--out", str(tmp_path / "report"), "--probe"])
    probed = pd.read_csv(out / feature_probe.PROBE_FILE).set_index("method")
    assert sorted(probed.index) == ["sdlora", "seq-lora"]  # SimpleCIL is no SDLoRAViT: skipped
    simplecil_final = 100 * pd.read_csv(run / "parts" / "simplecil-seed1994.csv")["acc_seen"].iloc[-1]
    for method, row in probed.iterrows():
        assert row["own_head_acc_pct"] == pytest.approx(row["run_acc_pct"], abs=1e-6), method
        assert row["frozen_prototype_acc_pct"] == pytest.approx(simplecil_final, abs=1e-6)
        assert row["newest_task_share_pct"] == pytest.approx(50.0) and row["test_images"] == 12
        assert row["class_order_seed"] == 1994
        assert 0 <= row["prototype_acc_pct"] <= 100 and 0 <= row["newest_task_predictions_pct"] <= 100
        # a right class is inside its task, and stays the argmax when the choice is restricted to that task
        assert row["head_task_pct"] >= row["own_head_acc_pct"] - 1e-9
        assert row["head_within_task_pct"] >= row["own_head_acc_pct"] - 1e-9
    folder = RunFolder(run)
    model = load_model(folder, "sdlora", 1994, 1)
    state = feature_probe.backbone_state(model)
    w0 = build_strategy(folder, "simplecil", seed=1994).model.backbone.state_dict()
    q = "blocks.0.attn.qkv.weight"
    delta = model.adapters[0].full_delta_weight().float()
    assert delta.abs().max() > 0 and torch.allclose(state[q], w0[q] + delta, atol=1e-6)
    assert "head.weight" not in state
    text = (out / "table.md").read_text()
    assert "Where the accuracy went" in text and "| sdlora |" in text.split("Where the accuracy went")[1]
    # a later call without --probe keeps the rows (the committed copies hold no checkpoints)
    again = collapse.main([str(run), "--out", str(tmp_path / "report")])
    assert "Where the accuracy went" in (again / "table.md").read_text()


def test_the_heads_two_jobs_by_hand():
    """task_scores: classes 0, 1 are task 0 and 2, 3 task 1; three images."""
    import torch

    from benchmarks.feature_probe import task_scores

    logits = torch.tensor([[5.0, 1.0, 0.0, 0.0],    # label 0: right task, right class
                           [0.0, 1.0, 3.0, 0.0],    # label 1: predicted 2 (wrong task); within task 0: 1, right
                           [0.0, 0.0, 2.0, 1.0]])   # label 3: right task, wrong class (2); within: 2, wrong
    task, within = task_scores(logits, torch.tensor([0, 1, 3]), torch.tensor([0, 0, 1, 1]))
    assert task == pytest.approx(200 / 3) and within == pytest.approx(200 / 3)


def test_the_probe_verdict_compares_the_two_backbones():
    from benchmarks.feature_probe import verdict

    row = pd.Series({"prototype_acc_pct": 60.0, "frozen_prototype_acc_pct": 55.0})
    assert verdict(row) == "the head"
    assert verdict(row.replace(60.0, 50.0)) == "the features"
    assert verdict(pd.Series({"prototype_acc_pct": np.nan, "frozen_prototype_acc_pct": 55.0})) == "n/a"


def test_an_unfinished_run_gets_no_verdict_and_is_named(tmp_path):
    """A run still going (or stopped) has no final accuracy: its last task's accuracy against the baseline's final
    one would be a verdict on a different number of tasks."""
    folder = fake_run(tmp_path / "runs" / "long", {("sdlora", 1993): [0.9, 0.5, 0.3],
                                                   ("seq-lora", 1993): [0.9, 0.8, 0.2],
                                                   ("simplecil", 1993): [0.9, 0.6, 0.5]}, class_order_seed=1993)
    for path in (folder / "parts" / "seq-lora-seed1993.csv", folder / "per_task.csv"):
        rows = pd.read_csv(path)
        rows.drop(rows.index[(rows["method"] == "seq-lora") & (rows["experience"] == 2)]).to_csv(path, index=False)
    out = collapse.main([str(folder), "--out", str(tmp_path / "report")])
    assert "seq-lora" not in set(pd.read_csv(out / "collapse.csv")["method"])
    assert "seq-lora" not in set(pd.read_csv(out / "curve.csv")["method"])
    assert "Unfinished runs left out: seq-lora order 1993 (2 of 3 tasks)." in (out / "table.md").read_text()


def _machine(folder, name):
    """Record ``name`` as the machine a fake run folder trained on (compare records ``device_name``)."""
    import json
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "device_name": name}))


def _two_machines(tmp_path):
    """Order 1993 on machine A (both methods), orders 1993 and 1994 on machine B (both methods)."""
    a = fake_run(tmp_path / "runs" / "a", {("sdlora", 1993): [0.9, 0.4], ("simplecil", 1993): [0.9, 0.5]},
                 class_order="seed")
    b = fake_run(tmp_path / "runs" / "b", {("sdlora", 1993): [0.9, 0.45], ("simplecil", 1993): [0.9, 0.5],
                                           ("sdlora", 1994): [0.9, 0.6], ("simplecil", 1994): [0.9, 0.5]},
                 class_order="seed")
    _machine(a, "Machine A")
    _machine(b, "Machine B")
    return a, b


def test_two_finished_runs_of_one_method_and_order_are_refused(tmp_path):
    """Pooling them would average two curves into one (they are grouped by method and order)."""
    a, b = _two_machines(tmp_path)
    with pytest.raises(SystemExit, match=r"sdlora has 2 runs on class order 1993 .*--take RUN_DIR ORDER"):
        collapse.main([str(a), str(b), "--out", str(tmp_path / "report")])


def test_take_reads_some_orders_of_a_folder_and_names_the_machines(tmp_path):
    a, b = _two_machines(tmp_path)
    out = collapse.main([str(a), str(b), "--take", str(b), "1994", "--out", str(tmp_path / "report")])
    table = pd.read_csv(out / "collapse.csv").set_index(["method", "class_order_seed"])
    assert table.loc[("sdlora", 1993), "final_acc_pct"] == pytest.approx(40.0)  # machine A's, not B's 45
    assert table.loc[("sdlora", 1994), "final_acc_pct"] == pytest.approx(60.0)
    assert table.loc[("sdlora", 1993), "machine"] == "Machine A"
    assert table.loc[("sdlora", 1994), "machine"] == "Machine B"
    text = (out / "table.md").read_text()
    assert "Machines: A = Machine A (order 1993); B = Machine B (order 1994)." in text
    assert "mixes machines" not in text  # each order's verdict is within one machine


def test_an_order_whose_runs_trained_on_two_machines_is_named(tmp_path):
    """Its verdict (a run minus the baseline's on that order) then carries the machines' own difference."""
    c = fake_run(tmp_path / "runs" / "c", {("sdlora", 1995): [0.9, 0.4]}, class_order="seed")
    d = fake_run(tmp_path / "runs" / "d", {("simplecil", 1995): [0.9, 0.5]}, class_order="seed")
    _machine(c, "Machine A")
    _machine(d, "Machine B")
    out = collapse.main([str(c), str(d), "--out", str(tmp_path / "report3")])
    assert ("Order 1995 mixes machines (sdlora on A; simplecil on B): its verdicts compare runs "
            "from different machines.") in (out / "table.md").read_text()


def test_take_names_what_it_cannot_take(tmp_path):
    a, b = _two_machines(tmp_path)
    with pytest.raises(SystemExit, match=r"has no rows on class order\(s\) 1995; it holds 1993, 1994"):
        collapse.main([str(a), str(b), "--take", str(b), "1995", "--out", str(tmp_path / "r")])
    with pytest.raises(SystemExit, match=r"--take elsewhere: not one of the run folders given"):
        collapse.main([str(a), "--take", "elsewhere", "1993", "--out", str(tmp_path / "r")])
    with pytest.raises(SystemExit, match=r"--take .*: name the methods or class orders to take"):
        collapse.main([str(a), "--take", str(a), "--out", str(tmp_path / "r")])
    with pytest.raises(SystemExit, match=r"--take .* first: neither a method nor a class order"):
        collapse.main([str(a), "--take", str(a), "first", "--out", str(tmp_path / "r")])
    with pytest.raises(SystemExit, match=r"has no rows of seq-lora; it holds sdlora, simplecil"):
        collapse.main([str(a), "--take", str(a), "seq-lora", "--out", str(tmp_path / "r")])
    with pytest.raises(SystemExit, match=r"is given twice; name everything to take from it in one --take"):
        collapse.main([str(a), "--take", str(a), "1993", "--take", str(a), "sdlora", "--out", str(tmp_path / "r")])


def test_take_reads_some_methods_of_some_orders(tmp_path):
    """Methods and orders together: B's SD-LoRA on order 1994 only, its baseline from A's folder on 1993."""
    a, b = _two_machines(tmp_path)
    out = collapse.main([str(a), str(b), "--take", str(b), "sdlora", "1994", "--out", str(tmp_path / "report")])
    table = pd.read_csv(out / "collapse.csv")
    assert sorted(zip(table["method"], table["class_order_seed"])) == [
        ("sdlora", 1993), ("sdlora", 1994), ("simplecil", 1993)]
    verdicts = table.set_index(["method", "class_order_seed"])["collapses"]
    assert verdicts[("sdlora", 1993)] == True and pd.isna(verdicts[("sdlora", 1994)])  # noqa: E712 (no baseline)


def test_an_unfinished_run_gives_way_to_a_finished_one_elsewhere(tmp_path):
    """A machine's run cut off, redone on another machine in a new folder: the finished one is the run."""
    a = fake_run(tmp_path / "runs" / "a", {("sdlora", 1993): [0.9, 0.4, 0.3], ("simplecil", 1993): [0.9, 0.6, 0.5]},
                 class_order="seed")
    b = fake_run(tmp_path / "runs" / "b", {("sdlora", 1993): [0.9, 0.45, 0.35]}, class_order="seed")
    for path in (a / "parts" / "sdlora-seed1993.csv", a / "per_task.csv"):
        rows = pd.read_csv(path)
        rows.drop(rows.index[(rows["method"] == "sdlora") & (rows["experience"] == 2)]).to_csv(path, index=False)
    out = collapse.main([str(a), str(b), "--out", str(tmp_path / "report")])
    table = pd.read_csv(out / "collapse.csv").set_index("method")
    assert table.loc["sdlora", "final_acc_pct"] == pytest.approx(35.0)
    assert "Unfinished runs left out, another folder finished the same method and order: sdlora order 1993 (a)." in (
        out / "table.md").read_text()
