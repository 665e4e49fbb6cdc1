"""Side-by-side comparison: ``python -m benchmarks.compare [--protocol cifar100-cpu] [--methods ...] [--seeds ...]``.

Every method sees the same Avalanche benchmark, backbone, epochs, batch size and evaluation: after
each training experience it is evaluated on the test experiences seen so far. Per-experience rows
are on disk (``per_task.csv``, written atomically) as soon as the experience ends; a finished run
directory is never overwritten.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import json
import math
import os
import platform
import random
import sys
import threading
import time
import traceback
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from avalanche.evaluation.metrics import accuracy_metrics, bwt_metrics, forgetting_metrics
from avalanche.logging import InteractiveLogger
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
from .resume import ResumableCSVLogger, close_logs
from .run_folder import LOCK_NAME, RunLock, clean_stale_temps, file_identity, same_file_content

DEFAULT_METHODS = ("sdlora",)
CIFAR_CLASSES = 100


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line ``error: ...`` (no usage block), like every other error of the CLI."""

    def error(self, message: str):
        raise SystemExit(f"error: {message} (see --help)")


def _bool(value: str) -> bool:
    v = value.lower()
    if v in ("1", "true", "yes"):
        return True
    if v in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


SEED_MAX = 2**32 - 1  # numpy's limit


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = _Parser(prog="python -m benchmarks.compare", description=__doc__.split("\n\n")[0])
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
    p.add_argument("--reset-alphas", type=_bool, help="SD-LoRA: reset old magnitudes at a new task (default true)")
    p.add_argument("--alpha-init", type=float, help="SD-LoRA: initial magnitude (default 0.8)")
    p.add_argument("--alpha-lr", type=float, help="SD-LoRA: learning rate of the magnitudes (default: --lr)")
    p.add_argument("--normalize-current", type=_bool, help="SD-LoRA: the paper's normalised current pair")
    p.add_argument("--direction-norm", choices=["frobenius", "factors"], help="SD-LoRA: how stored directions are normalised")
    p.add_argument("--head-init", choices=["linear", "zeros"],
                   help="SD-LoRA and seq-lora: init of new classifier rows (default linear, nn.Linear's)")
    p.add_argument("--kd-threshold", type=float, help="SD-LoRA-KD: relative residual threshold (default 9e-4)")
    p.add_argument("--img-size", type=int, help="input size in pixels, a multiple of the model's patch size")
    p.add_argument("--model", help="timm model name (default: the protocol's)")
    p.add_argument("--checkpoint", help="local weights file (default: <model>.safetensors in the assets folder)")
    p.add_argument("--data", help="CIFAR-100 npz (default: cifar100.npz in the assets folder)")
    p.add_argument("--eval-amp", type=_bool, default=None,
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
                   help="continue an interrupted run with the same settings: finished (method, seed) runs are kept, "
                        "the rest continue from their last checkpoint or rerun")
    p.add_argument("--quiet", action="store_true", help="no InteractiveLogger progress")
    p.add_argument("--verbose", action="store_true", help="print the traceback of an error, not only its message")
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
    bad_seeds = [s for s in args.seeds + [args.class_order_seed or 0] if not 0 <= s <= SEED_MAX]
    if bad_seeds:
        flag = "--seeds" if any(not 0 <= s <= SEED_MAX for s in args.seeds) else "--class-order-seed"
        p.error(f"{flag} must be integers from 0 to {SEED_MAX} (numpy's seed range), got {bad_seeds[0]}")
    if args.classes is not None and args.classes > CIFAR_CLASSES:
        p.error(f"--classes {args.classes}: CIFAR-100 has {CIFAR_CLASSES} classes; pass at most {CIFAR_CLASSES}")
    rules = {"positive": (lambda v: v > 0, "a positive number"), "nonneg": (lambda v: v >= 0, "0 or more"),
             "finite": (lambda v: True, "a finite number")}
    for name, rule in (("lr", "positive"), ("alpha_lr", "positive"), ("ewc_lambda", "nonneg"),
                       ("kd_threshold", "nonneg"), ("alpha_init", "finite")):
        value = getattr(args, name)
        ok, need = rules[rule]
        if value is not None and not (math.isfinite(value) and ok(value)):
            p.error(f"--{name.replace('_', '-')} must be {need}, got {value}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: torch sees no CUDA device on this machine; pass --device cpu")
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


