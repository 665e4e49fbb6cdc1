"""benchmarks.migrate: a folder of an older format becomes today's once, with what it recorded and nothing made up."""

import json

import pytest
import pandas as pd

from benchmarks import folder_checks, migrate
from benchmarks.config import RunConfig
from benchmarks.identity import identity_changes, labels, saved_identity
from benchmarks.units import in_file_units

# What compare wrote before RunConfig and identities existed (results/cifar100-tiny128/cpu-3seeds, before the
# conversion): protocol fields in a dict under the protocol's former name, SD-LoRA's options flat.
PRE_RUNCONFIG = {
    "protocol": {"name": "cifar100-cpu", "model": "vit_tiny_patch16_224", "img_size": 128, "train_per_class": 100,
                 "epochs": 3, "batch_size": 32, "lr": 0.01, "n_experiences": 10, "class_order_seed": 1993,
                 "eval_batch_size": 256, "eval_amp": True},
    "methods": ["joint", "l2p"], "seeds": [2], "checkpoint": {"name": "vit_tiny_patch16_224.safetensors"},
    "test_per_class": None, "classes": None, "rank": 10, "ewc_lambda": 100.0, "sdlora_options": {},
    "sdlora_effective": {"reset_alphas": True, "alpha_init": 0.8, "alpha_lr": None, "normalize_current": False,
                         "direction_norm": "factors", "head_init": "linear", "kd_threshold": 0.0009},
    "device": "cpu", "threads": 1, "torch": "2.14.1+cu130", "command": "python -m benchmarks.compare --quiet",
    "started_utc": "2026-11-25T20:09:30+00:00", "wall_seconds": 2839.8, "failed": {}, "provenance": "kept as is",
}


def test_a_pre_runconfig_config_becomes_todays_with_what_it_recorded(tmp_path):
    with pytest.raises(folder_checks.DamagedRunFile, match="python -m benchmarks.migrate"):
        (tmp_path / "config.json").write_text(json.dumps(PRE_RUNCONFIG))
        folder_checks.read_config(tmp_path / "config.json")
    new = migrate.migrate_config(PRE_RUNCONFIG)
    assert migrate.is_current(new) and migrate.migrate_config(new) == new  # once
    cfg = RunConfig.from_json(new)
    assert (cfg.protocol, cfg.epochs, cfg.lr, cfg.eval_amp, cfg.sdlora.rank) == ("cifar100-tiny128", 3, 0.01, True, 10)
    assert new["sdlora"] == cfg.sdlora.to_dict() and new["checkpoint"] == PRE_RUNCONFIG["checkpoint"]
    identity = saved_identity(new)
    assert identity["protocol"] == "cifar100-tiny128" and identity["direction_norm"] == "factors"
    assert (identity["threads"], identity["workers"], identity["world_size"], identity["backend"]) == (1, 0, 1, None)
    assert (identity["train_amp"], identity["peer_recipe"], identity["variant"]) == ("float32", "reference", "full")
    assert not {"data", "checkpoint", "device_name"} & set(identity)  # never recorded: not made up
    assert set(identity) <= set(labels())
    assert new["calls"] == [{"command": PRE_RUNCONFIG["command"], "started_utc": PRE_RUNCONFIG["started_utc"],
                             "wall_seconds": 2839.8, "methods": ["joint", "l2p"], "seeds": [2], "device": "cpu",
                             "device_name": None, "threads": 1, "workers": None, "world_size": None,
                             "image_cache": None}]
    assert new["provenance"] == "kept as is" and "recipes" not in new and "sdlora_effective" not in new
    changed, unrecorded = identity_changes(identity, {**identity, "epochs": 4, "data": {"name": "x"}})
    assert changed == ["--epochs: the run's 3, this call's 4"] and unrecorded == ["--data"]


def test_a_folder_with_an_old_identity_keeps_it_under_todays_keys():
    old = {**{k: v for k, v in PRE_RUNCONFIG.items() if k != "threads"}, "workers": 0, "device_name": "AMD EPYC",
           "identity": {"name": "cifar100-cpu", "epochs": 3, "threads": 1, "data": {"name": "cifar100.npz"}}}
    identity = migrate.migrate_config(old)["identity"]
    assert identity["protocol"] == "cifar100-tiny128" and "name" not in identity
    assert identity["data"] == {"name": "cifar100.npz"} and identity["threads"] == 1
    assert identity["class_order"] == "fixed" and identity["rank_schedule"] == [[0, 10], [3, 8], [7, 6]]


