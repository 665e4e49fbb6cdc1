"""The harness's commands by name: console scripts that run from any folder, and ``--help`` before the heavy imports.

``sdlora-compare`` is ``python -m benchmarks.compare`` (and likewise each entry of ``COMMANDS``). Building a
command's parser needs torch, timm and Avalanche (its flags come from ``RunConfig`` and the method registry), which
take 10-30 s to import; so each command's ``--help`` text is kept in ``benchmarks/help/<script>.txt``, printed
without them, and ``python -m benchmarks.commands`` regenerates the files from the parsers themselves
(``tests/test_commands.py`` fails when one is stale). This module imports nothing beyond the standard library.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

HELP_DIR = Path(__file__).resolve().parent / "help"
HELP_COLUMNS = "100"  # argparse wraps at $COLUMNS: the kept text is rendered at this width
HELP_FLAGS = ("-h", "--help")


@dataclass(frozen=True)
class Command:
    """One command: its console script, the module ``python -m`` runs, and that module's ``main(argv)``."""

    script: str
    module: str
    main_module: str  # where main(argv) lives (a package's ``command`` module, or the module itself)

    @property
    def help_file(self) -> Path:
        return HELP_DIR / f"{self.script}.txt"


COMMANDS: tuple[Command, ...] = (
    Command("sdlora-compare", "benchmarks.compare", "benchmarks.compare"),
    Command("sdlora-findings", "benchmarks.findings", "benchmarks.findings.command"),
    Command("sdlora-speed", "benchmarks.speed", "benchmarks.speed.command"),
    Command("sdlora-study", "benchmarks.study", "benchmarks.study"),
    Command("sdlora-orders", "benchmarks.orders", "benchmarks.orders"),
    Command("sdlora-headline", "benchmarks.headline", "benchmarks.headline"),
    Command("sdlora-tune", "benchmarks.tune", "benchmarks.tune"),
    Command("sdlora-migrate", "benchmarks.migrate", "benchmarks.migrate"),
    Command("sdlora-collapse", "benchmarks.collapse", "benchmarks.collapse"),
    Command("sdlora-publish", "benchmarks.publish", "benchmarks.publish"),
    Command("sdlora-predictions", "benchmarks.predictions", "benchmarks.predictions"),
    Command("sdlora-machine-drift", "benchmarks.machine_drift", "benchmarks.machine_drift"),
    Command("sdlora-missing-runs", "benchmarks.missing_runs", "benchmarks.missing_runs"),
)
BY_SCRIPT = {c.script: c for c in COMMANDS}
BY_MODULE = {c.module: c for c in COMMANDS}


def wants_help(argv: Sequence[str]) -> bool:
    """Whether argparse would print the help for these arguments (a help flag anywhere)."""
    return any(a in HELP_FLAGS for a in argv)


def print_kept_help(module: str, argv: Sequence[str]) -> None:
    """Print ``module``'s kept help and exit 0 when ``argv`` asks for it; return otherwise (or when not kept)."""
    command = BY_MODULE.get(module)
    if command is not None and wants_help(argv) and command.help_file.is_file():
        sys.stdout.write(command.help_file.read_text())
        raise SystemExit(0)


def live_help(command: Command) -> str:
    """The help its parser prints now (at ``HELP_COLUMNS``): what the kept file must hold."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_COLUMNS
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            importlib.import_module(command.main_module).main(["--help"])
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old
    return out.getvalue()


def run(script: str, argv: Sequence[str] | None = None) -> int:
    """Run a command as its console script does: kept help without imports, else the module's main under
    ``benchmarks.compare.cli`` (errors as one line)."""
    command = BY_SCRIPT[script]
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        print_kept_help(command.module, argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    compare = importlib.import_module("benchmarks.compare")
    return compare.cli(argv, main=importlib.import_module(command.main_module).main)


# The console scripts ([project.scripts] of pyproject.toml names these).
def _entry(script: str) -> Callable[[], int]:
    """The console-script function of ``script`` (pyproject.toml's [project.scripts] names one per command)."""

    def entry() -> int:
        return run(script)

    entry.__name__ = script.replace("-", "_")
    return entry


sdlora_compare = _entry("sdlora-compare")
sdlora_findings = _entry("sdlora-findings")
sdlora_speed = _entry("sdlora-speed")
sdlora_study = _entry("sdlora-study")
sdlora_orders = _entry("sdlora-orders")
sdlora_headline = _entry("sdlora-headline")
sdlora_tune = _entry("sdlora-tune")
sdlora_migrate = _entry("sdlora-migrate")
sdlora_collapse = _entry("sdlora-collapse")
sdlora_publish = _entry("sdlora-publish")
sdlora_predictions = _entry("sdlora-predictions")
sdlora_machine_drift = _entry("sdlora-machine-drift")
sdlora_missing_runs = _entry("sdlora-missing-runs")


def main(argv: list[str] | None = None) -> list[str]:
    """Rewrite (``--check``: only compare) every command's kept help; returns the scripts whose file was stale."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.commands", description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a kept help text is stale")
    args = p.parse_args(argv)
    stale = []
    for command in COMMANDS:
        text = live_help(command)
        if not command.help_file.is_file() or command.help_file.read_text() != text:
            stale.append(command.script)
            if not args.check:  # the project's one way to write a file (the parsers above imported it already)
                HELP_DIR.mkdir(exist_ok=True)
                importlib.import_module("avalanche_sdlora.atomic").write_text(command.help_file, text)
    if args.check and stale:
        raise SystemExit(f"error: the kept --help of {', '.join(stale)} is stale; run python -m benchmarks.commands")
    return stale


if __name__ == "__main__":
    print("\n".join(f"rewrote {s}" for s in main()) or "every kept --help is current")
