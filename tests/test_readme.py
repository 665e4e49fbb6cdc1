"""The README's two opening commands are exactly what CI runs, its examples use the real API and run, it fits on a
screen, and it and docs/ point only inside the repository; results/README.md gives each report's recorded command."""

import ast
import json
import re
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent


def _blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_ci_runs_the_readme_commands_verbatim():
    bash = _blocks("bash")
    install_and_run, run_tests = bash[0].strip(), bash[1].strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert install_and_run in ci and run_tests in ci


def test_readme_example_imports_exist():
    tree = ast.parse(_blocks("python")[0])
    import importlib

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module}.{alias.name}"


def test_readme_example_runs_on_a_tiny_slice():
    """The drop-in example, shrunk only in data size, trains, evaluates, merges and exports."""
    import timm

    ns = _run_dropin()
    plain = timm.create_model("vit_tiny_patch16_224", num_classes=4, img_size=32)
    assert type(ns["vit"]) is type(plain)
    plain.load_state_dict(ns["vit"].state_dict())  # strict: a plain timm model


def _run_dropin() -> dict:
    """The README's drop-in example, shrunk only in data size, run; its namespace."""
    src = _blocks("python")[0]
    shrink = {"split_cifar100(n_experiences=10, train_per_class=100, img_size=128)":
              "split_cifar100(n_experiences=2, train_per_class=3, test_per_class=2, img_size=32, classes=list(range(4)))",
              "img_size=128, pretrained=True": "img_size=32, pretrained=True", "train_epochs=3": "train_epochs=1",
              "loggers=[InteractiveLogger()]": "loggers=[]"}
    for old, new in shrink.items():
        assert old in src, old
        src = src.replace(old, new)
    ns: dict = {}
    exec(compile(src, "README.md", "exec"), ns)
    return ns


def test_readme_adapters_block_round_trips_the_dropin_model(tmp_path):
    """The adapters block, run after the (shrunk) drop-in example: saved, reloaded into a fresh base, merged and
    exported, it gives the drop-in model's exported state tensor for tensor."""
    import torch

    ns = _run_dropin()
    src = _blocks("python")[1].replace('"adapters/"', repr(str(tmp_path / "adapters")))
    before = ns["vit"].state_dict()
    exec(compile(src, "README.md", "exec"), ns)
    assert (tmp_path / "adapters" / "adapter_config.json").is_file()
    after = ns["vit"].state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        torch.testing.assert_close(after[key], value, rtol=0, atol=1e-6, msg=key)


def test_readme_fits_on_a_screen_and_docs_point_inside_the_repository():
    """README.md under 200 lines; no README or docs page names a path outside the checkout (``../shared``) or an
    issue tracker readers cannot see; every relative link of them names a file or folder that exists."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert len((ROOT / "README.md").read_text().splitlines()) < 200
    assert (ROOT / "docs" / "README.md").is_file()
    for page in pages:
        text = page.read_text()
        assert "../shared" not in text and "REFERENCE.md" not in text, page
        assert not re.search(r"\(issue \d+|issue \d+\)|issues? #?\d+\b", text, flags=re.I), page
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"
    toc = (ROOT / "docs" / "README.md").read_text()
    for page in pages[1:]:  # every docs page is in the table of contents
        assert page.name == "README.md" or f"]({page.name})" in toc, page.name


def test_headline_tables_are_the_committed_runs_tables():
    """docs/results.md and results/README.md lead with tables generated from the committed runs: the headline from the
    summary.csv of each run folder of headline.RUNS (one folder: its table.md), the class-order table (once
    committed) from the class-order report's table.md, which tests/test_orders.py regenerates from its runs."""
    from benchmarks import headline
    from benchmarks.machine_brief import brief, present_reports

    assert headline.main(["--check"]) == []
    table = headline.table()
    if len(headline.RUNS) == 1:
        assert table == (ROOT / headline._path(headline.RUNS[0]) / "table.md").read_text()
    for spec in headline.RUNS:  # every method row of every folder is in the table, under the folder's name
        path = ROOT / headline._path(spec)
        methods = pd.read_csv(path / "summary.csv")["method"]
        for method in methods if isinstance(spec, str) else spec[1]:
            run = "" if len(headline.RUNS) == 1 else f" `{path.name}` |"
            assert f"| {method} |{run}" in table, (spec, method)
    orders = headline.class_order_table()
    texts = [(ROOT / name).read_text() for name in headline.FILES]
    if orders is not None:
        assert any(orders in text for text in texts)
    else:
        assert not any(headline.CLASS_ORDERS.end in text for text in texts)
    fair = headline.class_order_table(orders=headline.FAIR)  # issue 30's table leads where it is shown
    if fair is not None:
        assert any(fair in text for text in texts)
        for text in texts:
            if fair in text and orders is not None and orders in text:
                assert text.index(fair) < text.index(orders)
        readme = (ROOT / "README.md").read_text()  # the README's results open with the machines' brief form
        shown = brief(present_reports(ROOT, (headline.FAIR, *headline.FAIR_OTHERS)), headline.DRIFT)
        assert f"`{headline.DRIFT}/table.md`" in shown  # the measurement behind "never pooled"
        results = readme.index("## Results")
        assert results < readme.index(shown) < readme.index("\n## ", results + 1)
        for other in headline.FAIR_OTHERS:  # each other machine's whole table is shown too
            assert any(headline.class_order_table(orders=other) in text for text in texts), other
    else:
        assert not any(headline.FAIR_TABLE.end in text for text in texts)


def test_results_readme_gives_every_reports_recorded_command():
    """Each class-order and machine-drift report under results/ is rebuilt by the command results/README.md gives for
    it: its sources.json records the call that chose its folders (once ``--again REPORT_DIR RUN_DIR ...`` grew it,
    the call with every folder), and that exact line must be in the README, so a grown report cannot leave a stale
    command behind."""
    from benchmarks import machine_drift, orders

    text = (ROOT / "results" / "README.md").read_text()
    reports = sorted(p.parent for p in (ROOT / "results").rglob(orders.SOURCES)
                     if orders.is_report(p.parent) or machine_drift.is_report(p.parent))
    assert reports, "no class-order or machine-drift report found under results/"
    stale = [str(r.relative_to(ROOT)) for r in reports
             if json.loads((r / orders.SOURCES).read_text())["command"] not in text]
    assert not stale, (f"results/README.md does not give the recorded command of {', '.join(stale)}; copy the "
                       "'command' of each one's sources.json into its section")
