"""Side-by-side comparison: ``python -m benchmarks.compare [--protocol cifar100-cpu] [--methods ...] [--seeds ...]``.

Every method sees the same Avalanche benchmark, backbone, epochs, batch size and evaluation: after
each training experience it is evaluated on the test experiences seen so far. Per-experience rows
are on disk (``per_task.csv``, written atomically) as soon as the experience ends; a finished run
directory is never overwritten.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import platform
import random
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from avalanche.evaluation.metrics import accuracy_metrics, bwt_metrics, forgetting_metrics
from avalanche.logging import CSVLogger, InteractiveLogger
from avalanche.training.plugins import EvaluationPlugin

from avalanche_sdlora import SDLoRA, SDLoRAKD, sdlora_vit
from avalanche_sdlora.assets import default_asset
from avalanche_sdlora.checkpoint import (latest_checkpoint, load_checkpoint, restore_strategy_state, save_checkpoint,
                                         strategy_state)
from avalanche_sdlora.data import split_cifar100
from avalanche_sdlora.metrics import AverageAnytimeAccuracy, ParameterCount

from .methods import LORA_BASELINES, METHODS, SDLORA_FAMILY, MethodConfig, build_strategy
from .protocols import PROTOCOLS, Protocol
from .reports import atomic_write_csv, atomic_write_text, markdown_table, plot, summarize

DEFAULT_METHODS = ("sdlora",)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--protocol", default="cifar100-cpu", choices=sorted(PROTOCOLS))
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                   help=f"methods to run, or 'all' ({', '.join(METHODS)})")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--n-experiences", type=int)
    p.add_argument("--class-order-seed", type=int)
    p.add_argument("--train-per-class", type=int, help="training images per class (default: the protocol's)")
    p.add_argument("--test-per-class", type=int, help="test images per class (default: all 100)")
    p.add_argument("--classes", type=int, help="use only the first N classes of the order-free label set (quick runs)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--rank", type=int, default=10)
    p.add_argument("--ewc-lambda", type=float, default=100.0,
                   help="ewc: penalty strength (default 100; 1000 diverges at lr 0.01 on cifar100-cpu)")
    bool_arg = lambda v: v.lower() in ("1", "true", "yes")  # noqa: E731
    p.add_argument("--reset-alphas", type=bool_arg, help="SD-LoRA: reset old magnitudes at a new task (default true)")
    p.add_argument("--alpha-init", type=float, help="SD-LoRA: initial magnitude (default 0.8)")
    p.add_argument("--alpha-lr", type=float, help="SD-LoRA: learning rate of the magnitudes (default: --lr)")
    p.add_argument("--normalize-current", type=bool_arg, help="SD-LoRA: the paper's normalised current pair")
    p.add_argument("--direction-norm", choices=["frobenius", "factors"], help="SD-LoRA: how stored directions are normalised")
    p.add_argument("--head-init", choices=["linear", "zeros"],
                   help="SD-LoRA and seq-lora: init of new classifier rows (default linear, nn.Linear's)")
    p.add_argument("--kd-threshold", type=float, help="SD-LoRA-KD: relative residual threshold (default 9e-4)")
    p.add_argument("--img-size", type=int)
    p.add_argument("--model", help="timm model name (default: the protocol's)")
    p.add_argument("--checkpoint", help="local weights file (default: <model>.safetensors in the assets folder)")
    p.add_argument("--data", help="CIFAR-100 npz (default: cifar100.npz in the assets folder)")
    p.add_argument("--eval-amp", type=lambda s: s.lower() in ("1", "true", "yes"), default=None,
                   help="bfloat16 autocast for evaluation (true/false; default: the protocol's)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads (one per process when running two at once)")
    p.add_argument("--workers", type=int, default=0,
                   help="DataLoader worker processes per run for the per-sample conversion and flip (0, the default: "
                        "in the training process, right for a CPU run; a few for a GPU run)")
    p.add_argument("--out", default="results", help="results root; the run goes to <out>/<protocol>/<run-id>")
    p.add_argument("--run-id", help="run folder name (default: UTC timestamp)")
    p.add_argument("--report-only", metavar="RUN_DIR",
                   help="rebuild per_task.csv, summary.csv, table.md and plots of a run from its parts/ and exit")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an interrupted run: finished (method, seed) runs are kept, the rest rerun")
    p.add_argument("--quiet", action="store_true", help="no InteractiveLogger progress")
    p.add_argument("--jobs", type=int, default=1,
                   help="(method, seed) runs in parallel processes, one torch thread each (2 on a 2-core CPU)")
    args = p.parse_args(argv)
    if args.methods == ["all"]:
        args.methods = list(METHODS)
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)} or 'all'")
    for name in ("n_experiences", "train_per_class", "test_per_class", "epochs", "batch_size", "rank", "img_size",
                 "classes", "threads", "jobs"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            p.error(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if args.workers < 0:
        p.error(f"--workers must be 0 or more, got {args.workers}")
    return args


SDLORA_OPTIONS = ("reset_alphas", "alpha_init", "alpha_lr", "normalize_current", "direction_norm", "head_init",
                  "kd_threshold")


def sdlora_options(args: argparse.Namespace) -> dict:
    """SD-LoRA's own options given on the command line (the rest keep the documented defaults)."""
    return {n: getattr(args, n) for n in SDLORA_OPTIONS if getattr(args, n) is not None}


