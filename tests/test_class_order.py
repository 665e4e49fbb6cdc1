"""--class-order seed: seed s runs on class order s (the paper's code), recorded in config.json, the identity and
every row; old fixed-order folders, once converted by benchmarks.migrate, read as the same experiment; the
class-order report over tiny runs."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from benchmarks import compare, inputs, migrate, orders, runner, study
from benchmarks.config import ORDER_SEEDS, RunConfig
from benchmarks.protocols import PROTOCOL_FIELDS
from conftest import TINY, _require_cifar

METHODS = ["sdlora", "ncm"]
SEEDS = ["1993", "1994"]  # on TINY's 4 classes: experience 0 holds classes {3, 1} under 1993, {0, 1} under 1994


def _rows(path):
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    return df.drop(columns=[c for c in df.columns if c.endswith("_seconds")])


def as_old_code(run_dir):
    """The folder as compare wrote it before issue 22: no class_order_seed column, no class_order setting, and
    config.json in the pre-RunConfig format the lead's order folders have (protocol dict named cifar100-cpu)."""
    for csv in [run_dir / "per_task.csv", *(run_dir / "parts").glob("*.csv")]:
        df = pd.read_csv(csv, dtype=str, keep_default_na=False)
        csv.write_text(df.drop(columns="class_order_seed").to_csv(index=False))
    cfg = json.loads((run_dir / "config.json").read_text())
    identity = {"name": "cifar100-cpu", **{k: v for k, v in cfg["identity"].items()
                                          if k not in ("protocol", "class_order", "peer_recipe", "method_options")}}
    old = {"protocol": {"name": "cifar100-cpu", **{k: cfg[k] for k in PROTOCOL_FIELDS}},
           "methods": cfg["methods"], "seeds": cfg["seeds"], "checkpoint": cfg["checkpoint"], "data": cfg["data"],
           "test_per_class": cfg["test_per_class"], "classes": cfg["classes"], "rank": cfg["sdlora"]["rank"],
           "ewc_lambda": cfg["ewc_lambda"], "sdlora_options": {},
           "sdlora_effective": {k: v for k, v in cfg["sdlora"].items()
                                if k not in ("rank", "variant", "rank_schedule")},
           "device": cfg["device"], "device_name": cfg["device_name"], "workers": cfg["workers"],
           "threads": cfg["threads"], "torch": cfg["torch"], "identity": identity, "command": cfg["command"],
           "failed": {}}
    (run_dir / "config.json").write_text(json.dumps(old, indent=2) + "\n")
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A --class-order seed run (seeds 1993 1994); as the lead's old-code folders, one fixed-order run per order,
    converted by benchmarks.migrate; and the first of those as it was before the conversion."""
    _require_cifar()
    out = tmp_path_factory.mktemp("orders")
    seeded = compare.main(TINY + ["--methods", *METHODS, "--class-order", "seed", "--seeds", *SEEDS, "--out", str(out),
                                  "--run-id", "seeded"])
    old = [as_old_code(compare.main(TINY + ["--methods", *METHODS, "--class-order-seed", s, "--seeds", s,
                                            "--out", str(out), "--run-id", f"order{s}"])) for s in SEEDS]
    unconverted = shutil.copytree(old[0], out / "unconverted")
    assert migrate.main([str(out / "cifar100-tiny128")])  # the old folders (seeded is already today's format)
    return seeded, old, unconverted


def test_flags_seeds_default_to_the_papers_orders_and_a_fixed_order_seed_is_refused_beside_seed():
    assert compare.parse_args([]).seeds == [0] and compare.parse_args([]).config.class_order == "fixed"
    args = compare.parse_args(["--class-order", "seed"])
    assert args.seeds == list(ORDER_SEEDS) == [1993, 1994, 1995] and args.config.class_order_seed is None
    assert compare.parse_args(["--class-order", "seed", "--seeds", "7"]).seeds == [7]
    assert study.parse_args(["--class-order", "seed", "--epochs", "1"]).seeds == [1993, 1994, 1995]
    assert study.parse_args(["--epochs", "1"]).seeds == [0, 1]
    with pytest.raises(SystemExit, match="--class-order-seed has no effect with --class-order seed"):
        compare.parse_args(["--class-order", "seed", "--class-order-seed", "5"])
    with pytest.raises(SystemExit, match="invalid choice: 'per-seed'"):
        compare.parse_args(["--class-order", "per-seed"])
    cfg = RunConfig.for_protocol(class_order="seed")
    assert (cfg.order_seed(4), RunConfig().order_seed(4)) == (4, 1993)
    assert cfg.fixed_order(4) == RunConfig.for_protocol(class_order_seed=4)
    assert RunConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg


def test_each_seed_gets_its_own_order_benchmark_built_once_per_order():
    _require_cifar()
    cfg = inputs.resolved(RunConfig.for_protocol(class_order="seed", classes=4, n_experiences=2, train_per_class=2,
                                                 test_per_class=1, img_size=32, device="cpu"))

    def images(bench):
        return torch.stack([x for x, *_ in bench.train_stream[0].dataset.eval()])

    first = inputs.benchmark_for(cfg, 1993)
    assert inputs.benchmark_for(cfg, 1993) is first and first.sdlora_class_order_seed == 1993  # kept, not rebuilt
    fixed = inputs.make_benchmark(cfg.replace(class_order="fixed", class_order_seed=1993))
    assert torch.equal(images(first), images(fixed))  # seed 1993's benchmark is class order 1993's
    second = inputs.benchmark_for(cfg, 1994)
    assert second is not first and len(inputs._LAST_BENCHMARK) == 1  # one benchmark held at a time
    assert not torch.equal(images(first), images(second))
    with pytest.raises(ValueError, match="has class order 1994, but this run's is 1993"):
        runner.run("ncm", 1993, cfg, second, "unused")
    with pytest.raises(ValueError, match="pass the run's seed"):
        inputs.make_benchmark(cfg)


def test_rows_and_config_record_each_seeds_order_and_match_fixed_order_runs(runs):
    seeded, old, _ = runs
    per_task = pd.read_csv(seeded / "per_task.csv")
    assert list(per_task.columns[:4]) == ["method", "seed", "class_order_seed", "experience"]
    assert (per_task["class_order_seed"] == per_task["seed"]).all()
    assert sorted(per_task["seed"].unique()) == [1993, 1994]
    config = json.loads((seeded / "config.json").read_text())
    assert config["class_order"] == "seed" and config["class_order_seed"] is None
    assert config["identity"]["class_order"] == "seed"
    # seed s under --class-order seed is --class-order-seed s --seeds s, row for row (the old rows' order filled in
    # by the conversion)
    for s, folder in zip(SEEDS, old):
        for m in METHODS:
            pd.testing.assert_frame_equal(_rows(seeded / "parts" / f"{m}-seed{s}.csv"),
                                          _rows(folder / "parts" / f"{m}-seed{s}.csv"))
    a, b = (per_task[(per_task["method"] == "sdlora") & (per_task["seed"] == int(s))] for s in SEEDS)
    assert not np.allclose(a["acc_exp_0"], b["acc_exp_0"]) or not np.allclose(a["acc_seen"], b["acc_seen"])


def test_resume_refuses_another_class_order_by_flag(runs):
    seeded, old, _ = runs
    with pytest.raises(SystemExit, match='--class-order: the run\'s "seed", this call\'s "fixed"'):
        compare.main(TINY + ["--methods", "ncm", "--class-order", "fixed", "--seeds", "1993", "--resume", str(seeded)])
    # a folder from before the setting ran with fixed orders: --class-order seed is a change, named
    with pytest.raises(SystemExit, match='--class-order: the run\'s "fixed", this call\'s "seed"'):
        compare.main(TINY + ["--methods", "ncm", "--class-order", "seed", "--seeds", "1993", "--resume", str(old[0])])


def test_an_old_folder_is_refused_until_converted_then_resumes_as_todays(runs, tmp_path):
    unconverted = shutil.copytree(runs[2], tmp_path / "order1993")
    with pytest.raises(SystemExit, match=r"older version of the harness .*python -m benchmarks\.migrate"):
        compare.main(TINY + ["--methods", "ncm", "--class-order-seed", "1993", "--seeds", "5", "--resume",
                             str(unconverted)])
    assert "class_order_seed" not in pd.read_csv(unconverted / "parts" / "sdlora-seed1993.csv").columns
    changed = migrate.main([str(unconverted)])
    assert unconverted / "config.json" in changed and migrate.main([str(unconverted)]) == []  # once
    config = json.loads((unconverted / "config.json").read_text())
    assert config["protocol"] == config["identity"]["protocol"] == "cifar100-tiny128" and "sdlora_effective" not in config
    assert config["identity"]["class_order"] == "fixed" and config["calls"][0]["command"] == config["command"]
    # the old rows' order, written as integers, every other cell as it was
    part = pd.read_csv(unconverted / "parts" / "sdlora-seed1993.csv", dtype=str, keep_default_na=False)
    assert list(part.columns[:3]) == ["method", "seed", "class_order_seed"] and set(part["class_order_seed"]) == {"1993"}
    seeded_part = _rows(runs[0] / "parts" / "sdlora-seed1993.csv")  # written by today's code on order 1993
    pd.testing.assert_frame_equal(part.drop(columns=["train_seconds", "eval_seconds"]), seeded_part)
    compare.main(TINY + ["--methods", "ncm", "--class-order-seed", "1993", "--seeds", "5", "--resume",
                         str(unconverted)])
    per_task = pd.read_csv(unconverted / "per_task.csv", dtype=str, keep_default_na=False)
    assert set(per_task["class_order_seed"]) == {"1993"} and set(per_task["seed"]) == {"1993", "5"}
    assert pd.read_csv(unconverted / "parts" / "ncm-seed5.csv")["class_order_seed"].tolist() == [1993, 1993]


def test_parallel_workers_build_each_seeds_order(runs, tmp_path):
    seeded, _, _ = runs
    par = compare.main(TINY + ["--methods", "ncm", "--class-order", "seed", "--seeds", *SEEDS, "--jobs", "2",
                               "--out", str(tmp_path), "--run-id", "par"])
    for s in SEEDS:  # NCM's accuracies depend on the class order only
        pd.testing.assert_frame_equal(_rows(par / "parts" / f"ncm-seed{s}.csv"),
                                      _rows(seeded / "parts" / f"ncm-seed{s}.csv"))


def test_orders_report_over_a_seed_run_and_over_old_folders_gives_the_same_pairs(runs, tmp_path):
    seeded, old, _ = runs
    new = orders.main([str(seeded), "--out", str(tmp_path / "a")])
    by_old = orders.main([*map(str, old), "--out", str(tmp_path / "b")])
    pairs = pd.read_csv(new / "paired.csv")
    # by hand: SD-LoRA's last seen-class accuracy minus NCM's, per order, from the run's own rows
    last = pd.read_csv(seeded / "per_task.csv").query("experience == 1").set_index(["method", "seed"])["acc_seen"]
    for s in (1993, 1994):
        row = pairs[pairs["class_order_seed"] == s].iloc[0]
        assert row["method"] == "ncm"
        assert row["acc_diff_pts"] == pytest.approx(100 * (last["sdlora", s] - last["ncm", s]))  # points
    assert len(pairs) == 2
    for name in ("paired.csv", "paired_summary.csv"):
        assert (new / name).read_text() == (by_old / name).read_text()
    a, b = pd.read_csv(new / "orders.csv"), pd.read_csv(by_old / "orders.csv")
    timings = ["run", "train_seconds", "eval_seconds"]  # wall clock differs between two runs of the same thing
    pd.testing.assert_frame_equal(a.drop(columns=timings), b.drop(columns=timings))
    assert set(b["run"]) == {"order1993", "order1994"} and set(a["run"]) == {"seeded"}
    table = (by_old / "table.md").read_text()
    assert "Class orders 1993, 1994" in table and "| order1993, order1994 |" in table
    summary = pd.read_csv(by_old / "paired_summary.csv").iloc[0]
    d = pairs["acc_diff_pts"]
    assert summary["acc_diff_mean_pts"] == pytest.approx(d.mean()) and summary["acc_wins"] == int((d > 0).sum())
    twice = r"(ncm|sdlora) has 2 runs on class order 1993 \(seed 1993 in seeded, seed 1993 in order1993\)"
    with pytest.raises(SystemExit, match=twice):
        orders.main([str(seeded), str(old[0]), "--out", str(tmp_path / "c")])