def check_model(proto: Protocol) -> None:
    """Refuse a model the harness cannot run, and an image size its patches do not tile, before any file is read.

    Built on the meta device (no memory, no weights), so ``--model resnet18`` is refused for what it is rather than
    for its missing weights, and ``--img-size 33`` is not silently cut to 32 by the patch embedding.
    """
    import timm

    if proto.model not in timm.list_models():
        raise SystemExit(f"error: --model '{proto.model}' is not a timm model name; pass e.g. --model "
                         "vit_tiny_patch16_224")
    with torch.device("meta"):
        model = timm.create_model(proto.model, pretrained=False, num_classes=0)
    blocks = getattr(model, "blocks", None)
    if not blocks or not all(hasattr(getattr(b, "attn", None), "qkv") for b in blocks):
        raise SystemExit(f"error: --model '{proto.model}' is not a timm ViT (no .blocks[*].attn.qkv); every method "
                         "of the harness adapts or reads a ViT: pass e.g. --model vit_tiny_patch16_224")
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch
    if patch and proto.img_size % patch:
        near = sorted({max(patch, proto.img_size // patch * patch), (proto.img_size // patch + 1) * patch})
        raise SystemExit(f"error: --img-size {proto.img_size} is not a multiple of {proto.model}'s patch size {patch} "
                         f"(the last pixels would be ignored); pass e.g. --img-size {' or '.join(map(str, near))}")


def resolve_checkpoint(proto: Protocol, given: str | None) -> str:
    """The weights file: the one given, else ``<model>.safetensors`` in the assets folder; a clear error if neither."""
    checkpoint = given or default_asset(f"{proto.model}.safetensors")
    if checkpoint is None:
        raise SystemExit(f"error: no weights for '{proto.model}' in the assets folder: pass --checkpoint PATH or set "
                         "$SDLORA_ASSETS to the folder holding <model>.safetensors")
    if not Path(checkpoint).is_file():
        raise SystemExit(f"error: --checkpoint '{checkpoint}' is not a file; pass the path of the weights file")
    return str(checkpoint)


def resolve_data(given: str | None) -> str:
    """The CIFAR-100 npz: the one given, else ``cifar100.npz`` in the assets folder."""
    data = given or default_asset("cifar100.npz")
    if data is None:
        raise SystemExit("error: cifar100.npz not found in the assets folder: pass --data PATH or set $SDLORA_ASSETS "
                         "to the folder holding it")
    if not Path(data).is_file():
        raise SystemExit(f"error: --data '{data}' is not a file; pass the path of the CIFAR-100 npz")
    return str(data)


def check_per_class(data: str, classes: list[int] | None, flags: dict[str, int | None]) -> None:
    """Refuse asking for more images per class than the npz has (the loader would silently give fewer).

    Reads only the label arrays (an npz loads per key); an unreadable file is left to the loader's own error.
    """
    try:
        with np.load(data, allow_pickle=False) as f:
            labels = {"--train-per-class": f["y_train"], "--test-per-class": f["y_test"]}
        fewest = {}
        for flag, y in labels.items():
            y = np.asarray(y).astype(np.int64).ravel()
            counts = np.bincount(y[np.isin(y, classes)] if classes is not None else y)
            fewest[flag] = int(counts[counts > 0].min())
    except Exception:  # noqa: BLE001 - the benchmark's loader names what is wrong with the file
        return
    for flag, wanted in flags.items():
        if wanted is not None and wanted > fewest[flag]:
            raise SystemExit(f"error: {flag} {wanted}: '{data}' has {fewest[flag]} images per class"
                             f"{' (the fewest of the chosen classes)' if classes else ''}; pass at most {fewest[flag]}")


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
    """The evaluator every method shares; its CSV logger opens its files when ``run_method`` knows where it starts."""
    params = ParameterCount()
    loggers = [ResumableCSVLogger(log_dir)] + ([] if quiet else [InteractiveLogger()])
    ev = EvaluationPlugin(accuracy_metrics(experience=True, stream=True), forgetting_metrics(experience=True, stream=True),
                          bwt_metrics(experience=True, stream=True), AverageAnytimeAccuracy(), params, loggers=loggers)
    return ev, params


@torch.no_grad()
def nonfinite_tensor(model: torch.nn.Module) -> str | None:
    """Name of the first floating-point parameter or buffer holding NaN or inf (None when all are finite)."""
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def run_method(method: str, seed: int, proto: Protocol, benchmark, cfg: MethodConfig, run_dir: Path, quiet: bool,
               on_row, prior_rows: list[dict] | None = None, plugins: list | None = None) -> None:
    """Train ``method`` experience by experience; ``on_row`` receives each finished experience's metrics.

    SD-LoRA-family models are checkpointed after every experience (safetensors + JSON); with
    ``prior_rows`` from an interrupted run they resume exactly from the last checkpoint (model, RNG, plugin,
    clock and metric state from the checkpoint; the logger files keep their rows, see resume.py). Other methods
    restart from experience 0.
    """
    seed_everything(seed)
    log_dir = run_dir / "csv" / method / f"seed{seed}"
    evaluator, params = make_evaluator(log_dir, quiet)
    try:
        _run_method(method, seed, proto, benchmark, cfg, run_dir, on_row, prior_rows, plugins, evaluator, params)
    finally:
        close_logs(evaluator)


def _run_method(method, seed, proto, benchmark, cfg, run_dir, on_row, prior_rows, plugins, evaluator, params) -> None:
    strategy = build_strategy(method, cfg, evaluator, plugins)
    ckpt_dir = run_dir / "checkpoints" / f"{method}-seed{seed}"
    checkpointable = method in SDLORA_FAMILY
    start = 0
    if prior_rows and checkpointable:
        done = {int(r["experience"]) for r in prior_rows}
        contiguous = next((e for e in range(len(done) + 1) if e not in done)) - 1  # rows 0..contiguous exist
        with warnings.catch_warnings(record=True) as skipped:  # a damaged checkpoint is skipped, naming its file
            warnings.simplefilter("always")
            last = latest_checkpoint(ckpt_dir, upto=contiguous)
        for w in skipped:
            print(f"note: {method} seed {seed}: {w.message}", flush=True)
        if last is not None:
            try:
                extra = load_checkpoint(ckpt_dir, last, strategy.model, config={"method": method, "seed": seed})
            except Exception as err:  # noqa: BLE001 - re-raised naming the files
                raise ValueError(f"cannot resume {method} seed {seed} from its checkpoint "
                                 f"'{ckpt_dir / f'exp{last}.safetensors'}' (and exp{last}.json): {err}; delete "
                                 f"'{ckpt_dir}' to rerun this (method, seed) from its first experience") from err
            if "evaluator" not in extra:
                # Written before checkpoints held the evaluator's state: forgetting, BWT and AAA of the later rows
                # would differ from an uninterrupted run's, so this (method, seed) reruns from its first experience.
                print(f"note: {method} seed {seed}: checkpoint exp{last} in '{ckpt_dir}' holds no metric state "
                      "(an older format); rerunning from the first experience", flush=True)
                seed_everything(seed)  # as a fresh start: the loaded weights and RNG states are not wanted
                strategy = build_strategy(method, cfg, evaluator, plugins)
                last = None
        if last is not None:
            # Model, RNGs, plugins, Avalanche's clock and the evaluator's metric state (forgetting, BWT, AAA).
            restore_strategy_state(strategy, extra)
            for r in sorted((r for r in prior_rows if int(r["experience"]) <= last), key=lambda r: r["experience"]):
                on_row(r)
            start = last + 1
    for logger in evaluator.loggers:
        if isinstance(logger, ResumableCSVLogger):
            logger.start(keep_upto=start - 1 if start else None)
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
        # A step can make the weights non-finite without a non-finite loss (the loss is computed before the
        # step): such a model's evaluation would run on NaN logits and its row would look like a result.
        bad = nonfinite_tensor(strategy.model)
        if bad is not None:
            raise FloatingPointError(f"the model holds NaN or inf after training experience {i} ({bad}): its row is "
                                     "not kept and this run stops; earlier experiences' rows are kept")
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


def read_part(path: Path) -> list[dict]:
    """A part's rows as they were written (``alphas`` stays text: one magnitude would otherwise parse as a float)."""
    return pd.read_csv(path, dtype={"alphas": str}).to_dict("records")


def _worker(job: tuple) -> str:
    """One (method, seed) in a child process; its rows go to ``parts/<method>-seed<k>.csv`` as they come."""
    method, seed, proto, cfg, run_dir, quiet, data, test_per_class, classes = job
    torch.set_num_threads(1)
    _exit_with_parent()
    benchmark = _benchmark(proto, data, test_per_class, classes)
    rows: list[dict] = []
    part = _part(run_dir, method, seed)
    prior = read_part(part) if part.exists() else None

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


def _holds_files(run_dir: Path) -> bool:
    return run_dir.is_dir() and any(p.name != LOCK_NAME for p in run_dir.iterdir())


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


def _parts_signature(run_dir: Path) -> tuple:
    sig = []
    for f in sorted((run_dir / "parts").glob("*.csv")):
        with contextlib.suppress(FileNotFoundError):
            st = f.stat()
            sig.append((f.name, st.st_mtime_ns, st.st_size))
    return tuple(sig)


# Every setting that can change a number of a run, with the flag that sets it: a resumed run must match all of them
# (a (method, seed) continued under other settings, or a table row averaging seeds run under two, is no result).
IDENTITY_FLAGS = {
    "name": "--protocol", "model": "--model", "img_size": "--img-size", "train_per_class": "--train-per-class",
    "epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr", "n_experiences": "--n-experiences",
    "class_order_seed": "--class-order-seed", "eval_amp": "--eval-amp",
    "eval_batch_size": "the protocol's eval_batch_size (no flag: the protocol's definition changed)",
    "classes": "--classes", "test_per_class": "--test-per-class", "rank": "--rank", "ewc_lambda": "--ewc-lambda",
    **{n: "--" + n.replace("_", "-") for n in SDLORA_OPTIONS},
    "data": "--data (the npz's content)", "checkpoint": "--checkpoint (the weights' content)", "device": "--device",
    "device_name": "the machine", "workers": "--workers (worker processes draw other random flips)",
    # Threads change the order of float sums, so the same seed gives other numbers; --jobs 2 or more runs each
    # (method, seed) on one thread.
    "threads": "--threads (torch threads per (method, seed); --jobs 2 or more means 1)",
    "torch": "the torch version",
}


def run_identity(args: argparse.Namespace, proto: Protocol, checkpoint: str, data: str, threads: int) -> dict:
    """This call's value of every setting in IDENTITY_FLAGS (input files by content: see file_identity)."""
    identity = {**proto.as_dict(), "classes": args.classes, "test_per_class": args.test_per_class, "rank": args.rank,
                "ewc_lambda": args.ewc_lambda, **effective_sdlora_options(args), "data": file_identity(data),
                "checkpoint": file_identity(checkpoint), "device": args.device, "device_name": device_name(args.device),
                "workers": args.workers, "threads": threads, "torch": torch.__version__}
    assert set(identity) == set(IDENTITY_FLAGS), set(identity) ^ set(IDENTITY_FLAGS)
    return identity


def proto_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(Protocol)]


def saved_identity(saved: dict, current: dict) -> dict:
    """The identity a run folder recorded; for folders written before ``identity`` existed, what they did record."""
    if "identity" in saved:
        return saved["identity"]
    # A protocol field added since is not unknown: the run ran without it, so it is refused as a change.
    old = {k: saved["protocol"].get(k, "not recorded") for k in proto_fields()}
    for k in ("classes", "test_per_class", "rank", "ewc_lambda", "device", "device_name", "torch"):
        if k in saved:
            old[k] = saved[k]
    # Options recorded with their defaults ("sdlora_effective"), or only those given (older runs), which ran with
    # the behaviour today's defaults keep; an option added later (e.g. head_init) ran as its default.
    old.update({n: current[n] for n in SDLORA_OPTIONS})
    old.update(saved.get("sdlora_effective", saved.get("sdlora_options", {})))
    old["workers"] = saved.get("workers", 0)  # before --workers existed, data loading ran in the training process
    if saved.get("threads") == 1:  # the parent's thread count: the runs' only when it was 1 (a worker always has 1)
        old["threads"] = 1
    return old


def _show(key: str, value) -> str:
    if key in ("data", "checkpoint") and isinstance(value, dict):
        return f"'{value.get('name')}' (sha256 {str(value.get('sha256'))[:12]}...)"
    return json.dumps(value)


def identity_changes(saved: dict, current: dict) -> tuple[list[str], list[str]]:
    """Settings this call changes (as 'flag: run's value, this call's value') and those the folder never recorded."""
    changed, unrecorded = [], []
    for key, value in current.items():
        if key not in saved:
            unrecorded.append(IDENTITY_FLAGS[key].split(" (")[0])
            continue
        same = (same_file_content(saved[key], value) if key in ("data", "checkpoint") and isinstance(saved[key], dict)
                else saved[key] == value)
        if not same:
            changed.append(f"{IDENTITY_FLAGS[key]}: the run's {_show(key, saved[key])}, this call's {_show(key, value)}")
    return changed, unrecorded


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    command = " ".join(["python -m benchmarks.compare"] + (argv if argv is not None else sys.argv[1:]))
    if args.report_only:
        run_dir = Path(args.report_only)
        if not (run_dir / "parts").is_dir():
            raise SystemExit(f"error: --report-only '{run_dir}' has no parts/ folder; pass a run folder of "
                             "benchmarks.compare (results/<protocol>/<run-id>)")
        with RunLock(run_dir, command):
            _clean(run_dir, args.quiet)
            write_reports(gather_parts(run_dir), run_dir)
        print((run_dir / "table.md").read_text())
        return run_dir
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = 1 if args.jobs > 1 else torch.get_num_threads()  # per (method, seed): workers run on one thread
    base = PROTOCOLS[args.protocol]
    proto = base.override(n_experiences=args.n_experiences, class_order_seed=args.class_order_seed,
                          train_per_class=args.train_per_class, epochs=args.epochs, batch_size=args.batch_size,
                          lr=args.lr, img_size=args.img_size, model=args.model, eval_amp=args.eval_amp)
    check_model(proto)
    checkpoint = resolve_checkpoint(proto, args.checkpoint)
    data = resolve_data(args.data)
    classes = list(range(args.classes)) if args.classes else None
    check_per_class(data, classes, {"--train-per-class": proto.train_per_class, "--test-per-class": args.test_per_class})
    run_id = args.run_id or datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_dir = Path(args.resume) if args.resume else Path(args.out) / proto.name / run_id
    if args.resume and not (run_dir / "config.json").exists():
        raise SystemExit(f"error: --resume '{run_dir}' is not a run folder of benchmarks.compare (no config.json)")
    identity = run_identity(args, proto, checkpoint, data, threads)
    with contextlib.ExitStack() as held:
        if args.resume:
            held.enter_context(RunLock(run_dir, command))
            _clean(run_dir, args.quiet)
            saved = json.loads((run_dir / "config.json").read_text())
            changed, unrecorded = identity_changes(saved_identity(saved, identity), identity)
            if changed:
                raise SystemExit(f"error: '{run_dir}' was run with other settings; a resumed run keeps its settings, "
                                 "so pass the run's values, or start a new run (another --run-id, without --resume) "
                                 "for these: " + "; ".join(changed))
            if unrecorded:
                print(f"note: '{run_dir}' was written before compare recorded {', '.join(unrecorded)}; this call's "
                      "values are recorded as the run's", flush=True)
        else:
            _refuse_existing(run_dir)
        benchmark = _benchmark(proto, data, args.test_per_class, classes)
        if not args.resume:
            run_dir.mkdir(parents=True, exist_ok=True)
            held.enter_context(RunLock(run_dir, command))
            _refuse_existing(run_dir)  # again: another writer may have filled it while the benchmark was built
            _clean(run_dir, args.quiet)
        return _run(args, command, proto, benchmark, classes, checkpoint, data, threads, identity, run_dir,
                    saved if args.resume else None)


def _refuse_existing(run_dir: Path) -> None:
    if (run_dir / "DONE").exists():
        raise SystemExit(f"error: run '{run_dir}' is finished and is never overwritten; choose another --run-id, "
                         f"or add methods or seeds to it with --resume {run_dir}")
    if _holds_files(run_dir):
        raise SystemExit(f"error: run folder '{run_dir}' already holds files; resume it with --resume {run_dir} "
                         "or choose another --run-id")


def _clean(run_dir: Path, quiet: bool) -> None:
    removed = clean_stale_temps(run_dir)
    if removed and not quiet:
        print(f"removed {len(removed)} temporary file(s) an interrupted writer left in {run_dir}", flush=True)


def _run(args, command, proto, benchmark, classes, checkpoint, data, threads, identity, run_dir, saved) -> Path:
    """The run loop, with the run folder locked."""
    n_classes = sum(len(e.classes_in_this_experience) for e in benchmark.train_stream)
    cfg = method_config(proto, checkpoint, device=args.device, rank=args.rank, num_classes=n_classes,
                        sdlora_kwargs=sdlora_options(args), ewc_lambda=args.ewc_lambda, num_workers=args.workers)
    config = {"protocol": proto.as_dict(), "methods": args.methods, "seeds": args.seeds, "checkpoint": str(checkpoint),
              "data": str(data), "test_per_class": args.test_per_class, "classes": args.classes, "rank": args.rank,
              "ewc_lambda": args.ewc_lambda,
              "sdlora_options": sdlora_options(args), "sdlora_effective": effective_sdlora_options(args),
              "device": args.device, "device_name": device_name(args.device), "workers": args.workers,
              "threads": threads, "torch": torch.__version__, "identity": identity,
              "command": command, "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if saved is not None:
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
    if saved is not None:
        done = {(m, s) for m, s in jobs if _part_complete(run_dir, m, s, proto.n_experiences)}
        jobs = [j for j in jobs if j not in done]
        print(f"resuming {run_dir}: {len(done)} finished (method, seed) runs kept, {len(jobs)} to run", flush=True)
    # One (method, seed) failing (e.g. a diverging baseline) must not cost the others: its error is printed at
    # once, the other runs go on, and the run stays unfinished (no DONE) so ``--resume`` retries only the failures.
    failed: dict[tuple[str, int], str] = {}

    def report_failure(job: tuple[str, int], err: BaseException) -> None:
        failed[job] = f"{type(err).__name__}: {' '.join(str(err).split())}"
        print(f"error: {job[0]} seed {job[1]} failed, the other runs go on: {failed[job]}", file=sys.stderr,
              flush=True)

    reported = False
    if args.jobs == 1:
        for method, seed in jobs:
            part = _part(run_dir, method, seed)
            prior = read_part(part) if saved is not None and part.exists() else None
            try:
                run_method(method, seed, proto, benchmark, cfg, run_dir, args.quiet, on_row, prior_rows=prior)
            except Exception as err:  # noqa: BLE001 - reported, and the run is left unfinished
                report_failure((method, seed), err)
            if _has_parts(run_dir):
                write_reports(gather_parts(run_dir), run_dir)
                reported = True
    elif jobs:
        import multiprocessing as mp
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        payload = [(m, s, proto, cfg, run_dir, True, data, args.test_per_class, classes) for m, s in jobs]
        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(_worker, job): job[:2] for job in payload}
            pending, seen = set(futures), _parts_signature(run_dir)
            while pending:
                finished, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                # Workers write their parts per experience; the parent (the only writer of per_task.csv) folds them
                # in as they change, so per_task.csv is as current as the parts, as with --jobs 1.
                now = _parts_signature(run_dir)
                if now != seen and now:
                    atomic_write_csv(gather_parts(run_dir), run_dir / "per_task.csv")
                    seen = now
                for fut in finished:
                    try:
                        fut.result()  # a worker's error is re-raised here, as soon as that worker ends
                        if not args.quiet:
                            print(f"finished {futures[fut]} ({len(futures)} runs in this call)", flush=True)
                    except Exception as err:  # noqa: BLE001
                        report_failure(futures[fut], err)
                    if _has_parts(run_dir):  # after a failure too: the failed run's finished rows are reported
                        write_reports(gather_parts(run_dir), run_dir)
                        reported = True
    if _has_parts(run_dir) and not reported:  # e.g. a resume with nothing left to run, after a kill mid-report
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
        raise SystemExit(_failure_message(run_dir, config["failed"], failed, len(jobs)))
    if config["failed"]:
        print(f"note: {run_dir} stays unfinished: earlier failures not retried here: {sorted(config['failed'])}; "
              f"retry them with --resume {run_dir} --methods ... --seeds ...", flush=True)
    else:
        atomic_write_text(run_dir / "DONE", "")  # last: a folder with DONE has its reports
    print(f"results in {run_dir}\n" + (run_dir / "table.md").read_text())
    return run_dir


def _failure_message(run_dir: Path, on_record: dict, failed: dict, n_jobs: int) -> str:
    kept = [f"{m}-seed{s}" for m, s in failed if _part(run_dir, m, s).exists()]
    where = (f"the rows they finished are kept in {run_dir / 'parts'}" if kept else
             "none of them finished an experience, so no rows were kept")
    lines = "\n".join(f"  {k}: {e}" for k, e in on_record.items())
    return (f"error: {len(failed)} of {n_jobs} runs failed ({where}):\n{lines}\n"
            f"to retry them with this run's settings (after a fix outside the settings: the code, the data, disk "
            f"space), rerun with --resume {run_dir}; a fix that changes a setting (e.g. a lower --lr for a NaN loss) is "
            "refused by --resume: start a new run with another --run-id instead")


def cli(argv: list[str] | None = None, main=main) -> int:
    """``main`` for a shell: any error is one line ``error: ...`` and exit status 1 (``--verbose``: the traceback too)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        main(argv)
        return 0
    except SystemExit as exc:
        if isinstance(exc.code, str):
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
        print(f"error: {' '.join(str(message).split())}" + ("" if "--verbose" in argv else
                                                             " (--verbose prints the traceback)"), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(cli())
