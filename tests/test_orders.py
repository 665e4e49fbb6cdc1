"""The class-order report: means over orders, SD-LoRA's paired difference per order checked by hand, the refusal
of folders that ran another experiment, and every committed report regenerating from its run folders."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks import orders
from benchmarks.run_set import RunSet
from benchmarks.units import in_percent, percent
from conftest import fake_run

ROOT = Path(__file__).resolve().parent.parent
# Made-up final accuracies on orders 1993, 1994, 1995 (the first experience at 0.9 everywhere):
# SD-LoRA minus seq-lora is +5, -8 and 0 points (mean -1, std sqrt(43) = 6.56; ahead on 1 of 3, 1 tied);
# on AAA = (0.9 + Acc) / 2 it is half of that: +2.5, -4, 0 (mean -0.5, std 3.28).
SDLORA = {1993: 0.60, 1994: 0.50, 1995: 0.55}
SEQ = {1993: 0.55, 1994: 0.58, 1995: 0.55}


def _old_order_folders(root, **settings):
    """One fixed-order folder per order."""
    return [fake_run(root / f"order{s}", {("sdlora", s): [0.9, SDLORA[s]], ("seq-lora", s): [0.9, SEQ[s]]},
                     class_order_seed=s, **settings) for s in SDLORA]


def test_paired_differences_and_wins_by_hand(tmp_path):
    folders = _old_order_folders(tmp_path / "runs")
    out = orders.main([*map(str, folders), "--out", str(tmp_path / "report")])
    pairs = pd.read_csv(out / "paired.csv", float_precision="round_trip")
    assert pairs["class_order_seed"].tolist() == [1993, 1994, 1995]
    # the CSVs in the table's units, named so (benchmarks.units): percent, and differences in points
    assert pairs["acc_diff_pts"].tolist() == pytest.approx([5.0, -8.0, 0.0])
    assert pairs["aaa_diff_pts"].tolist() == pytest.approx([2.5, -4.0, 0.0])
    assert pairs["acc_reference_pct"].tolist() == pytest.approx([60.0, 50.0, 55.0])
    s = pd.read_csv(out / "paired_summary.csv").iloc[0]
    assert (s["method"], s["reference"], s["n_orders"], s["acc_wins"], s["acc_ties"]) == ("seq-lora", "sdlora", 3, 1, 1)
    assert s["acc_diff_mean_pts"] == pytest.approx(-1.0) and s["acc_diff_std_pts"] == pytest.approx(43 ** 0.5)
    summary = pd.read_csv(out / "orders_summary.csv", float_precision="round_trip").set_index("method")
    assert summary.loc["sdlora", "acc_mean_pct"] == pytest.approx(55.0)
    assert summary.loc["sdlora", "acc_std_pct"] == pytest.approx(5.0)  # sample std of 60, 50, 55
    assert summary.loc["sdlora", "forgetting_mean_pct"] == pytest.approx(10.0)  # fake_run forgets 0.1 per task
    assert not {"acc_mean", "acc_diff", "acc", "aaa_mean"} & {*summary.columns, *pairs.columns}
    computed = orders.order_runs(RunSet.read(list(map(str, folders))))  # the fractions the computation used
    fractions = orders.summarize_orders(computed).set_index("method")
    for name in ("acc_mean", "acc_std", "aaa_mean", "aaa_std", "forgetting_mean", "forgetting_std"):
        np.testing.assert_array_equal(summary[f"{name}_pct"].to_numpy(), in_percent(fractions[name]).to_numpy())
    diffs = orders.paired(computed, "sdlora")["acc_diff"].to_numpy()
    np.testing.assert_array_equal(pairs["acc_diff_pts"].to_numpy(), np.array([percent(d) for d in diffs]))
    assert summary.loc["seq-lora", "orders"] == "1993 1994 1995"
    table = (out / "table.md").read_text()
    assert "| sdlora | 55.00 ± 5.00 | 72.50 ± 2.50 | 10.00 ± 0.00 | 60.00 | 50.00 | 55.00 | 3 | sgd 0.01 (protocol) | 1 | " \
           "0.00 | 0.0 | 0.0 " \
           "| order1993, order1994, order1995 |" in table
    # costs: fake_run's rows store 20 parameters and spend 1 s training + 0.5 s evaluating per experience (2 each)
    assert summary.loc["sdlora", ["stored_params", "inference_backbones", "train_seconds_mean", "eval_seconds_mean"]
                       ].tolist() == [20, 1, 2.0, 1.0]
    assert "| seq-lora | -1.00 ± 6.56 | +5.00 | -8.00 | +0.00 | 1 of 3 (1 tied) | -0.50 ± 3.28 | 1 of 3 (1 tied) |" \
           in table
    assert f"`order1993` = `{folders[0]}`" in table
    assert (out / "orders.png").read_bytes()[:4] == b"\x89PNG"
    orders_csv = pd.read_csv(out / "orders.csv")
    assert orders_csv[["method", "class_order_seed", "run"]].values.tolist()[:2] == [
        ["sdlora", 1993, "order1993"], ["sdlora", 1994, "order1994"]]


def test_a_report_regenerates_from_its_sources_anywhere(tmp_path, monkeypatch):
    folders = _old_order_folders(tmp_path / "runs")
    out = orders.main([*map(str, folders), "--out", str(tmp_path / "report"), "--reference", "seq-lora"])
    before = {name: (out / name).read_text() for name in [*orders.TABLES, "sources.json"]}
    assert json.loads(before["sources.json"])["command"].endswith("--reference seq-lora")
    monkeypatch.chdir(tmp_path / "runs")  # sources.json is relative to the report, not to where it ran
    orders.main(["--again", str(out)])
    # sources.json too: its command is still the one that chose the folders, not the --again that reread them
    assert {name: (out / name).read_text() for name in [*orders.TABLES, "sources.json"]} == before
    assert "seq-lora minus each method" in before["table.md"]
    extra = fake_run(tmp_path / "runs" / "more", {("ncm", 1993): [0.9, 0.4], ("sdlora", 1993): [0.9, 0.6]},
                     class_order_seed=1993)  # sdlora again on 1993
    with pytest.raises(SystemExit, match="sdlora has 2 runs on class order 1993"):
        orders.main([*map(str, folders), str(extra), "--out", str(tmp_path / "both")])
    picked = orders.main([*map(str, folders), str(extra), "--methods", "seq-lora", "ncm", "--reference", "seq-lora",
                          "--out", str(tmp_path / "picked")])
    runs = json.loads((picked / "sources.json").read_text())["runs"]
    assert runs[0] == ["../runs/order1993", ["seq-lora"]] and runs[3] == ["../runs/more", ["ncm"]]
    table = (picked / "table.md").read_text()
    assert "| ncm | +15.00 | +15.00 | – | – | 1 of 1 |" in table  # seq-lora's 55 minus ncm's 40 on order 1993
    orders.main(["--again", str(picked)])
    assert (picked / "table.md").read_text() == table


def test_again_with_run_folders_adds_them_and_records_a_command_that_rebuilds_it_from_nothing(tmp_path,
                                                                                              monkeypatch):
    """A report grows by a folder per session: ``--again REPORT_DIR RUN_DIR ...`` gives the same files as one first
    call with every folder, and its sources.json's command is that first call (so the documented command rebuilds
    it), keeping the recorded ``--take`` of the old folders and applying the new ``--take`` to the added ones."""
    monkeypatch.chdir(tmp_path)
    a, b, c = (str(f.relative_to(tmp_path)) for f in _old_order_folders(tmp_path / "runs"))
    extra = fake_run(tmp_path / "runs" / "more", {("ncm", 1993): [0.9, 0.4], ("sdlora", 1994): [0.9, 0.7]},
                     class_order_seed=1993)
    d = str(extra.relative_to(tmp_path))
    orders.main([a, b, "--take", b, "1994", "--out", "grown"])
    grown = orders.main(["--again", str(tmp_path / "grown"), c, d, "--take", d, "ncm"])  # recorded from here
    command = json.loads((grown / "sources.json").read_text())["command"]
    assert command == (f"python -m benchmarks.orders {a} {b} {c} {d} --take {b} 1994 --take {d} ncm --out grown")
    once = orders.main(command.split()[3:-2] + ["--out", "once"])
    for name in orders.TABLES:  # brief.md names its own folder's table.md
        assert (grown / name).read_text() == (once / name).read_text().replace("/once/", "/grown/"), name
    assert "| ncm |" in (grown / "table.md").read_text()
    with pytest.raises(SystemExit, match=f"error: {c} is already one of the folders grown reads"):
        orders.main(["--again", "grown", c])
    with pytest.raises(SystemExit, match="with --again grown alone nothing is added"):
        orders.main(["--again", "grown", "--take", d, "ncm"])
    for flags, named in ((["--out", "x"], "--out"), (["--methods", "ncm"], "--methods"),
                         (["--reference", "ncm"], "--reference")):
        with pytest.raises(SystemExit, match=f"--again rebuilds grown in place .*; drop {named}"):
            orders.main(["--again", "grown", *flags])


def test_folders_of_another_experiment_or_a_method_run_two_ways_are_refused(tmp_path):
    a, b, _ = _old_order_folders(tmp_path / "runs")
    c = fake_run(tmp_path / "runs" / "e5", {("sdlora", 1995): [0.9, 0.5]}, class_order_seed=1995, epochs=5)
    with pytest.raises(SystemExit, match=r"did not run the same experiment.*--epochs: 3 \(order1993, order1994\), "
                                         r"5 \(e5\)"):
        orders.build(RunSet.read([a, b, c]), tmp_path / "x")
    d = fake_run(tmp_path / "runs" / "lr", {("sdlora", 1995): [0.9, 0.5], ("ncm", 1995): [0.9, 0.4]},
                 class_order_seed=1995, lr=0.05)
    with pytest.raises(SystemExit, match=r"--lr differs for sdlora, whose rows are pooled: 0.01 \(order1993, "
                                         r"order1994\), 0.05 \(lr\)"):
        orders.build(RunSet.read([a, b, d]), tmp_path / "x")
    # another lr for a method whose rows come from one folder only is that method's setting: said, not refused
    texts, _, _ = orders.build(RunSet.read([a, b, (d, ["ncm"])]), tmp_path / "x")
    assert "Settings that differ between the runs:\n\n- --lr, by method: ncm: 0.05; sdlora, seq-lora: 0.01." \
        in texts["table.md"]
    with pytest.raises(SystemExit, match="--reference ranpac has no rows"):
        orders.main([str(a), "--reference", "ranpac", "--out", str(tmp_path / "y")])
    with pytest.raises(SystemExit, match="is not a run folder"):
        orders.main([str(tmp_path), "--out", str(tmp_path / "y")])


def test_every_committed_class_order_report_regenerates_from_its_runs():
    reports = sorted(p.parent for p in (ROOT / "results").rglob(orders.SOURCES) if orders.is_report(p.parent))
    if not reports:
        pytest.skip("no class-order report committed yet (python -m benchmarks.orders ... --out results/...)")
    assert ROOT / "results" / "cifar100-tiny128" / "class-orders" in reports  # the filter keeps the README's
    for report in reports:
        runs, reference = orders.sources_of(report)
        texts, _, _ = orders.build(runs, report, reference)
        for name, text in texts.items():
            assert (report / name).read_text() == text, (report, name)


def test_a_sources_json_of_another_command_is_not_a_class_order_report(tmp_path):
    """The findings write a sources.json too: --again on their folder names the problem instead of a KeyError."""
    (tmp_path / orders.SOURCES).write_text(json.dumps({"command": "python -m benchmarks.findings", "settings": {}}))
    assert not orders.is_report(tmp_path)
    with pytest.raises(SystemExit, match="not a class-order report; pass the --out folder of a benchmarks.orders call"):
        orders.sources_of(tmp_path)


def test_inference_cost_follows_the_registry_at_the_runs_last_task(tmp_path):
    """Backbones' worth per image comes from the method's registered traits at the number of tasks the run learned
    (MOS's passes grow with the tasks; CL-LoRA's later blocks run once per task), not from a constant."""
    from benchmarks.methods import get_method

    folder = fake_run(tmp_path / "runs" / "o", {("sdlora", 1993): [0.9, 0.6, 0.5], ("l2p", 1993): [0.9, 0.5, 0.4],
                                                ("mos", 1993): [0.9, 0.6, 0.5], ("cl-lora", 1993): [0.9, 0.6, 0.5]},
                      class_order_seed=1993)
    summary = pd.read_csv(orders.main([str(folder), "--out", str(tmp_path / "r")]) / "orders_summary.csv")
    worth = dict(zip(summary["method"], summary["inference_backbones"]))
    assert worth == {"sdlora": 1, "l2p": 2, "mos": get_method("mos").forward_passes(3), "cl-lora": 2.0}
    assert worth["mos"] == 3  # one pass per task learned (self-refined retrieval)


def test_each_row_names_the_recipe_it_trained_with():
    """Recorded recipes are shown as recorded (a tuned one says so); a folder from before they were recorded gets
    what its settings give the method's recipe trait; a training-free method says it."""
    from benchmarks.config import RunConfig

    config = RunConfig.for_protocol().to_json()
    tuned = {**config, "recipes": {"sdlora": {"optimizer": "sgd", "lr": 0.008, "source": "tuned"}}}
    assert orders.recipe_label(tuned, "sdlora") == "sgd 0.008 (tuned)"
    assert orders.recipe_label(config, "sdlora") == "sgd 0.01 (protocol)"  # the protocol's shared lr
    assert orders.recipe_label(config, "dualprompt") == "adam 0.001 (reference)"
    assert orders.recipe_label(config, "ncm") == "no training"


