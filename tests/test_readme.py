"""The README's two opening commands are exactly what CI runs, and its example uses the real API."""

import ast
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
    plain = timm.create_model("vit_tiny_patch16_224", num_classes=4, img_size=32)
    plain.load_state_dict(ns["state"])  # strict: the export is a plain timm state dict


def test_headline_tables_are_the_committed_runs_tables():
    """README.md and results/README.md lead with tables generated from the committed runs: the headline from the
    summary.csv of each run folder of headline.RUNS (one folder: its table.md), the class-order table (once
    committed) from the class-order report's table.md, which tests/test_orders.py regenerates from its runs."""
    from benchmarks import headline

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