def effective_sdlora_options(args: argparse.Namespace) -> dict:
    """Every SD-LoRA option as it will be used: the command line's, else the library's current default.

    Recorded in ``config.json`` so that a run resumed after a library default changed is refused instead of
    silently mixing two settings in one table.
    """
    defaults = {}
    for fn in (sdlora_vit, SDLoRA.__init__, SDLoRAKD.__init__):
        for name, param in inspect.signature(fn).parameters.items():
            if param.default is not inspect.Parameter.empty:
                defaults[name] = param.default
    given = sdlora_options(args)
    return {n: given.get(n, defaults.get(n)) for n in SDLORA_OPTIONS}


def device_name(device: str) -> str:
    """What the run ran on, for the reports (a study mixes CPU and GPU cells)."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def resolve_checkpoint(proto: Protocol, given: str | None) -> str:
    """The weights file: the one given, else ``<model>.safetensors`` in the assets folder; a clear error if neither."""
    checkpoint = given or default_asset(f"{proto.model}.safetensors")
    if checkpoint is None:
        raise SystemExit(f"error: no weights for '{proto.model}': pass --checkpoint PATH or set $SDLORA_ASSETS")
    return str(checkpoint)


def method_config(proto: Protocol, checkpoint: str, *, device: str, rank: int = 10, num_classes: int = 100,
                  sdlora_kwargs: dict | None = None, ewc_lambda: float = 100.0, num_workers: int = 0) -> MethodConfig:
    """What every method of a run shares, taken from the protocol (one place, so a trace reruns a run exactly)."""
    return MethodConfig(model=proto.model, checkpoint=checkpoint, img_size=proto.img_size, epochs=proto.epochs,
                        batch_size=proto.batch_size, lr=proto.lr, eval_batch_size=proto.eval_batch_size,
                        device=device, rank=rank, num_classes=num_classes, sdlora_kwargs=dict(sdlora_kwargs or {}),
                        ewc_lambda=ewc_lambda, num_workers=num_workers)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def stored_params(method: str, model: torch.nn.Module) -> int:
    """Parameters a method keeps beyond the shared frozen pretrained backbone."""
    if hasattr(model, "stored_adapter_params"):
        extra = sum(p.numel() for p in model.head.parameters())
        if method == "seq-lora" or method in LORA_BASELINES:  # one live LoRA pair
            return extra + sum(a.lora_A.numel() + a.lora_B.numel() for a in model.adapters if a.lora_A is not None)
        return extra + model.stored_adapter_params()
    if method == "ncm":
        means = model[1].class_means
        return 0 if means is None else int(means.numel())
    if method == "l2p":
        return sum(p.numel() for p in model.parameters() if p.requires_grad)
    return sum(p.numel() for p in model.parameters())


def _kd_columns(strategy, experience: int) -> dict:
    """SD-LoRA-KD's decision for this experience (relative residual and whether it absorbed the task)."""
    from avalanche_sdlora.plugins import DistillationPlugin

    for p in strategy.plugins:
        if isinstance(p, DistillationPlugin):
            last = p.history[-1] if p.history and p.history[-1]["task"] == experience else None
            return {"kd_relative_residual": last["relative_residual"] if last else np.nan,
                    "kd_absorbed": bool(last["absorbed"]) if last else False}
    return {}


