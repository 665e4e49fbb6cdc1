"""Side-by-side comparison: ``python -m benchmarks.compare [--protocol cifar100-tiny128] [--methods ...] [--seeds ...]``.

Every method sees the same Avalanche benchmark, backbone, epochs, batch size and evaluation: after each training
experience it is evaluated on the test experiences seen so far. Per-experience rows are on disk (``parts/``,
``per_task.csv``, written atomically) as soon as the experience ends; a finished run folder is never overwritten.
Runs go to ``runs/<protocol>/<run-id>`` (an ignored folder) unless ``--out`` says otherwise; ``results/`` holds
only the runs its README names.

Python API: ``run(cfg, methods, seeds, folder)`` runs a comparison into a :class:`~benchmarks.run_folder.RunFolder`;
``benchmarks.runner.run`` runs one (method, seed).

Under ``torchrun --nproc_per_node N -m benchmarks.compare ...`` every (method, seed) runs on all N ranks, one after
another, and rank 0 alone writes (:mod:`benchmarks.distributed`). On a GPU the defaults suit the device: DataLoader
workers (``--workers``), pinned host memory for the copies (Avalanche's default on CUDA) and the image cache
(:func:`benchmarks.inputs.image_cache`); ``--train-amp bf16`` trains under bf16 autocast.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import traceback
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from .commands import print_kept_help

if __name__ == "__main__":  # --help before importing torch, timm and Avalanche (benchmarks/commands.py says why)
    print_kept_help("benchmarks.compare", sys.argv[1:])

import torch  # noqa: E402 - after the kept help

from . import distributed, inputs, pool, runner, tuned  # noqa: E402
from .config import (ORDER_SEEDS, RunConfig, add_run_flags, check_seeds, config_from_flags,  # noqa: E402
                     default_seeds)
from .identity import identity_changes, run_identity, saved_identity  # noqa: E402
from .methods import check_method_options, get_method, method_names  # noqa: E402
from .resume import resumed_flags  # noqa: E402
from .run_folder import RunFolder, check_out, check_run_id  # noqa: E402

DEFAULT_METHODS = ("sdlora",)
DEFAULT_OUT = Path("runs")
# --smoke: a run that checks an install in about a minute on one CPU core (measured 38 s here, imports included):
# SD-LoRA beside the one-pair LoRA and the frozen backbone's prototypes, 10 classes in 2 experiences at 64 px, 1 epoch.
# Each entry is a flag's default under --smoke; a flag given beside it wins.
SMOKE = {"methods": ["sdlora", "seq-lora", "ncm"], "classes": 10, "n_experiences": 2, "train_per_class": 30,
         "test_per_class": 10, "img_size": 64, "epochs": 1, "batch_size": 16}


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line ``error: ...`` (no usage block), like every other error of the CLIs."""

    def error(self, message: str):
        raise SystemExit(f"error: {message} (see --help)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags; ``args.config`` is the RunConfig they ask for (every setting checked, errors naming the flag)."""
    p = Parser(prog="python -m benchmarks.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", help=f"methods to run, or 'all' ({', '.join(method_names())}); default: "
                   f"{' '.join(DEFAULT_METHODS)}, with --resume the run's own")
    p.add_argument("--seeds", nargs="+", type=int, help="seeds of the (method, seed) runs (default: 0; with "
                   f"--class-order seed: {' '.join(map(str, ORDER_SEEDS))}, each its own class order; with --resume "
                   "the run's own)")
    add_run_flags(p)
    p.add_argument("--out", default=str(DEFAULT_OUT), help="results root; the run goes to <out>/<protocol>/<run-id> "
                   "(default: runs/, ignored by git; pass --out results only for a run results/README.md names)")
    p.add_argument("--run-id", help="run folder name (default: UTC timestamp)")
    p.add_argument("--report-only", metavar="RUN_DIR",
                   help="rebuild per_task.csv, summary.csv, table.md and plots of a run from its parts/ and exit")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an interrupted run with the same settings (a run flag left out takes the run's "
                        "value; one given must equal it): finished (method, seed) runs are kept, the rest continue "
                        "from their last checkpoint or rerun")
    p.add_argument("--tuned", metavar="CHOSEN_JSON",
                   help="train each method with the recipe benchmarks.tune chose for it (its chosen.json): the "
                        "optimizer, lr and recipe options become --method-option entries, recorded in config.json")
    p.add_argument("--smoke", action="store_true",
                   help="check an install in about a minute: " + ", ".join(
                       f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, list) else v}" for k, v in SMOKE.items())
                   + " (flags given beside it win; the run folder is named smoke-<UTC time>)")
    p.add_argument("--quiet", action="store_true", help="no InteractiveLogger progress")
    p.add_argument("--verbose", action="store_true", help="print the traceback of an error, not only its message")
    p.add_argument("--jobs", type=int, default=1,
                   help="(method, seed) runs in parallel processes, one torch thread each (2 on a 2-core CPU); not "
                        "under torchrun, whose processes run each (method, seed) together")
    args = p.parse_args(argv)
    if args.smoke:
        if args.resume or args.report_only:
            p.error("--smoke starts a new run; drop it with --resume or --report-only (the run's settings apply)")
        for dest, value in SMOKE.items():
            if getattr(args, dest) is None:
                setattr(args, dest, value)
    # A resume continues the run's own (method, seed) runs unless told otherwise: the command's defaults would
    # silently train another method into the folder.
    resumed = RunFolder(args.resume) if args.resume else None
    planned = resumed.planned_runs() if resumed else ([], [])
    if args.methods is None:
        args.methods = planned[0] or list(DEFAULT_METHODS)
    if args.seeds is None and planned[1]:
        args.seeds = planned[1]
    if args.methods == ["all"]:
        args.methods = list(method_names())
    unknown = [m for m in args.methods if m not in method_names()]
    if unknown:
        p.error(f"unknown method(s) {unknown}; choose from {', '.join(method_names())} or 'all'")
    if args.jobs <= 0:
        p.error(f"--jobs must be a positive integer, got {args.jobs}")
    if resumed and resumed.has_config():
        # Flags left out take the run's values (a resumed run keeps its settings); given ones are checked against it.
        resumed_flags(args, resumed.read_config())
    try:
        args.config = config_from_flags(args)
        args.tuned_record = None
        if args.tuned:
            args.config, args.tuned_record = tuned.apply(args.config, args.methods, args.tuned)
        args.seeds = default_seeds(args.config) if args.seeds is None else args.seeds
        check_seeds(args.seeds)
        check_method_options(args.config.method_options)
        check_launch(args.config, args.methods, args.jobs)
        if args.run_id is not None:
            check_run_id(args.run_id)
        if not (args.resume or args.report_only):
            check_out(args.out)
    except ValueError as exc:
        p.error(str(exc))
    if args.config.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.config.device}: torch sees no CUDA device on this machine; pass --device cpu")
    return args


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    command = " ".join(["python -m benchmarks.compare"] + (argv if argv is not None else sys.argv[1:]))
    if args.report_only:
        return report_only(RunFolder(args.report_only), command, args.quiet).path
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = args.config
    run_id = args.run_id or ("smoke-" if args.smoke else "") + datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    folder = RunFolder(args.resume) if args.resume else RunFolder.new(args.out, cfg.protocol, run_id)
    return run(cfg, args.methods, args.seeds, folder, jobs=args.jobs, quiet=args.quiet, resume=bool(args.resume),
               command=command, tuned=args.tuned_record).path