def test_dualprompts_own_prompt_share_after_the_last_task_is_reported(tmp_path):
    """The share of test images given their own task's E-prompt, from the last experience's row of each order, in
    orders.csv (percent), its mean in orders_summary.csv and a line under the table; methods without it get none."""
    folder = fake_run(tmp_path / "runs" / "o", {("sdlora", 1993): [0.9, 0.6], ("dualprompt", 1993): [0.9, 0.4]},
                      class_order_seed=1993)
    for path in (folder / "parts" / "dualprompt-seed1993.csv", folder / "per_task.csv"):
        rows = pd.read_csv(path)
        rows.loc[rows["method"] == "dualprompt", "own_prompt_fraction"] = [1.0, 0.25]  # after experience 0, 1
        rows.to_csv(path, index=False)
    out = orders.main([str(folder), "--out", str(tmp_path / "r")])
    by_method = pd.read_csv(out / "orders.csv").set_index("method")["own_prompt_pct"]
    assert by_method["dualprompt"] == 25.0 and np.isnan(by_method["sdlora"])
    assert pd.read_csv(out / "orders_summary.csv").set_index("method").loc["dualprompt", "own_prompt_mean_pct"] == 25.0
    table = (out / "table.md").read_text()
    assert "dualprompt: key matching gave 25.0 % of the test images" in table and "sdlora: key matching" not in table


