"""benchmarks.commands: the kept --help of every command is its parser's, is printed without importing torch, and
pyproject's console scripts are the commands."""

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import commands

ROOT = Path(__file__).resolve().parent.parent


def test_every_kept_help_is_what_its_parser_prints():
    assert commands.main(["--check"]) == []


def test_a_stale_kept_help_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(commands, "HELP_DIR", tmp_path)  # no kept files there: every command is stale
    with pytest.raises(SystemExit, match="kept --help of sdlora-compare, sdlora-findings"):
        commands.main(["--check"])
    assert list(tmp_path.iterdir()) == []  # --check writes nothing


@pytest.mark.parametrize("module", ["benchmarks.compare", "benchmarks.study", "benchmarks.findings"])
def test_help_prints_the_kept_text_without_importing_torch(module):
    code = ("import runpy, sys\nsys.argv = ['x', '--help']\n"
            f"try:\n    runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n"
            "except SystemExit as exc:\n    assert exc.code == 0, exc.code\n"
            "print('TORCH', 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.endswith("TORCH False\n")
    assert out.stdout.removesuffix("TORCH False\n") == commands.BY_MODULE[module].help_file.read_text()


def test_console_script_help_and_errors(capsys):
    assert commands.run("sdlora-compare", ["--help"]) == 0
    assert capsys.readouterr().out == commands.BY_SCRIPT["sdlora-compare"].help_file.read_text()
    assert commands.run("sdlora-compare", ["--methods", "nope"]) == 1  # a bad flag: compare's one-line error
    assert "error: unknown method(s) ['nope']" in capsys.readouterr().err


def test_pyproject_console_scripts_are_the_commands(monkeypatch):
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    scripts = project["project"]["scripts"]
    assert set(scripts) == set(commands.BY_SCRIPT)
    called = []
    monkeypatch.setattr(commands, "run", lambda script, argv=None: called.append(script) or 0)
    for script, target in scripts.items():
        module, name = target.split(":")
        assert module == "benchmarks.commands" and getattr(commands, name)() == 0 and called[-1] == script
    assert "benchmarks*" in project["tool"]["setuptools"]["packages"]["find"]["include"]
    assert project["tool"]["setuptools"]["package-data"]["benchmarks"] == ["help/*.txt"]