@torch.no_grad()
def _update_norm(model: torch.nn.Module) -> float:
    """Frobenius norm of the whole accumulated backbone update (drift from the pretrained weights)."""
    adapters = getattr(model, "adapters", None)
    if not adapters:
        return float("nan")
    return float(sum(a.delta_weight().pow(2).sum() for a in adapters) ** 0.5)


def make_evaluator(log_dir: Path, quiet: bool) -> tuple[EvaluationPlugin, ParameterCount]:
    params = ParameterCount()
    loggers = [CSVLogger(str(log_dir))] + ([] if quiet else [InteractiveLogger()])
    ev = EvaluationPlugin(accuracy_metrics(experience=True, stream=True), forgetting_metrics(experience=True, stream=True),
                          bwt_metrics(experience=True, stream=True), AverageAnytimeAccuracy(), params, loggers=loggers)
    return ev, params


def run_method(method: str, seed: int, proto: Protocol, benchmark, cfg: MethodConfig, run_dir: Path, quiet: bool,
               on_row, prior_rows: list[dict] | None = None, plugins: list | None = None) -> None:
    """Train ``method`` experience by experience; ``on_row`` receives each finished experience's metrics.

    SD-LoRA-family models are checkpointed after every experience (safetensors + JSON); with
    ``prior_rows`` from an interrupted run they resume exactly from the last checkpoint.
    """
    seed_everything(seed)
    log_dir = run_dir / "csv" / method / f"seed{seed}"
    evaluator, params = make_evaluator(log_dir, quiet)
    strategy = build_strategy(method, cfg, evaluator, plugins)
    ckpt_dir = run_dir / "checkpoints" / f"{method}-seed{seed}"
    checkpointable = method in SDLORA_FAMILY
    start = 0
    if prior_rows and checkpointable:
        done = {int(r["experience"]) for r in prior_rows}
        contiguous = next((e for e in range(len(done) + 1) if e not in done)) - 1  # rows 0..contiguous exist
        last = latest_checkpoint(ckpt_dir, upto=contiguous)
        if last is not None:
            extra = load_checkpoint(ckpt_dir, last, strategy.model, config={"method": method, "seed": seed})
            restore_strategy_state(strategy, extra)
            for r in sorted(prior_rows, key=lambda r: r["experience"]):
                if r["experience"] <= last:
                    on_row(r)
            start = last + 1
    T = len(benchmark.train_stream)
    amp = contextlib.nullcontext()
    if proto.eval_amp:
        amp = torch.autocast(device_type="cuda" if cfg.device.startswith("cuda") else "cpu", dtype=torch.bfloat16)
    schedule = [(T - 1, benchmark.train_stream)] if method == "joint" else list(enumerate(benchmark.train_stream))
    for i, train_exp in schedule:
        if i < start:
            continue
        t0 = time.perf_counter()
        strategy.train(train_exp, num_workers=cfg.num_workers)
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        with amp:
            res = strategy.eval(benchmark.test_stream[: i + 1], num_workers=cfg.num_workers)
        eval_s = time.perf_counter() - t0
        row = {"method": method, "seed": seed, "experience": i, "n_experiences": T,
               "acc_seen": res["Top1_Acc_Stream/eval_phase/test_stream/Task000"]}
        for j in range(T):
            row[f"acc_exp_{j}"] = res.get(f"Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp{j:03d}", np.nan)
        row.update({"aaa_avalanche": res.get("AAA/eval_phase/test_stream", np.nan),
                    "forgetting_avalanche": res.get("StreamForgetting/eval_phase/test_stream", np.nan),
                    "bwt_avalanche": res.get("StreamBWT/eval_phase/test_stream", np.nan),
                    "trainable_params": params.result(), "stored_params": stored_params(method, strategy.model),
                    "n_alphas": len(strategy.model.magnitudes) if hasattr(strategy.model, "magnitudes") else np.nan,
                    "alphas": " ".join(f"{a:.4f}" for a in strategy.model.magnitudes.alpha.tolist())
                    if hasattr(strategy.model, "magnitudes") else "",
                    "update_norm": _update_norm(strategy.model), **_kd_columns(strategy, i),
                    "train_seconds": train_s, "eval_seconds": eval_s})
        if checkpointable:
            save_checkpoint(ckpt_dir, i, strategy.model, extra=strategy_state(strategy),
                            config={"method": method, "seed": seed})
        on_row(row)


