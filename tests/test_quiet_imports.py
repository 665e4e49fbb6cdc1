"""A command's first line is its own: importing the harness prints no warning (Avalanche's "no QP solver found",
Avalanche's positional-arguments notice about our strategies) before the command says anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_importing_the_commands_prints_nothing() -> None:
    code = ("import benchmarks.compare, benchmarks.methods as m, benchmarks.tune, benchmarks.orders; "
            "[m.get_method(n) for n in m.method_names()]")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and done.stdout == ""
