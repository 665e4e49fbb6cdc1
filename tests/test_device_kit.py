"""The GPU-machine kit (benchmarks/device): its job files must stay valid commands of the harness.

Nobody runs them between device sessions, so a renamed flag or method would only show on a lent machine, at the
cost of its 15 minutes; here every command a job file would run is parsed by the command's own parser.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from benchmarks import compare, tune
from benchmarks.speed import command as speed_command

ROOT = Path(__file__).resolve().parent.parent
KIT = ROOT / "benchmarks" / "device"
JOBS = sorted((KIT / "jobs").glob("*.sh"))
SEP = "\x1f"


def _calls(job: Path, work: Path, env: str = "") -> list[list[str]]:
    """The ``python3`` command lines ``job`` runs, recorded by a stand-in (the job runs with W=``work`` and the
    ``env`` assignments, e.g. ``ORDER=1994``)."""
    log = work / "calls.log"
    recorder = f'python3() {{ local IFS=$\'{SEP}\'; echo "$*" >> "{log}"; }}'
    subprocess.run(["bash", "-c", f'{recorder}; export W="{work}" {env}; . "{job}"'], cwd=ROOT, check=True)
    return [line.split(SEP) for line in log.read_text().splitlines()] if log.exists() else []


def test_the_kit_scripts_are_valid_bash():
    for script in sorted(KIT.glob("*.sh")) + JOBS:
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script.name}: {result.stderr}"


@pytest.mark.parametrize("job", [j for j in JOBS if j.name != "resume.sh"], ids=lambda p: p.name)
def test_every_command_of_a_job_file_parses(job, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the job files name tracked files (chosen.json) from the repository root
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)  # they run on the GPU machine
    calls = _calls(job, tmp_path)
    assert calls, f"{job.name} runs no command"
    for argv in calls:
        assert argv[:1] == ["-m"], f"{job.name}: {shlex.join(argv)} is not a module of the harness"
        module, flags = argv[1], argv[2:]
        if module == "benchmarks.compare":
            args = compare.parse_args(flags)
            assert Path(args.out) == tmp_path, f"{job.name}: a run outside $W does not come back"
        elif module == "benchmarks.speed":
            speed_command.parse_args(flags)
        elif module == "benchmarks.tune":
            args = tune.parse_args(flags)
            assert Path(args.out).is_relative_to(tmp_path), f"{job.name}: a tuning outside $W does not come back"
        else:
            pytest.fail(f"{job.name}: unexpected module {module}")


def test_resume_continues_only_the_unfinished_folders(tmp_path):
    for name, done in (("unfinished", False), ("finished", True)):
        run = tmp_path / "cifar100-tiny128" / name
        run.mkdir(parents=True)
        (run / "config.json").write_text("{}")
        if done:
            (run / "DONE").write_text("")
    calls = _calls(KIT / "jobs" / "resume.sh", tmp_path)
    assert [c[:4] for c in calls] == [["-m", "benchmarks.compare", "--resume",
                                       f"{tmp_path}/cifar100-tiny128/unfinished/"]]


def _fake_gpu(tmp_path: Path, name: str) -> dict:
    """An environment whose ``nvidia-smi`` reports ``name`` (the kit reads the card from it)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\necho '{name}'\n")
    smi.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "OUT": str(tmp_path / "out")}


@pytest.mark.parametrize(("job", "other", "kind"), [("fair_1993.sh", "NVIDIA H100 80GB HBM3", "nvidia-h200"),
                                                    ("fair_1994.sh", "NVIDIA H100 80GB HBM3", "nvidia-h200"),
                                                    ("seeds.sh", "NVIDIA H100 80GB HBM3", "nvidia-h200"),
                                                    ("fair_h100.sh", "NVIDIA H200", "nvidia-h100")])