def _worker(job: tuple) -> str:
    """One (method, seed) in a child process; its rows go to ``parts/<method>-seed<k>.csv`` as they come."""
    method, seed, proto, cfg, run_dir, quiet, data, test_per_class, classes = job
    torch.set_num_threads(1)
    _exit_with_parent()
    benchmark = _benchmark(proto, data, test_per_class, classes)
    rows: list[dict] = []
    part = _part(run_dir, method, seed)
    prior = pd.read_csv(part).to_dict("records") if part.exists() else None

    def on_row(row: dict) -> None:
        rows.append(row)
        atomic_write_csv(pd.DataFrame(rows), part)

    run_method(method, seed, proto, benchmark, cfg, run_dir, True, on_row, prior_rows=prior)
    return str(part)


def _exit_with_parent(poll_seconds: float = 2.0) -> None:
    """Stop this worker when the parent dies (a killed ``compare`` must not leave workers writing its parts)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _part(run_dir: Path, method: str, seed: int) -> Path:
    return run_dir / "parts" / f"{method}-seed{seed}.csv"


def _call_record(config: dict) -> dict:
    return {k: config.get(k) for k in ("command", "started_utc", "wall_seconds", "methods", "seeds", "device",
                                       "device_name", "threads", "workers")}


def _has_parts(run_dir: Path) -> bool:
    return any((run_dir / "parts").glob("*.csv"))


def _part_complete(run_dir: Path, method: str, seed: int, n_experiences: int) -> bool:
    part = _part(run_dir, method, seed)
    if not part.exists():
        return False
    last = pd.read_csv(part)["experience"].max()
    return int(last) == n_experiences - 1


def _benchmark(proto: Protocol, data, test_per_class, classes):
    return split_cifar100(n_experiences=proto.n_experiences, class_order_seed=proto.class_order_seed,
                          train_per_class=proto.train_per_class, test_per_class=test_per_class,
                          img_size=proto.img_size, path=data, classes=classes)


def write_reports(per_task: pd.DataFrame, run_dir: Path) -> None:
    summary = summarize(per_task)
    atomic_write_csv(per_task, run_dir / "per_task.csv")
    atomic_write_csv(summary, run_dir / "summary.csv")
    atomic_write_text(run_dir / "table.md", markdown_table(summary))
    plot(per_task, summary, run_dir)


def gather_parts(run_dir: Path, methods: list[str] | None = None) -> pd.DataFrame:
    """Every (method, seed) part of a run, finished or not, in method order then seed and experience."""
    frames = [pd.read_csv(f) for f in sorted((run_dir / "parts").glob("*.csv"))]
    if not frames:
        raise SystemExit(f"error: '{run_dir}' has no parts/*.csv to report on")
    per_task = pd.concat(frames, ignore_index=True)
    order = {m: k for k, m in enumerate(methods or METHODS)}
    return per_task.assign(_r=per_task["method"].map(order)).sort_values(["_r", "seed", "experience"]).drop(columns="_r")


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    if args.report_only:
        run_dir = Path(args.report_only)
        write_reports(gather_parts(run_dir), run_dir)
        print((run_dir / "table.md").read_text())
        return run_dir
    if args.threads:
        torch.set_num_threads(args.threads)
    base = PROTOCOLS[args.protocol]
    proto = base.override(n_experiences=args.n_experiences, class_order_seed=args.class_order_seed,
                          train_per_class=args.train_per_class, epochs=args.epochs, batch_size=args.batch_size,
                          lr=args.lr, img_size=args.img_size, model=args.model, eval_amp=args.eval_amp)
    checkpoint = resolve_checkpoint(proto, args.checkpoint)
    run_id = args.run_id or datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_dir = Path(args.resume) if args.resume else Path(args.out) / proto.name / run_id
    if (run_dir / "DONE").exists() and not args.resume:
        raise SystemExit(f"error: run '{run_dir}' is finished and is never overwritten; choose another --run-id, "
                         f"or add methods or seeds to it with --resume {run_dir}")
    if args.resume and not (run_dir / "config.json").exists():
        raise SystemExit(f"error: '{run_dir}' is not a run folder of benchmarks.compare (no config.json)")
    if not args.resume and run_dir.exists() and any(run_dir.iterdir()):
        raise SystemExit(f"error: run folder '{run_dir}' already holds files; resume it with --resume {run_dir} "
                         "or choose another --run-id")

    classes = list(range(args.classes)) if args.classes else None
    benchmark = _benchmark(proto, args.data, args.test_per_class, classes)
    n_classes = sum(len(e.classes_in_this_experience) for e in benchmark.train_stream)
    cfg = method_config(proto, checkpoint, device=args.device, rank=args.rank, num_classes=n_classes,
                        sdlora_kwargs=sdlora_options(args), ewc_lambda=args.ewc_lambda, num_workers=args.workers)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {"protocol": proto.as_dict(), "methods": args.methods, "seeds": args.seeds, "checkpoint": str(checkpoint),
              "test_per_class": args.test_per_class, "classes": args.classes, "rank": args.rank,
              "ewc_lambda": args.ewc_lambda,
              "sdlora_options": sdlora_options(args), "sdlora_effective": effective_sdlora_options(args),
              "device": args.device, "device_name": device_name(args.device), "workers": args.workers,
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "command": " ".join(["python -m benchmarks.compare"] + (argv if argv is not None else sys.argv[1:])),
              "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if args.resume:
        saved = json.loads((run_dir / "config.json").read_text())
        # A run written before options were recorded with their defaults (no "sdlora_effective"), or before an
        # option existed (e.g. head_init), ran with the behaviour today's defaults keep.
        saved["sdlora_effective"] = {**config["sdlora_effective"],
                                     **saved.get("sdlora_effective", saved.get("sdlora_options", {}))}
        if saved.get("ewc_lambda", args.ewc_lambda) != args.ewc_lambda and "ewc" in args.methods:
            raise SystemExit(f"error: '{run_dir}' ran ewc with --ewc-lambda {saved['ewc_lambda']}; resume it with the same "
                             "value or start a new run")
        if saved["protocol"] != proto.as_dict() or saved.get("rank") != args.rank:
            raise SystemExit(f"error: '{run_dir}' was run with another configuration ({saved['protocol']}); "
                             "resume it with the same flags")
        if saved["sdlora_effective"] != config["sdlora_effective"]:
            raise SystemExit(f"error: '{run_dir}' was run with SD-LoRA options {saved['sdlora_effective']}, but these "
                             f"flags and the library's current defaults give {config['sdlora_effective']}; pass the "
                             "run's options explicitly (e.g. --direction-norm) or start a new run")
        earlier_failures = saved.get("failed", {})
        earlier_calls = saved.get("calls") or [_call_record(saved)]
        # Extending a finished run (more seeds or methods) keeps its finished parts; it is unfinished until this ends.
        (run_dir / "DONE").unlink(missing_ok=True)
    else:
        earlier_failures, earlier_calls = {}, []
        atomic_write_text(run_dir / "config.json", json.dumps(config, indent=2) + "\n")
    # This call's rows per (method, seed); each list is its part file's content (reports read the part files).
    part_rows: dict[tuple[str, int], list[dict]] = {}

    def on_row(row: dict) -> None:
        mine = part_rows.setdefault((row["method"], row["seed"]), [])
        mine.append(row)
        atomic_write_csv(pd.DataFrame(mine), _part(run_dir, row["method"], row["seed"]))
        atomic_write_csv(gather_parts(run_dir), run_dir / "per_task.csv")  # every part, not only this call's
        if not args.quiet:
            print(f"[{row['method']} seed {row['seed']}] experience {row['experience']}: "
                  f"seen-class accuracy {100 * row['acc_seen']:.2f}% ({row['train_seconds']:.0f}s train)", flush=True)

    t_start = time.perf_counter()
    # Seed-major order: a complete one-seed comparison of every method exists as early as possible.
    jobs = [(m, s) for s in args.seeds for m in args.methods]
    if args.resume:
        done = {(m, s) for m, s in jobs if _part_complete(run_dir, m, s, proto.n_experiences)}
        jobs = [j for j in jobs if j not in done]
        print(f"resuming {run_dir}: {len(done)} finished (method, seed) runs kept, {len(jobs)} to run", flush=True)
    # One (method, seed) failing (e.g. a diverging baseline) must not cost the others: its error is printed at
    # once, the other runs go on, and the run stays unfinished (no DONE) so ``--resume`` retries only the failures.
    failed: dict[tuple[str, int], str] = {}

    def report_failure(job: tuple[str, int], err: BaseException) -> None:
        failed[job] = f"{type(err).__name__}: {err}"
        print(f"error: {job[0]} seed {job[1]} failed, the other runs go on: {failed[job]}", file=sys.stderr,
              flush=True)

    if args.jobs == 1:
        for method, seed in jobs:
            part = _part(run_dir, method, seed)
            prior = pd.read_csv(part).to_dict("records") if args.resume and part.exists() else None
            try:
                run_method(method, seed, proto, benchmark, cfg, run_dir, args.quiet, on_row, prior_rows=prior)
            except Exception as err:  # noqa: BLE001 - reported, and the run is left unfinished
                report_failure((method, seed), err)
            if _has_parts(run_dir):
                write_reports(gather_parts(run_dir), run_dir)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        payload = [(m, s, proto, cfg, run_dir, True, args.data, args.test_per_class, classes) for m, s in jobs]
        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(_worker, job): job[:2] for job in payload}
            for fut in as_completed(futures):
                try:
                    fut.result()  # a worker's error is re-raised here, as soon as that worker ends
                    if not args.quiet:
                        print(f"finished {futures[fut]} ({len(futures)} runs in this call)", flush=True)
                except Exception as err:  # noqa: BLE001
                    report_failure(futures[fut], err)
                if _has_parts(run_dir):  # after a failure too: the failed run's finished rows are reported
                    write_reports(gather_parts(run_dir), run_dir)
    config["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    # Every call that wrote into this folder, oldest first (a resumed run's top-level fields describe the last one).
    config["calls"] = earlier_calls + [_call_record(config)]
    # Failures of earlier calls that this call did not retry stay on record (and keep the run unfinished).
    retried = {f"{m}-seed{s}" for m, s in jobs}
    config["failed"] = {**{k: e for k, e in earlier_failures.items() if k not in retried},
                        **{f"{m}-seed{s}": e for (m, s), e in failed.items()}}
    atomic_write_text(run_dir / "config.json", json.dumps(config, indent=2) + "\n")
    if failed:
        lines = "\n".join(f"  {k}: {e}" for k, e in config["failed"].items())
        raise SystemExit(f"error: {len(failed)} of {len(jobs)} runs failed (rows they finished are kept in "
                         f"{run_dir / 'parts'}):\n{lines}\nfix the cause, then rerun only these with --resume {run_dir}")
    if config["failed"]:
        print(f"note: {run_dir} stays unfinished: earlier failures not retried here: {sorted(config['failed'])}; "
              f"retry them with --resume {run_dir} --methods ... --seeds ...", flush=True)
    else:
        atomic_write_text(run_dir / "DONE", "")
    print(f"results in {run_dir}\n" + (run_dir / "table.md").read_text())
    return run_dir


if __name__ == "__main__":
    main()