def test_runs_from_several_machines_get_wall_time_per_machine_and_a_mixed_order_is_named(tmp_path):
    """Wall time compares within a machine only: a method run on two machines gets a mean per machine, the footnote
    names which machine ran which order, and an order whose runs trained on two machines is called out."""
    folders = _old_order_folders(tmp_path / "runs")
    mixed = fake_run(tmp_path / "runs" / "gpu1995", {("sdlora", 1995): [0.9, 0.57]}, class_order_seed=1995)
    for folder, machine in [*((f, "CPU X") for f in folders), (mixed, "GPU Y")]:
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "device_name": machine}))
    mixed_part = mixed / "parts" / "sdlora-seed1995.csv"
    part = pd.read_csv(mixed_part)
    part["train_seconds"] = 7.0  # 14 s a run there against 2 s on the CPU folders
    part.to_csv(mixed_part, index=False)
    (folders[2] / "parts" / "sdlora-seed1995.csv").unlink()  # sdlora's order 1995 comes from the GPU folder only
    out = orders.main([*map(str, folders[:2]), str(folders[2]), str(mixed), "--out", str(tmp_path / "report")])
    table = (out / "table.md").read_text()
    assert "| sdlora | 55.67 ± 5.13 |" in table  # 60, 50, 57
    assert "| 0.0 (A) / 0.2 (B) | 0.0 (A) / 0.0 (B) | order1993, order1994, gpu1995 |" in table  # 2 s, 14 s a run
    assert "Machines: A = CPU X (orders 1993, 1994, 1995); B = GPU Y (order 1995)." in table
    assert "Order 1995 mixes machines (sdlora on B; seq-lora on A)" in table
    summary = pd.read_csv(out / "orders_summary.csv").set_index("method")
    assert np.isnan(summary.loc["sdlora", "train_seconds_mean"])  # no mean across machines
    assert summary.loc["sdlora", "seconds_by_machine"] == "CPU X: train 2, eval 1; GPU Y: train 14, eval 1"
    assert summary.loc["seq-lora", "train_seconds_mean"] == 2.0  # one machine: the plain mean
    assert pd.read_csv(out / "orders.csv")["machine"].tolist().count("GPU Y") == 1


