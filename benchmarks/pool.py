"""The process pool of ``benchmarks.compare --jobs N``: (method, seed) runs in spawned processes, one torch thread each.

Kept apart from the comparison command because it is its own concern: spawning, a parent-death watch in every
worker, and folding the workers' parts into ``per_task.csv`` while they run (the parent is its only writer).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

import torch

from avalanche_sdlora.atomic import guard_writes

from . import inputs, runner
from .config import RunConfig
from .run_folder import RunFolder


def run_parallel(cfg: RunConfig, jobs_todo: list[tuple[str, int]], folder: RunFolder, jobs: int, quiet: bool,
                 report_failure: Callable[[tuple[str, int], BaseException], None]) -> bool:
    """(method, seed) runs in ``jobs`` spawned processes; the parent folds their parts into the reports."""
    reported = False
    payload = [{"method": m, "seed": s, "config": cfg.to_json(), "folder": str(folder.path)} for m, s in jobs_todo]
    with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=exit_with_parent) as executor:
        futures = {executor.submit(_worker, job): (job["method"], job["seed"]) for job in payload}
        pending, seen = set(futures), folder.parts_signature()
        while pending:
            finished, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
            # Workers write their parts per experience; the parent (the only writer of per_task.csv) folds them
            # in as they change, so per_task.csv is as current as the parts, as with --jobs 1.
            now = folder.parts_signature()
            if now != seen and now:
                folder.write_per_task()
                seen = now
            for fut in finished:
                try:
                    fut.result()  # a worker's error is re-raised here, as soon as that worker ends
                    if not quiet:
                        print(f"finished {futures[fut]} ({len(futures)} runs in this call)", flush=True)
                except Exception as err:  # noqa: BLE001
                    report_failure(futures[fut], err)
                if folder.has_parts():  # after a failure too: the failed run's finished rows are reported
                    folder.write_reports()
                    reported = True
    return reported


def _worker(job: dict) -> str:
    """One (method, seed) in a child process; its rows go to ``parts/<method>-seed<k>.csv`` as they come."""
    torch.set_num_threads(1)
    cfg = RunConfig.from_json(job["config"])
    folder = RunFolder(job["folder"])
    # A worker keeps the benchmark of the last class order it ran (a fixed-order run: one per worker). Workers never
    # run under torchrun (compare.check_launch refuses --jobs there), so no rank ordering is needed to build it.
    benchmark = inputs.benchmark_for(cfg, job["seed"])
    try:
        runner.run(job["method"], job["seed"], cfg, benchmark, folder, quiet=True, resume=True)
    except ParentGone:
        os._exit(1)  # the write was refused and its temporary file removed; nobody waits for this worker
    return str(folder.part(job["method"], job["seed"]))


class ParentGone(SystemExit):
    """The ``compare`` that started this worker has died: the worker writes nothing more."""


def _refuse_orphan_writes(parent: int) -> None:
    def check() -> None:
        if os.getppid() != parent:
            raise ParentGone(1)

    guard_writes(check)


def exit_with_parent(poll_seconds: float = 0.5) -> None:
    """Stop this worker when the parent dies (a killed ``compare`` must not leave workers writing its parts): every
    write first checks that the parent is alive, and a watch ends the worker within ``poll_seconds`` while it trains.
    Run once per worker process (the pool's initializer)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
    _refuse_orphan_writes(parent)
