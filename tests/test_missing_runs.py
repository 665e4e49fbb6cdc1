"""What each machine's class-order report still lacks: every (method, order) not finished there, an unfinished run
included, with one run's minutes on that machine or, where none finished there, on the others."""

import json

import numpy as np
import pandas as pd
import pytest

from benchmarks import orders
from benchmarks.machine_brief import Report
from benchmarks.missing_runs import commands, gaps, machine_slug, main, markdown, run_command
from conftest import fake_run

GPU, CPU = "results/full/class-orders", "results/full/class-orders-cpu"


def _on(folder, machine: str, train_seconds: float):
    """``folder`` recorded as trained on ``machine``, each experience taking ``train_seconds`` (evaluation 0.5 s)."""
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "device_name": machine}))
    for part in (folder / "parts").glob("*.csv"):
        pd.read_csv(part).assign(train_seconds=train_seconds).to_csv(part, index=False)
    return folder


def _reports(root):
    (root / ".git").mkdir(exist_ok=True)
    gpu = fake_run(root / "results/full/gpu", {("sdlora", 1993): [0.9, 0.80], ("ncm", 1993): [0.9, 0.70],
                                               ("sdlora", 1994): [0.9, 0.60], ("ncm", 1994): [0.9, 0.65]},
                   class_order="seed")
    cpu = fake_run(root / "results/full/cpu", {("sdlora", 1993): [0.9, 0.78], ("ncm", 1993): [0.9, 0.71],
                                               ("l2p", 1993): [0.9, 0.5], ("l2p", 1994): [0.9, 0.4]},
                   class_order="seed")
    part = cpu / "parts" / "l2p-seed1994.csv"
    pd.read_csv(part).iloc[:1].to_csv(part, index=False)  # stopped after its first experience
    orders.main([str(_on(gpu, "NVIDIA H200", 30.0)), "--out", str(root / GPU)])
    orders.main([str(_on(cpu, "Intel(R) Xeon(R) Processor", 1200.0)), "--out", str(root / CPU)])
    return [Report.read(root, GPU), Report.read(root, CPU)]


def test_every_order_a_machine_has_not_finished_is_listed_with_its_cost(tmp_path):
    gpu, cpu = _reports(tmp_path)
    found = {(g.machine, g.method): g for g in gaps([gpu, cpu])}
    # the GPU never ran l2p; the CPU finished order 1993 only of every method (l2p's 1994 stopped after a task)
    assert sorted(found) == [("Intel Xeon", "l2p"), ("Intel Xeon", "ncm"), ("Intel Xeon", "sdlora"),
                             ("NVIDIA H200", "l2p")]
    assert found[("Intel Xeon", "l2p")].orders == (1994,)
    assert found[("Intel Xeon", "sdlora")].orders == (1994,)
    assert found[("NVIDIA H200", "l2p")].orders == (1993, 1994)
    # one run's minutes on its own machine: two experiences of 1200 s training and 0.5 s evaluation
    assert found[("Intel Xeon", "sdlora")].minutes == (2 * 1200 + 2 * 0.5) / 60
    # none finished on the GPU: the CPU's minutes stand in, named
    assert np.isnan(found[("NVIDIA H200", "l2p")].minutes)
    assert found[("NVIDIA H200", "l2p")].elsewhere == {"Intel Xeon": (2 * 1200 + 2 * 0.5) / 60}
    text = markdown([gpu, cpu])
    assert "| NVIDIA H200 | l2p | 1993, 1994 | – (Intel Xeon: 40) |" in text
    assert "| Intel Xeon | sdlora | 1994 | 40 |" in text
    assert "NVIDIA H200: 2 runs; Intel Xeon: 3 runs, 2.0 run-hours for the 3 whose method ran there." in text


def test_a_complete_set_of_reports_says_so(tmp_path):
    gpu, _ = _reports(tmp_path)
    assert gaps([gpu]) == []
    assert markdown([gpu]) == "Every machine's report has every method finished on every class order (1993, 1994).\n"
    assert commands(tmp_path, [gpu]) == ("# NVIDIA H200 (results/full/class-orders): 0 runs; every method has a "
                                         "finished run on every class order, nothing to start\n")