def test_rows_get_their_class_order_every_other_character_kept():
    text = "method,seed,experience,alphas\nsdlora,5,0,0.9000 1.0\r\nsdlora,5,1,\n"
    assert migrate.migrate_rows(text, "fixed", 1993) == (
        "method,seed,class_order_seed,experience,alphas\nsdlora,5,1993,0,0.9000 1.0\r\nsdlora,5,1993,1,\n")
    assert migrate.migrate_rows(text, "seed", None).splitlines()[1] == "sdlora,5,5,0,0.9000 1.0"
    mixed = "method,seed,class_order_seed,experience\nncm,0,,0\nncm,0,7,1\n"  # an old part extended by a newer call
    assert migrate.migrate_rows(mixed, "fixed", 7) == "method,seed,class_order_seed,experience\nncm,0,7,0\nncm,0,7,1\n"
    done = migrate.migrate_rows(text, "fixed", 1993)
    assert migrate.migrate_rows(done, "fixed", 1993) == done


def test_the_command_converts_a_folder_in_place_once(tmp_path):
    run = tmp_path / "results" / "cpu-3seeds"
    (run / "parts").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(PRE_RUNCONFIG))
    (run / "parts" / "joint-seed2.csv").write_text("method,seed,experience\njoint,2,0\n")
    changed = migrate.main([str(tmp_path / "results")])
    assert changed == [run / "config.json", run / "parts" / "joint-seed2.csv"]
    assert folder_checks.read_config(run / "config.json")["protocol"] == "cifar100-tiny128"
    assert (run / "parts" / "joint-seed2.csv").read_text() == "method,seed,class_order_seed,experience\njoint,2,1993,0\n"
    assert migrate.main([str(tmp_path / "results")]) == []
    with pytest.raises(SystemExit):
        migrate.main([str(tmp_path / "nowhere")])


def test_a_findings_sources_json_gets_its_call_history_a_class_order_reports_is_kept(tmp_path):
    old = {"command": "python -m benchmarks.findings --out f", "settings": {"epochs": 3}}
    assert migrate.migrate_findings_sources(old)["calls"] == [{"command": old["command"], "only": None}]
    orders_report = {"runs": [["../a", None]], "reference": "sdlora", "command": "python -m benchmarks.orders a"}
    assert migrate.migrate_findings_sources(orders_report) == orders_report
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "sources.json").write_text(json.dumps(old))
    assert migrate.main([str(tmp_path)]) == [tmp_path / "f" / "sources.json"]
    assert json.loads((tmp_path / "f" / "sources.json").read_text())["calls"][0]["command"] == old["command"]


def test_csvlogger_files_lose_the_validation_columns_and_never_filled_zeros_become_empty(tmp_path):
    """Avalanche's training file has val_accuracy/val_loss (never filled here); a run before 0.3.0 left training
    accuracy/loss and test loss at 0 in every row: not recorded, so empty cells, not zeros. Recorded columns, and
    zeros among recorded values (a first experience's forgetting), stay as they were."""
    old = "training_exp,epoch,training_accuracy,val_accuracy,training_loss,val_loss\n0,0,0,0,0,0\n0,1,0,0,0,0\n"
    assert migrate.migrate_log(old, "training_results.csv") == \
        "training_exp,epoch,training_accuracy,training_loss\n0,0,,\n0,1,,\n"
    recorded = "training_exp,epoch,training_accuracy,val_accuracy,training_loss,val_loss\n0,0,0.8342,0,0.5484,0\n0,1,0.9"
    assert migrate.migrate_log(recorded, "training_results.csv") == \
        "training_exp,epoch,training_accuracy,training_loss\n0,0,0.8342,0.5484\n0,1,0.9"  # a cut last line stays cut
    ev = "eval_exp,training_exp,eval_accuracy,eval_loss,forgetting\n0,0,0.9240,0,0\n0,1,0.8400,0,0.0840\n"
    new = migrate.migrate_log(ev, "eval_results.csv")
    assert new == "eval_exp,training_exp,eval_accuracy,eval_loss,forgetting\n0,0,0.9240,,0\n0,1,0.8400,,0.0840\n"
    for text, name in ((new, "eval_results.csv"), (migrate.migrate_log(old, "training_results.csv"),
                                                   "training_results.csv")):
        assert migrate.migrate_log(text, name) == text  # once
        log = tmp_path / "r" / "csv" / "sdlora" / "seed0" / name
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(text)
        folder_checks.check_log(log, finished=True)  # what the harness reads
        log.write_text(text + ("0,2,0.9,0.1\n" if name == "training_results.csv" else "1,1,0.8,0.5,0\n"))
        folder_checks.check_log(log, finished=True)  # rows a resume appended after the old ones are whole