def test_an_unfinished_run_is_superseded_by_the_same_method_and_order_finished_elsewhere(tmp_path):
    """A machine whose time ran out leaves unfinished runs that another folder redoes: the finished one is taken and
    the footnote names the one left out; two finished runs of one (method, order) are still refused."""
    folders = _old_order_folders(tmp_path / "runs")
    stopped = fake_run(tmp_path / "runs" / "stopped", {("sdlora", 1995): [0.9, 0.2]}, class_order_seed=1995)
    part = stopped / "parts" / "sdlora-seed1995.csv"
    pd.read_csv(part).iloc[:1].to_csv(part, index=False)  # stopped after its first experience
    out = orders.main([*map(str, folders), str(stopped), "--out", str(tmp_path / "report")])
    table = (out / "table.md").read_text()
    assert "| sdlora | 55.00 ± 5.00 |" in table and "unfinished" not in table.split("\n\n")[1]
    assert "Unfinished runs left out, another folder finished the same method and order: sdlora order 1995 " \
           "(stopped)." in table
    assert "stopped" not in pd.read_csv(out / "orders.csv")["run"].tolist()
    twice = fake_run(tmp_path / "runs" / "twice", {("sdlora", 1995): [0.9, 0.2]}, class_order_seed=1995)
    with pytest.raises(SystemExit, match="sdlora has 2 runs on class order 1995"):
        orders.main([*map(str, folders), str(twice), "--out", str(tmp_path / "other")])


