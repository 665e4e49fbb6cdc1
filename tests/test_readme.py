"""The README's two opening commands are exactly what CI runs, and its example uses the real API."""

import ast
import re
from pathlib import Path

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
