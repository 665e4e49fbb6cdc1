"""``benchmarks.publish``: a running folder's finished (method, seed) runs go into a results folder, nothing else,
and nothing already published is overwritten."""

from __future__ import annotations

import pandas as pd
import pytest

from benchmarks import publish
from benchmarks.resume import LOG_HEADERS
from benchmarks.run_folder import RunFolder

from conftest import fake_run

RUNS = {("sdlora", 0): [90.0, 80.0, 70.0], ("simplecil", 0): [85.0, 75.0, 65.0]}


def with_logs(folder, method: str, seed: int) -> None:
    d = RunFolder(folder).log_dir(method, seed)
    d.mkdir(parents=True)
    (d / "training_results.csv").write_text(LOG_HEADERS["training_results.csv"] + "\n0,0,0.5,1.2\n")
    (d / "eval_results.csv").write_text(LOG_HEADERS["eval_results.csv"] + "\n0,0,0.9,0.3,0\n")


def cut(folder, method: str, seed: int, rows: int) -> None:
    """Leave a part with its first ``rows`` experiences: a run still going on."""
    f = RunFolder(folder).part(method, seed)
    pd.read_csv(f).head(rows).to_csv(f, index=False)


@pytest.fixture
def running(tmp_path):
    src = fake_run(tmp_path / "runs" / "long", {**RUNS, ("seq-lora", 0): [88.0, 78.0, 68.0]})
    for m, s in (*RUNS, ("seq-lora", 0)):
        with_logs(src, m, s)
    cut(src, "seq-lora", 0, 2)
    ckpt = RunFolder(src).checkpoints("sdlora", 0)
    ckpt.mkdir(parents=True)
    (ckpt / "exp2.safetensors").write_bytes(b"weights")
    return src


def test_only_finished_runs_are_copied_with_their_logs_and_the_report_is_drawn(running, tmp_path, capsys):
    dest = tmp_path / "results" / "long"
    assert publish.publish(running, dest) == ["sdlora-seed0", "simplecil-seed0"]
    printed = capsys.readouterr().out
    assert "unfinished" in printed and "seq-lora-seed0" in printed
    out = RunFolder(dest)
    assert sorted(p.name for p in (dest / "parts").iterdir()) == ["sdlora-seed0.csv", "simplecil-seed0.csv"]
    assert out.part("sdlora", 0).read_text() == RunFolder(running).part("sdlora", 0).read_text()
    assert (out.log_dir("sdlora", 0) / "eval_results.csv").read_text().endswith("0,0,0.9,0.3,0\n")
    assert not (dest / "checkpoints").exists() and not out.log_dir("seq-lora", 0).exists()
    assert out.config_path.read_text() == RunFolder(running).config_path.read_text()
    table = (dest / "table.md").read_text()
    assert "sdlora" in table and "simplecil" in table and "seq-lora" not in table
    assert not out.is_done()


def test_a_later_call_adds_what_finished_since_and_nothing_else(running, tmp_path):
    dest = tmp_path / "results" / "long"
    publish.publish(running, dest)
    assert publish.publish(running, dest) == []  # nothing new: equal parts are left as they are
    src = RunFolder(running)
    fake = fake_run(tmp_path / "again", {("seq-lora", 0): [88.0, 78.0, 68.0]})
    src.part("seq-lora", 0).write_text(RunFolder(fake).part("seq-lora", 0).read_text())  # it finished
    src.mark_done()
    assert publish.publish(running, dest) == ["seq-lora-seed0"]
    assert "seq-lora" in (dest / "table.md").read_text()
    assert RunFolder(dest).is_done()  # every run of the source is there now


def test_a_different_published_result_is_never_overwritten(running, tmp_path):
    dest = tmp_path / "results" / "long"
    publish.publish(running, dest)
    other = fake_run(tmp_path / "other", {("sdlora", 0): [91.0, 81.0, 71.0]})
    RunFolder(running).part("sdlora", 0).write_text(RunFolder(other).part("sdlora", 0).read_text())
    before = RunFolder(dest).part("sdlora", 0).read_text()
    with pytest.raises(SystemExit, match="sdlora-seed0.csv' holds another finished result of sdlora seed 0.*remove"):
        publish.publish(running, dest)
    assert RunFolder(dest).part("sdlora", 0).read_text() == before


def test_a_folder_of_other_settings_is_refused_naming_the_setting(running, tmp_path):
    dest = fake_run(tmp_path / "results" / "long", {("sdlora", 1): [90.0, 80.0, 70.0]}, epochs=5)
    with pytest.raises(SystemExit, match="holds a run of other settings.*epoch"):
        publish.publish(running, dest)
    assert not RunFolder(dest).part("simplecil", 0).exists()


def test_methods_restrict_the_copy_and_bad_arguments_are_refused(running, tmp_path):
    dest = tmp_path / "results" / "long"
    assert publish.main([str(running), str(dest), "--methods", "simplecil"]) == ["simplecil-seed0"]
    with pytest.raises(SystemExit):
        publish.main([str(running), str(dest), "--methods", "sdlroa"])
    with pytest.raises(SystemExit, match="is not a run folder"):
        publish.publish(tmp_path / "nothing", dest)
    with pytest.raises(SystemExit, match="is RUN_DIR itself"):
        publish.publish(running, running)