def test_take_reads_some_orders_of_a_folder_and_the_report_regenerates_with_them(tmp_path):
    """A folder holding an order another folder also ran (another machine's, say) is taken for its other orders."""
    folders = _old_order_folders(tmp_path / "runs")
    extra = fake_run(tmp_path / "runs" / "more", {("sdlora", 1993): [0.9, 0.7], ("seq-lora", 1993): [0.9, 0.5],
                                                  ("sdlora", 1996): [0.9, 0.65], ("seq-lora", 1996): [0.9, 0.6]},
                     class_order="seed")
    with pytest.raises(SystemExit, match="sdlora has 2 runs on class order 1993"):
        orders.main([*map(str, folders), str(extra), "--out", str(tmp_path / "both")])
    out = orders.main([*map(str, folders), str(extra), "--take", str(extra), "1996", "--out", str(tmp_path / "r")])
    got = pd.read_csv(out / "orders.csv")
    assert sorted(got["class_order_seed"].unique()) == [1993, 1994, 1995, 1996]
    assert got.query("method == 'sdlora' and class_order_seed == 1993")["run"].tolist() == ["order1993"]
    assert json.loads((out / "sources.json").read_text())["runs"][3] == ["../runs/more", None, [1996]]
    table = (out / "table.md").read_text()
    orders.main(["--again", str(out)])
    assert (out / "table.md").read_text() == table
    picked = orders.main([*map(str, folders), str(extra), "--take", str(extra), "1996", "--methods", "sdlora",
                          "--out", str(tmp_path / "picked")])
    assert json.loads((picked / "sources.json").read_text())["runs"][3] == ["../runs/more", ["sdlora"], [1996]]


def _triples(options: dict) -> tuple:
    return tuple((m, k, v) for m, kv in options.items() for k, v in kv.items())


def test_method_options_are_noted_once_per_method_not_once_per_folder(tmp_path):
    """Folders holding different methods differ in --method-option by construction: the note lists each method's
    options once (grouped where equal), and folders that agree method by method get no note."""
    options = {"sdlora": {"lr": 0.008, "optimizer": "sgd"}, "seq-lora": {"lr": 0.008, "optimizer": "sgd"},
               "l2p": {"lr": 0.1 + 2e-17, "optimizer": "sgd", "schedule": "cosine"}}
    a, b = (fake_run(tmp_path / f"lora{s}", {("sdlora", s): [0.9, SDLORA[s]], ("seq-lora", s): [0.9, SEQ[s]]},
                     class_order_seed=s, method_options=_triples(options)) for s in (1993, 1994))
    texts, _, _ = orders.build(RunSet.read([a, b]), tmp_path / "x")
    assert "Settings that differ" not in texts["table.md"]  # same options for every method held
    c = fake_run(tmp_path / "prompts", {("l2p", 1993): [0.9, 0.3]},
                 class_order_seed=1993, method_options=_triples({"l2p": options["l2p"]}))
    table = orders.build(RunSet.read([a, b, c]), tmp_path / "x")[0]["table.md"]
    assert ('- --method-option, by method: l2p: lr=0.1, optimizer="sgd", schedule="cosine"; '
            'sdlora, seq-lora: lr=0.008, optimizer="sgd".') in table
    assert table.count("lr=0.008") == 1 and "lora1993" not in table.split("Settings that differ")[1]
