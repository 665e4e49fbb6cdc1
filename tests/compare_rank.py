"""Run by tests/test_compare_torchrun.py as ``torchrun ... tests/compare_rank.py LOGS WATCHED COMPARE_FLAGS...``.

``python -m benchmarks.compare COMPARE_FLAGS`` on one rank, with every file system write this rank makes under
WATCHED (an open for writing, ``os.open``, a rename, a new folder) listed in ``LOGS/writes-rank<r>.txt``. A Python
audit hook sees them whoever makes them (pandas, matplotlib, Avalanche's loggers, the atomic writer's temporary
files), so the test can tell which rank wrote the run folder. With ``POISON=METHOD:EXPERIENCE:RANK`` in the
environment, that rank's outputs turn NaN at the second step of that experience of that method (a loss that is not
finite on one rank only).
"""

from __future__ import annotations

import os
import runpy
import sys

logs, watched = sys.argv[1], os.path.realpath(sys.argv[2])
record = open(os.path.join(logs, f"writes-rank{os.environ['RANK']}.txt"), "w", buffering=1)  # noqa: SIM115


def _under(path) -> str | None:
    if isinstance(path, int):  # an open file descriptor
        return None
    path = os.path.realpath(os.fsdecode(path))
    return path if path == watched or path.startswith(watched + os.sep) else None


def _hook(event: str, args: tuple) -> None:
    if event == "open":
        path, mode, flags = args
        writes = any(c in mode for c in "wax+") if isinstance(mode, str) else \
            bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        where = _under(path) if writes and path is not None else None
    elif event in ("os.rename", "os.mkdir", "os.remove"):
        where = _under(args[-3] if event == "os.rename" else args[0])
    else:
        return
    if where is not None:
        record.write(f"{event} {where}\n")


def _poison(method: str, experience: str, rank: str) -> None:
    from avalanche.core import SupervisedPlugin

    from benchmarks import runner

    class Poison(SupervisedPlugin, supports_distributed=True):
        def after_forward(self, strategy, **kwargs):
            if (os.environ["RANK"] == rank and strategy.clock.train_exp_counter == int(experience)
                    and strategy.clock.train_epoch_iterations == 1):
                strategy.mb_output = strategy.mb_output * float("nan")

    real = runner.run

    def run(name, *args, plugins=(), **kwargs):
        return real(name, *args, plugins=[*plugins, Poison()] if name == method else plugins, **kwargs)

    runner.run = run


if os.environ.get("POISON"):
    _poison(*os.environ["POISON"].split(":"))
sys.addaudithook(_hook)
sys.argv = ["benchmarks.compare", *sys.argv[3:]]
runpy.run_module("benchmarks.compare", run_name="__main__")