def report_only(folder: RunFolder, command: str, quiet: bool = False) -> RunFolder:
    """Rebuild a run's reports from its parts (the run's numbers are the parts'; nothing is trained)."""
    if not distributed.is_main():  # under torchrun: rank 0's job alone
        return folder
    if not (folder.path / "parts").is_dir():
        raise SystemExit(f"error: --report-only '{folder}' has no parts/ folder; pass a run folder of "
                         "benchmarks.compare (runs/<protocol>/<run-id>)")
    with folder.lock(command):
        folder.clean(quiet)
        folder.check()
        folder.write_reports()
    print(folder.report_path("table.md").read_text())
    return folder


def check_launch(cfg: RunConfig, methods: Sequence[str], jobs: int) -> None:
    """Refuse what this launch cannot run (``ValueError`` naming the flag): under torchrun several jobs, an uneven
    batch, a fixed GPU or a single-process method. (``--train-amp bf16`` runs every method: the SD-LoRA strategies
    through their ``autocast_dtype``, the others through :class:`benchmarks.train_amp.TrainingAutocastPlugin`.)"""
    distributed.check_launch(cfg, jobs)
    distributed.check_methods(methods)


def make_benchmark(cfg: RunConfig, seed: int | None = None):
    """The benchmark of the run with ``seed`` (its class order; :func:`inputs.benchmark_for` keeps one per process),
    with the image cache the device calls for (:func:`inputs.image_cache`); under torchrun rank 0 builds it first (and
    fills the cache), then the others build theirs (mapping the cache rank 0 wrote)."""
    with distributed.main_first():
        return inputs.benchmark_for(cfg, seed)