def test_a_cards_table_jobs_stop_before_computing_on_another_card(job, other, kind, tmp_path):
    """A card's table keeps its class orders on one machine; the device tool's default card is an H100."""
    env = _fake_gpu(tmp_path, other)
    result = subprocess.run(["bash", str(KIT / "step_compute.sh"), str(KIT / "jobs" / job)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert other in result.stderr and f"kind {kind}" in result.stderr
    assert not (tmp_path / "out").exists()  # stopped before the pieces, the compute and the packing


def test_fair_h100_runs_the_order_it_is_given_into_a_folder_of_that_order(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)  # it runs on the GPU machine
    (call,) = _calls(KIT / "jobs" / "fair_h100.sh", tmp_path, env="ORDER=1994")
    args = compare.parse_args(call[2:])
    assert args.seeds == [1994] and args.run_id == "fair-h100-1994" and len(args.methods) == 13


def test_integrate_files_each_cards_runs_under_its_own_table(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    w = tmp_path / "pack" / "w" / "cifar100-tiny128-full"
    for run_id, card in (("on-h200", "NVIDIA H200"), ("on-h100", "NVIDIA H100 80GB HBM3"), ("on-a100", "NVIDIA A100"),
                         ("unrecorded", None)):
        (w / run_id).mkdir(parents=True)
        config = {"device_name": card} if card else {"device": "cuda"}
        (w / run_id / "config.json").write_text(json.dumps(config, indent=2))
    perf = tmp_path / "pack" / "w" / "perf-cuda"  # jobs/speed.sh's folder
    perf.mkdir()
    (perf / "README.md").write_text("Hardware: a CPU, GPU: NVIDIA H100 80GB HBM3;\n")
    tgz = tmp_path / "w.tgz"
    subprocess.run(["tar", "czf", str(tgz), "-C", str(tmp_path / "pack"), "w"], check=True)
    env = {**os.environ, "PYTHON": "true"}  # no report redraw: the folders are stand-ins
    result = subprocess.run(["bash", str(KIT / "integrate.sh"), str(tgz)], cwd=repo, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    full = repo / "results" / "cifar100-tiny128-full"
    assert sorted(p.parent.relative_to(full).as_posix() for p in full.rglob("config.json")) == ["h100/on-h100",
                                                                                               "h200/on-h200"]
    assert "on-a100 ran on 'NVIDIA A100', neither an NVIDIA H200 nor an H100" in result.stderr
    assert "unrecorded ran on 'an unrecorded device'" in result.stderr
    assert (repo / "results" / "perf-cuda" / "README.md").read_text() == (perf / "README.md").read_text()
    assert "results/perf-cuda: GPU: NVIDIA H100 80GB HBM3" in result.stdout


def test_integrate_files_a_second_stage_beside_the_committed_tuning(tmp_path):
    """jobs/confirm.sh's candidates go into the committed tuning folder's confirm/, never over one already there, with
    the second stage's failures merged into its failures.json (the first stage's left as they are)."""
    repo = tmp_path / "repo"
    tuned = repo / "results" / "tuning" / "cifar100-tiny128-full" / "tuned"
    (tuned / "confirm" / "experiences4" / "mos" / "sgd-lr0.03").mkdir(parents=True)
    (tuned / "confirm" / "experiences4" / "mos" / "sgd-lr0.03" / "kept.txt").write_text("here first")
    (tuned / "failures.json").write_text(json.dumps({"l2p": {"adam-lr0.1": "diverged"}}))
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    w = tmp_path / "pack" / "w" / "tuning" / "cifar100-tiny128-full" / "tuned"
    for cand in ("mos/sgd-lr0.03", "mos/sgd-lr0.0949", "care/sgd-lr0.005"):
        (w / "confirm" / "experiences4" / cand).mkdir(parents=True)
        (w / "confirm" / "experiences4" / cand / "config.json").write_text("{}")
    (w / "confirm" / "experiences4" / "care" / "sgd-lr0.005" / "DONE").write_text("")
    (w / "failures.json").write_text(json.dumps({"l2p": {"stale": "x"}, "care@experiences4": {"sgd-lr0.158": "nan"}}))
    tgz = tmp_path / "w.tgz"
    subprocess.run(["tar", "czf", str(tgz), "-C", str(tmp_path / "pack"), "w"], check=True)
    result = subprocess.run(["bash", str(KIT / "integrate.sh"), str(tgz)], cwd=repo, capture_output=True, text=True,
                            timeout=60, env={**os.environ, "PYTHON": "python3"})
    assert result.returncode == 0, result.stderr
    stage = tuned / "confirm" / "experiences4"
    assert (stage / "mos" / "sgd-lr0.03" / "kept.txt").read_text() == "here first"  # never overwritten
    assert not (stage / "mos" / "sgd-lr0.03" / "config.json").exists() and "sgd-lr0.03 exists" in result.stderr
    assert (stage / "mos" / "sgd-lr0.0949" / "config.json").is_file() and (stage / "care" / "sgd-lr0.005" / "DONE").is_file()
    assert json.loads((tuned / "failures.json").read_text()) == {"l2p": {"adam-lr0.1": "diverged"},
                                                                 "care@experiences4": {"sgd-lr0.158": "nan"}}
    assert "--report-only --confirm-experiences 4" in result.stdout