def _recorded(folder, command: str) -> None:
    config = json.loads((folder / "config.json").read_text())
    assert config["class_order"] == "seed"
    (folder / "config.json").write_text(json.dumps({**config, "command": command}))


def test_the_gaps_as_commands_that_start_them_with_each_machines_own_flags(tmp_path, capsys):
    gpu, cpu = _reports(tmp_path)
    _recorded(tmp_path / "results/full/cpu", "python -m benchmarks.compare --protocol p --class-order seed --seeds "
              "1993 1994 --methods sdlora ncm l2p --threads 1 --quiet --out runs --run-id=cpu")
    _recorded(tmp_path / "results/full/gpu", "python -m benchmarks.compare --class-order seed --out .../fair")
    text = commands(tmp_path, [gpu, cpu], drift="results/full/drift")
    # the CPU's own flags, its run's --seeds, --methods and --run-id replaced by one (method, order) each
    start = "python -m benchmarks.compare --protocol p --class-order seed --threads 1 --quiet --out runs --seeds"
    assert f"{start} 1994 --methods sdlora --run-id fair-xeon-sdlora-1994   # minutes: 40\n" in text
    assert f"{start} 1994 --methods l2p --run-id fair-xeon-l2p-1994   # minutes: 40\n" in text  # its 1994 stopped
    assert text.count(start) == 3  # sdlora, ncm and l2p on order 1994
    protocol = json.loads((tmp_path / "results/full/cpu/config.json").read_text())["protocol"]
    assert f"python -m benchmarks.publish runs/{protocol}/RUN_ID results/full/RUN_ID\n" in text
    assert f"python -m benchmarks.orders --again {CPU} results/full/RUN_ID\n" in text
    assert "python -m benchmarks.machine_drift --again results/full/drift results/full/RUN_ID\n" in text
    # the GPU's recorded command names a scrubbed local path: said, with what to run, not a command that fails
    assert "# NVIDIA H200 (results/full/class-orders): 2 runs\n# no run folder of it ran" in text
    assert "runs were: l2p 1993 1994\n" in text and "--methods l2p --run-id fair-h200" not in text
    only = commands(tmp_path, [gpu, cpu], machine="XEON")
    assert "NVIDIA" not in only and start in only
    with pytest.raises(SystemExit, match="--machine epyc: no report's runs trained on such a machine; pass part of "
                                         "one of NVIDIA H200, Intel Xeon"):
        commands(tmp_path, [gpu, cpu], machine="epyc")
    # a run this checkout already started goes on with --resume; one that finished waits to be published
    started = tmp_path / f"runs/{protocol}/fair-xeon-sdlora-1994"
    started.mkdir(parents=True)
    (started / "config.json").write_text("{}")
    (tmp_path / f"runs/{protocol}/fair-xeon-ncm-1994").mkdir(parents=True)
    (tmp_path / f"runs/{protocol}/fair-xeon-ncm-1994/DONE").write_text("")
    again = commands(tmp_path, [gpu, cpu], machine="xeon")
    assert (f"python -m benchmarks.compare --resume runs/{protocol}/fair-xeon-sdlora-1994 --quiet   # started here"
            in again)
    assert f"# fair-xeon-ncm-1994: finished in runs/{protocol}/fair-xeon-ncm-1994; publish it (below)\n" in again
    assert "--run-id fair-xeon-sdlora-1994" not in again and "--run-id fair-xeon-ncm-1994" not in again
    assert f"{start} 1994 --methods l2p --run-id fair-xeon-l2p-1994   # minutes: 40\n" in again  # not begun: as before
    assert (run_command("x --seeds 1 2 --quiet --resume runs/a", "ncm", 7, "r")
            == "x --quiet --seeds 7 --methods ncm --run-id r")
    assert machine_slug("AMD EPYC") == "epyc" and machine_slug("NVIDIA H200") == "h200"


def test_the_command_reads_the_committed_reports():
    text = main(["--machine", "xeon"])
    assert text.startswith("# Intel Xeon (results/cifar100-tiny128-full/class-orders-xeon): ")