def run(cfg: RunConfig, methods: Sequence[str], seeds: Sequence[int], folder: RunFolder | str | Path, *,
        jobs: int = 1, quiet: bool = False, resume: bool = False, command: str | None = None,
        tuned: dict | None = None) -> RunFolder:
    """Run every (method, seed) of a comparison into ``folder`` (``resume``: continue the run it holds).

    The folder is locked for the whole call; a resume with other settings is refused naming each one (see
    :mod:`benchmarks.identity`). One (method, seed) failing does not stop the others; the call then ends with an
    error naming the failures and the run stays unfinished (no DONE). Under torchrun (the process group is joined
    here if the caller has not) every rank calls this; rank 0 alone locks and writes, and a failure ends the call.
    """
    folder = folder if isinstance(folder, RunFolder) else RunFolder(folder)
    command = command or f"benchmarks.compare.run({list(methods)}, seeds={list(seeds)})"
    for m in methods:
        get_method(m)
    check_method_options(cfg.method_options)
    try:
        check_launch(cfg, methods, jobs)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    cfg = inputs.resolved(cfg)
    if resume and not folder.has_config():
        raise SystemExit(f"error: --resume '{folder}' is not a run folder of benchmarks.compare (no config.json)")
    distributed.start(cfg, seed=list(seeds)[0] if len(seeds) else 0)
    threads = 1 if jobs > 1 else torch.get_num_threads()  # per (method, seed): workers run on one thread
    identity = run_identity(cfg, threads)
    created: list[Path] = []  # the folders this call made, removed again if it fails before writing into them
    try:
        with contextlib.ExitStack() as held:
            _open_and_run(cfg, list(methods), list(seeds), folder, jobs, quiet, resume, command, identity, threads,
                          held, created, tuned)
    except BaseException:
        for path in created:  # deepest first; only while empty (nothing was written)
            with contextlib.suppress(OSError):
                path.rmdir()
        raise
    return folder


def _open_and_run(cfg: RunConfig, methods: list[str], seeds: list[int], folder: RunFolder, jobs: int, quiet: bool,
                  resume: bool, command: str, identity: dict, threads: int, held: contextlib.ExitStack,
                  created: list[Path], tuned: dict | None = None) -> None:
    """Lock the folder (a new run: create it first), build the benchmark, then run; the lock comes before the build,
    so of two commands on one folder the later one is refused at once, not after minutes of building."""

    def open_folder() -> dict | None:  # rank 0's: the lock, the identity check, or the refusal of a used folder
        if not resume:
            inputs.check_weights(cfg)  # before the folder exists: a bad --checkpoint leaves no failed run behind
            take_folder()
            return None
        held.enter_context(folder.lock(command))
        folder.clean(quiet)
        folder.check()
        saved = folder.read_config()
        changed, unrecorded = identity_changes(saved_identity(saved), identity)
        if changed:
            raise SystemExit(f"error: '{folder}' was run with other settings; a resumed run keeps its settings "
                             "(a flag left out takes the run's value), so drop these flags or pass the run's "
                             "values, or start a new run (another --run-id, without --resume) for these: "
                             + "; ".join(changed))
        if unrecorded:
            print(f"note: '{folder}' was written before compare recorded {', '.join(unrecorded)}; this call's "
                  "values are recorded as the run's", flush=True)
        inputs.check_weights(cfg)  # after the identity check: other weights are refused as another setting first
        return saved

    def take_folder() -> None:  # a new run's folder: created, locked, refused if another writer filled it first
        folder.refuse_existing()
        created.extend(p for p in (folder.path, *folder.path.parents) if not p.exists())  # deepest first
        try:
            folder.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SystemExit(f"error: cannot create the run folder '{folder.path}' ({exc.strerror or exc}); pass "
                             "--out a folder this user can write, e.g. runs") from None
        held.enter_context(folder.lock(command))
        folder.refuse_existing()  # again, locked: another writer may have filled it since the first check
        folder.clean(quiet)

    saved = distributed.on_main(open_folder)
    # Built before anything is written (a bad npz fails here: the new folder, empty, is removed again); a
    # --class-order seed run builds one per seed.
    benchmark = make_benchmark(cfg, seeds[0] if seeds else None)
    record = inputs.benchmark_record(benchmark)
    del benchmark  # kept by inputs.benchmark_for for the runs of its order
    _run_locked(cfg, methods, seeds, folder, jobs, quiet, command, identity, threads, saved, record, tuned)


