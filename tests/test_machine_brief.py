"""The README's side-by-side summary of the tuned full-data comparison: one report per machine type, never pooled;
each cell formatted as that report's own brief.md formats it."""

import json
import re

import pytest

from benchmarks import headline, orders
from benchmarks.machine_brief import Report, brief, present_reports, short_machine
from conftest import fake_run

GPU, CPU = "results/full/class-orders", "results/full/class-orders-cpu"


def _on(folder, machine: str):
    """A fake run folder recorded as trained on ``machine``."""
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "device_name": machine}))
    return folder


def _reports(root):
    (root / ".git").mkdir(exist_ok=True)
    gpu = _on(fake_run(root / "results/full/gpu", {("sdlora", 1993): [0.9, 0.80], ("ncm", 1993): [0.9, 0.70],
                                                   ("sdlora", 1994): [0.9, 0.60], ("ncm", 1994): [0.9, 0.65]},
                       class_order="seed"), "NVIDIA H200")
    cpu = _on(fake_run(root / "results/full/cpu", {("sdlora", 1993): [0.9, 0.78], ("ncm", 1993): [0.9, 0.71],
                                                   ("l2p", 1993): [0.9, 0.5]},
                       class_order="seed"), "Intel(R) Xeon(R) Processor")
    return orders.main([str(gpu), "--out", str(root / GPU)]), orders.main([str(cpu), "--out", str(root / CPU)])


def test_machine_names_are_shortened_for_headers_only():
    assert short_machine("Intel(R) Xeon(R) Processor") == "Intel Xeon"
    assert short_machine("AMD EPYC 7B13 64-Core Processor") == "AMD EPYC 7B13 64-Core"
    assert short_machine("Intel(R) Core(TM) i7-9700K CPU @ 3.60GHz") == "Intel Core i7-9700K"
    assert short_machine("NVIDIA H200") == "NVIDIA H200"