def test_a_run_folder_with_magnitudes_gets_its_long_table_once(tmp_path):
    """A folder from before magnitudes.csv: the long table is written from per_task.csv's alphas strings, one row
    per (method, seed, experience, task), as benchmarks.compare writes it today."""
    run = tmp_path / "results" / "r"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"methods": ["sdlora"]}))
    (run / "per_task.csv").write_text("method,seed,class_order_seed,experience,alphas\n"
                                      "sdlora,0,1993,0,1.5\nsdlora,0,1993,1,1.25 0.5\n")
    migrate._migrate_run_folder(run)
    assert (run / "magnitudes.csv").read_text() == ("method,seed,class_order_seed,experience,task,alpha\n"
                                                    "sdlora,0,1993,0,0,1.5\nsdlora,0,1993,1,0,1.25\n"
                                                    "sdlora,0,1993,1,1,0.5\n")
    assert migrate._migrate_run_folder(run) == []  # once


def test_derived_csvs_get_percent_columns_named_so_byte_for_byte_what_the_writers_write_today(tmp_path):
    """A run folder's summary.csv and a class-order report's CSVs as the harness wrote them before units (issue 35:
    fractions under bare names) become what the writers write today, once; per_task.csv and the parts, the resume
    state, keep Avalanche's fractions."""
    import pandas as pd

    from benchmarks import orders
    from benchmarks.reports import summarize
    from benchmarks.run_set import RunSet
    from benchmarks.units import in_file_units
    from conftest import fake_run

    folders = [fake_run(tmp_path / "runs" / f"order{s}", {("sdlora", s): [0.9, 0.6 + s / 1e4],
                                                          ("seq-lora", s): [0.85, 0.57]}, class_order_seed=s)
               for s in (1993, 1994)]
    report = orders.main([*map(str, folders), "--out", str(tmp_path / "report")])
    today = {p: p.read_text() for p in sorted(tmp_path.rglob("*.csv"))}
    # the files as written before units: the computed frames, as they are
    per_task = pd.read_csv(folders[0] / "per_task.csv")
    (folders[0] / "summary.csv").write_text(summarize(per_task).to_csv(index=False))
    computed = orders.order_runs(RunSet.read(list(map(str, folders))))
    pairs = orders.paired(computed, "sdlora")
    old = {"orders.csv": computed, "orders_summary.csv": orders.summarize_orders(computed), "paired.csv": pairs,
           "paired_summary.csv": orders.summarize_paired(pairs)}
    for name, frame in old.items():
        (report / name).write_text(frame.to_csv(index=False))
    assert "acc_mean" in (report / "orders_summary.csv").read_text().splitlines()[0].split(",")
    changed = migrate.migrate(tmp_path)
    csvs = [p for p in changed if p.suffix == ".csv"]  # (config.json, sources.json: their paths made portable)
    assert sorted(csvs) == sorted([folders[0] / "summary.csv", *(report / n for n in old)])
    assert {p: p.read_text() for p in sorted(tmp_path.rglob("*.csv"))} == today  # byte for byte, parts untouched
    assert not [p for p in migrate.migrate(tmp_path) if p.suffix == ".csv"]  # once
    header = (report / "paired_summary.csv").read_text().splitlines()[0].split(",")
    assert {"acc_diff_mean_pts", "acc_diff_std_pts", "acc_wins"} <= set(header) and "acc_diff_mean" not in header
    assert in_file_units(summarize(per_task)).to_csv(index=False) == (folders[0] / "summary.csv").read_text()


def test_the_units_step_keeps_every_other_cell_as_written():
    """Only the accuracy-like columns change: a quoted cell, an empty one and a count keep their text."""
    old = ('method,candidate,options,status,val_acc,val_mean_acc,train_seconds\n'
           'sdlora,sgd-lr0.008,"{""a"": 1, ""b"": 2}",done,0.871,0.9,12.5\n'
           'l2p,sgd-lr0.01,{},failed: nan loss,,,\n')
    new = migrate.migrate_units(old)
    assert new == ('method,candidate,options,status,val_acc_pct,val_mean_acc_pct,train_seconds\n'
                   f'sdlora,sgd-lr0.008,"{{""a"": 1, ""b"": 2}}",done,87.1,90.0,12.5\n'
                   'l2p,sgd-lr0.01,{},failed: nan loss,,,\n')
    assert migrate.migrate_units(new) == new and migrate.migrate_units("") == ""


def test_percent_cells_written_before_rounding_are_rounded_as_the_writer_rounds_them():
    """0.4.0 wrote 100 * 0.839 as 83.89999999999999; today's writer (benchmarks.units.percent) writes 83.9, and the
    migration gives an old file that text, byte for byte, keeping every other cell and a rounded file as it is."""
    table = pd.DataFrame({"method": ["a", "b", "c"], "acc": [0.839, 0.5, float("nan")], "train_seconds": [1.25, 2, 3]})
    written = in_file_units(table).to_csv(index=False)
    assert "83.9," in written
    old = written.replace("83.9,", f"{100 * 0.839!r},")
    assert old != written and migrate.migrate_units(old) == written
    assert migrate.migrate_units(written) == written