def _run_locked(cfg: RunConfig, methods: list[str], seeds: list[int], folder: RunFolder, jobs: int, quiet: bool,
                command: str, identity: dict, threads: int, saved: dict | None, record: dict | None,
                tuned: dict | None = None) -> None:
    """The run loop, with the run folder locked (under torchrun: every rank trains, rank 0 alone writes)."""
    main = distributed.is_main()
    if tuned is None and saved is not None:
        # a resume applies the recipes its config records as method options (the run's identity): where they came
        # from --tuned, the record and the rows' "tuned" source stay (a tables' recipe column reads them)
        tuned = saved.get("tuned")
    config = {**cfg.to_json(), "methods": methods, "seeds": seeds,
              "recipes": _recipes(cfg, methods, folder, tuned), "device_name": identity["device_name"],
              "torch": torch.__version__, "identity": identity, "command": command,
              "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "world_size": identity["world_size"], "image_cache": inputs.image_cache(cfg)}
    if tuned is not None:  # issue 30: the tuning the recipes came from
        config["tuned"] = tuned
    if record is not None:  # issue 18: a paper protocol's split, layout, folder, order, sizes (the first seed's)
        config["benchmark"] = record
    if not main:
        config = {}  # nothing to record: rank 0 writes the folder
    elif saved is not None:
        # Extending a finished run (more seeds or methods) keeps its finished parts; it is unfinished until this ends.
        folder.mark_unfinished()
        # This call is on record from its start (wall_seconds null until it ends): one killed at a session's end
        # computed rows the folder keeps, so its command and machine must not vanish with it.
        folder.write_config({**saved, "calls": RunFolder.calls_of(saved) + [
            RunFolder.call_record({**config, "threads": threads})]})
    else:
        folder.write_config({**config, "calls": [RunFolder.call_record({**config, "threads": threads})]})

    def on_row(row: dict) -> None:
        if not main:
            return
        folder.write_per_task()  # every part, not only this call's
        if not quiet:
            print(f"[{row['method']} seed {row['seed']}] experience {row['experience']}: "
                  f"seen-class accuracy {100 * row['acc_seen']:.2f}% ({row['train_seconds']:.0f}s train)", flush=True)

    t_start = time.perf_counter()
    # Seed-major order: a complete one-seed comparison of every method exists as early as possible.
    jobs_todo = [(m, s) for s in seeds for m in methods]
    if saved is not None:
        done = {(m, s) for m, s in jobs_todo if folder.part_complete(m, s, cfg.experiences_run)}
        jobs_todo = [j for j in jobs_todo if j not in done]
        if main:
            print(f"resuming {folder} ({' '.join(methods)}; seeds {' '.join(map(str, seeds))}): {len(done)} finished "
                  f"(method, seed) runs kept, {len(jobs_todo)} to run",
                  flush=True)
    # One (method, seed) failing (e.g. a diverging baseline) must not cost the others: its error is printed at
    # once, the other runs go on, and the run stays unfinished (no DONE) so ``--resume`` retries only the failures.
    failed: dict[tuple[str, int], str] = {}

    launched = distributed.launched()

    def report_failure(job: tuple[str, int], err: BaseException) -> None:
        failed[job] = f"{type(err).__name__}: {' '.join(str(err).split())}"
        where, then = (f"rank {distributed.rank()}: ", "this call stops (under torchrun a failure ends the call)") \
            if launched else ("", "the other runs go on")
        print(f"error: {where}{job[0]} seed {job[1]} failed, {then}: {failed[job]}", file=sys.stderr, flush=True)

    reported = False
    if jobs == 1:
        for method, seed in jobs_todo:
            try:
                runner.run(method, seed, cfg, make_benchmark(cfg, seed), folder, on_row=on_row, quiet=quiet,
                           resume=saved is not None)
            except Exception as err:  # noqa: BLE001 - reported, and the run is left unfinished
                report_failure((method, seed), err)
            if main and folder.has_parts():
                folder.write_reports()
                reported = True
            if failed and launched:
                # The other ranks may still be inside this run's collectives: entering the next run's would mismatch
                # them. This rank leaves; torchrun stops the others (see benchmarks.distributed).
                break
    elif jobs_todo:
        inputs.forget_benchmarks()  # the workers build their own
        reported = pool.run_parallel(cfg, jobs_todo, folder, jobs, quiet, report_failure)
    if not main:
        if failed:
            raise SystemExit(f"error: rank {distributed.rank()}: {len(failed)} run(s) failed (rank 0 records them)")
        return
    if folder.has_parts() and not reported:  # e.g. a resume with nothing left to run, after a kill mid-report
        folder.write_reports()
    config["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    # Every call that wrote into this folder, oldest first (a resumed run's top-level fields describe the last one).
    config["calls"] = (RunFolder.calls_of(saved) if saved is not None else []) + [
        RunFolder.call_record({**config, "threads": threads})]
    config["failed"] = RunFolder.failures_after(saved, {f"{m}-seed{s}" for m, s in jobs_todo},
                                                {f"{m}-seed{s}": e for (m, s), e in failed.items()})
    folder.write_config(config)
    if failed:
        not_run = [f"{m}-seed{s}" for m, s in jobs_todo if (m, s) not in failed and not
                   folder.part_complete(m, s, cfg.experiences_run)] if launched else []
        raise SystemExit(_failure_message(folder, config["failed"], failed, len(jobs_todo), not_run))
    if config["failed"]:
        print(f"note: {folder} stays unfinished: earlier failures not retried here: {sorted(config['failed'])}; "
              f"retry them with --resume {folder} --methods ... --seeds ...", flush=True)
    else:
        folder.mark_done()
    print(f"results in {folder}\n" + folder.report_path("table.md").read_text())


def _recipes(cfg: RunConfig, methods: list[str], folder: RunFolder, tuned: dict | None = None) -> dict[str, dict]:
    """The optimizer and lr every method of the folder trains with (from its recipe trait; "tuned" where they came
    from ``--tuned``)."""
    present = {m for m, _ in folder.part_names()}
    names = [m for m in method_names() if m in set(methods) | present]
    out = {m: vars(get_method(m).recipe(cfg)) for m in names}
    for m in (tuned or {}).get("methods", {}):
        if m in out and out[m]["optimizer"] is not None:
            out[m]["source"] = "tuned"
    return out


def _failure_message(folder: RunFolder, on_record: dict, failed: dict, n_jobs: int,
                     not_run: Sequence[str] = ()) -> str:
    kept = [f"{m}-seed{s}" for m, s in failed if folder.part(m, s).exists()]
    where = (f"the rows they finished are kept in {folder.path / 'parts'}" if kept else
             "none of them finished an experience, so no rows were kept")
    lines = "\n".join(f"  {k}: {e}" for k, e in on_record.items())
    if not_run:
        lines += f"\nnot run (under torchrun a failure ends the call): {', '.join(not_run)}"
    return (f"error: {len(failed)} of {n_jobs} runs failed ({where}):\n{lines}\n"
            f"to retry them with this run's settings (after a fix outside the settings: the code, the data, disk "
            f"space), rerun with --resume {folder}; a fix that changes a setting (e.g. a lower --lr for a NaN loss) is "
            "refused by --resume: start a new run with another --run-id instead")


def cli(argv: list[str] | None = None, main=main) -> int:
    """``main`` for a shell: any error is one line ``error: ...`` and exit status 1 (``--verbose``: the traceback too)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        main(argv)
        return 0
    except SystemExit as exc:
        if isinstance(exc.code, str):
            # Under torchrun a refusal is the same on every rank (the same flags, or rank 0's decision): rank 0 says it.
            if distributed.is_main():
                print(exc.code, file=sys.stderr)
            return 1
        return exc.code or 0
    except KeyboardInterrupt:
        print("error: interrupted; finished experiences are on disk: continue with --resume RUN_DIR", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a library error (bad data, weights, checkpoint) as one line
        if "--verbose" in argv:
            traceback.print_exc()
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        where = f"rank {distributed.rank()}: " if distributed.launched() else ""
        print(f"error: {where}{' '.join(str(message).split())}" + ("" if "--verbose" in argv else
                                                                    " (--verbose prints the traceback)"),
              file=sys.stderr)
        return 1
    finally:
        distributed.stop()


if __name__ == "__main__":
    sys.exit(cli())