def test_each_machine_has_its_own_columns_with_its_reports_numbers(tmp_path):
    gpu_report, cpu_report = _reports(tmp_path)
    text = brief([Report.read(tmp_path, GPU), Report.read(tmp_path, CPU)])
    head = text.splitlines()[0]
    assert head == ("| method | recipe | Acc (%), NVIDIA H200 | sdlora minus it | Acc (%), Intel Xeon | "
                    "sdlora minus it |")
    # GPU: sdlora 80 / 60, ncm 70 / 65 (two orders); CPU: sdlora 78, ncm 71, l2p 50 (order 1993 only): out of the
    # two orders the reports cover together, so a machine that has run one order so far reads '1 of 2'
    assert "| sdlora | sgd 0.01 (protocol) | 70.00 ± 14.14 (2 of 2) | – | 78.00 (1 of 2) | – |" in text
    assert ("| ncm | no training | 67.50 ± 3.54 (2 of 2) | +2.50 ± 10.61 (ahead 1 of 2) | 71.00 (1 of 2) | "
            "+7.00 (ahead 1 of 1) |") in text
    assert "| l2p | adam 0.01 (protocol) | – | – | 50.00 (1 of 2) | +28.00 (ahead 1 of 1) |" in text
    # the same cells as each report's own brief.md
    assert "70.00 ± 14.14" in (gpu_report / "brief.md").read_text()
    assert "+2.50 ± 10.61 (ahead 1 of 2)" in (gpu_report / "brief.md").read_text()
    assert "+7.00 (ahead 1 of 1)" in (cpu_report / "brief.md").read_text()
    assert "| sdlora | sgd 0.01 (protocol) | 78.00 (1 of 1) | – |" in brief([Report.read(tmp_path, CPU)])  # alone
    # rows by the mean of their machines' accuracies: sdlora (74.0), ncm (69.25), l2p (50)
    rows = [line.split(" | ")[0] for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows == ["| method", "| sdlora", "| ncm", "| l2p"]
    assert f"`{GPU}/table.md` (NVIDIA H200), `{CPU}/table.md` (Intel Xeon)" in text
    # the reports written, in the order asked for; one not written yet is left out
    assert [r.path for r in present_reports(tmp_path, ("results/none", CPU, GPU))] == [CPU, GPU]
    assert brief(present_reports(tmp_path, (GPU, CPU, "results/none"))) == text
    # the legend names the machine-drift report behind "never pooled" when given one
    named = brief(present_reports(tmp_path, (GPU, CPU)), "results/p/machine-drift")
    assert named.replace(" (`results/p/machine-drift/table.md`: every run two machines share, side by side)", "") == text


def test_reports_against_different_references_or_missing_files_are_refused(tmp_path):
    _reports(tmp_path)
    orders.main([str(tmp_path / "results/full/cpu"), "--out", str(tmp_path / "results/other"), "--reference", "ncm"])
    with pytest.raises(SystemExit, match="compare against different methods .*same --reference"):
        brief([Report.read(tmp_path, GPU), Report.read(tmp_path, "results/other")])
    (tmp_path / CPU / "paired_summary.csv").unlink()
    with pytest.raises(SystemExit, match=re.escape(f"{CPU} has no paired_summary.csv; write the report with "
                                                   f"python -m benchmarks.orders --again {CPU}")):
        Report.read(tmp_path, CPU)


def test_the_readme_shows_the_brief_and_the_docs_each_machines_table(tmp_path):
    """README.md gets the side-by-side brief (and nothing else); the other machine's table goes where a file has
    its markers; a report without a file to show it is refused, naming the markers."""
    _, cpu_report = _reports(tmp_path)
    lead = ("<!-- tuned full-data table: generated by `python -m benchmarks.headline` from x -->\n"
            "<!-- end of tuned full-data table -->\n")
    lead += ("<!-- runs the tuned full-data tables still lack: generated by `python -m benchmarks.headline` from "
             "x -->\n<!-- end of runs the tuned full-data tables still lack -->\n")
    table_markers = lead + ("<!-- tuned full-data table (class-orders-cpu): generated by `python -m benchmarks.headline` "
                     "from x -->\n<!-- end of tuned full-data table (class-orders-cpu) -->\n")
    brief_markers = ("<!-- tuned full-data summary: generated by `python -m benchmarks.headline` from x -->\n"
                     "<!-- end of tuned full-data summary -->\n")
    fake = fake_run(tmp_path / "results/p/main", {("sdlora", 0): [0.9, 0.6]})
    for name in headline.FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(f"<!-- headline table: generated by `python -m benchmarks.headline` from x -->\n"
                                     f"<!-- end of headline table -->\n{table_markers}")
    (tmp_path / "README.md").write_text("intro\n" + brief_markers + "after\n")
    kwargs = dict(runs=[str(fake.relative_to(tmp_path))], orders="none", fair=GPU, fair_others=(CPU,))
    headline.regenerate(tmp_path, **kwargs)
    readme = (tmp_path / "README.md").read_text()
    # the drift report (headline.DRIFT) is not written here, so the brief does not name it
    assert f"from {GPU} and {CPU} -->\n" + brief(present_reports(tmp_path, (GPU, CPU))) + "<!-- end of" in readme
    assert (cpu_report / "table.md").read_text() in (tmp_path / headline.FILES[0]).read_text()
    # and what the two reports still lack (the GPU never ran l2p; the CPU lacks order 1994), listed once
    docs = (tmp_path / headline.FILES[0]).read_text()
    assert f"from {GPU} and {CPU} -->\n| machine | method | class orders to run |" in docs
    assert headline.regenerate(tmp_path, check=True, **kwargs) == []
    (tmp_path / headline.DRIFT).mkdir(parents=True)  # once it is, the brief's legend names it
    (tmp_path / headline.DRIFT / "table.md").write_text("# The same runs on several machines\n")
    assert headline.regenerate(tmp_path, **kwargs) == ["README.md"]
    assert f"(`{headline.DRIFT}/table.md`: every run two machines share" in (tmp_path / "README.md").read_text()
    for name in headline.FILES:
        (tmp_path / name).write_text("<!-- headline table: generated by `python -m benchmarks.headline` from x -->\n"
                                     "<!-- end of headline table -->\n" + lead)
    with pytest.raises(SystemExit, match=re.escape("no file shows the tuned full-data table (class-orders-cpu)")):
        headline.regenerate(tmp_path, **kwargs)
