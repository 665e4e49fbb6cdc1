"""Result folders record no absolute local path (issue 35): inputs by identity, commands with portable paths."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from avalanche_sdlora.assets import default_asset
from benchmarks import compare, migrate
from benchmarks.config import RunConfig
from benchmarks.local_paths import portable_record, portable_text
from conftest import TINY, _require_cifar

RESULTS = Path(__file__).resolve().parent.parent / "results"


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _absolute(record) -> list[str]:
    """Every string of ``record`` that is, or holds, an absolute path."""
    return [s for s in _strings(record) if os.path.isabs(s) or portable_text(s) != s]


def test_paths_in_text_are_cut_to_the_folder_the_working_directory_or_their_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "out" / "p" / "r"
    text = (f"python -m benchmarks.compare --data /home/alice/data/cifar100.npz --out {tmp_path}/out --resume {run} "
            f"--checkpoint {run}/w.safetensors --lists ../lists https://github.com/a/b 1/2")
    got = portable_text(text, run)
    assert got == ("python -m benchmarks.compare --data .../cifar100.npz --out out --resume . --checkpoint w.safetensors "
                   "--lists ../lists https://github.com/a/b 1/2")


def test_inputs_are_recorded_by_identity_and_read_back_as_not_given():
    identity = {"data": {"sha256": "ab", "size": 3, "name": "cifar100.npz"}}
    record = portable_record({"data": "/x/y/cifar100.npz", "checkpoint": "/x/w.safetensors", "lists": None,
                              "identity": identity, "calls": [{"command": "run --out /x/runs"}]})
    assert record["data"] == identity["data"] and record["checkpoint"] == {"name": "w.safetensors"}
    assert record["lists"] is None and record["calls"][0]["command"] == "run --out .../runs"
    cfg = RunConfig.from_json({**RunConfig().to_json(), "data": record["data"], "checkpoint": record["checkpoint"]})
    assert cfg.data is None and cfg.checkpoint is None  # found here as a new run finds them


def test_a_run_records_no_local_path_and_resumes_elsewhere(tmp_path):
    _require_cifar()
    data = tmp_path / "inputs" / "my-cifar.npz"
    data.parent.mkdir()
    shutil.copy(default_asset("cifar100.npz"), data)
    run = compare.main(TINY + ["--methods", "ncm", "--data", str(data), "--out", str(tmp_path / "out")])
    config = json.loads((run / "config.json").read_text())
    assert _absolute(config) == [] and str(tmp_path) not in (run / "config.json").read_text()
    assert config["data"]["name"] == "my-cifar.npz" and config["data"] == config["identity"]["data"]
    # resumed with the same content under another path (the folder names no path to find it by): accepted
    moved = tmp_path / "elsewhere.npz"
    data.rename(moved)
    assert compare.main(TINY + ["--methods", "ncm", "--seeds", "1", "--data", str(moved), "--resume", str(run)]) == run
    assert _absolute(json.loads((run / "config.json").read_text())) == []


def test_migrate_rewrites_old_folders_once(tmp_path):
    folder = tmp_path / "results" / "p" / "run"
    folder.mkdir(parents=True)
    old = {"data": "/work/shared/assets/cifar100.npz", "command": f"compare --resume {folder}",
           "identity": {"data": {"sha256": "ab", "size": 3, "name": "cifar100.npz"}}}
    (folder / "config.json").write_text(json.dumps(old))
    assert migrate.main([str(tmp_path / "results")]) == [folder / "config.json"]
    new = json.loads((folder / "config.json").read_text())
    assert new["data"] == old["identity"]["data"] and new["command"] == "compare --resume ."
    assert migrate.main([str(tmp_path / "results")]) == []  # the second time changes nothing


def test_the_committed_results_record_no_absolute_path():
    found = {}
    for path in RESULTS.rglob("*.json"):
        bad = _absolute(json.loads(path.read_text()))
        if bad:
            found[str(path.relative_to(RESULTS))] = bad[:2]
    assert found == {}, f"run python -m benchmarks.migrate results: {found}"
