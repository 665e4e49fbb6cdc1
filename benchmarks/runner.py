"""One (method, seed) of a run: ``run(method, seed, cfg, benchmark, folder)``, the harness's Python API.

Seeds everything, builds the method's strategy with the shared evaluator, trains experience by experience and
evaluates on the test experiences seen so far; each finished experience's row goes to the folder's part file at
once (then to ``on_row``). A checkpointable method is checkpointed after every experience and, with
``resume=True``, continues exactly from its last checkpoint (model, RNG, plugin, clock and metric state; the
logger files keep their rows, see :mod:`benchmarks.resume`); other methods restart from experience 0.

Under torchrun (:mod:`benchmarks.distributed`) every rank runs this with its strategy made data-parallel; rank 0
alone writes the part, the checkpoints and the CSV logs, and every rank resumes from what rank 0 wrote. The
training loop itself is Avalanche's; nothing here reads a device value per step (the per-experience reads below,
the finite-weights check and the row, are one synchronisation each).
"""

from __future__ import annotations

import contextlib
import random
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from avalanche.evaluation.metrics import accuracy_metrics, bwt_metrics, forgetting_metrics, loss_metrics
from avalanche.logging import InteractiveLogger
from avalanche.training.plugins import EvaluationPlugin

from avalanche_sdlora.checkpoint import latest_checkpoint, prune_checkpoints, restore_strategy_state
from avalanche_sdlora.metrics import AverageAnytimeAccuracy, ParameterCount

from . import distributed, peer_checkpoint, predictions
from .config import RunConfig
from .methods import Method, get_method
from .resume import ResumableCSVLogger, close_logs
from .run_folder import RunFolder
from .train_amp import TrainingAutocastPlugin

Row = dict  # one experience of one (method, seed): the columns of per_task.csv
ACC_SEEN = "Top1_Acc_Stream/eval_phase/test_stream/Task000"  # Avalanche's accuracy over the seen classes: acc_seen


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_evaluator(log_dir: Path | None, quiet: bool) -> tuple[EvaluationPlugin, ParameterCount]:
    """The evaluator every method shares; its CSV logger opens its files when the run knows where it starts.

    Loggers exist on rank 0 only (Avalanche refuses them elsewhere); every rank computes the same metrics.
    ``log_dir=None``: no logger (an evaluation that writes nothing).
    """
    params = ParameterCount()
    loggers = []
    if distributed.is_main() and log_dir is not None:
        loggers = [ResumableCSVLogger(log_dir)] + ([] if quiet else [InteractiveLogger()])
    # Epoch accuracy and loss on the training minibatches, and each experience's test loss, fill the CSVLogger's
    # training_accuracy, training_loss and eval_loss columns (without them Avalanche writes 0 there); the logger has no
    # validation columns: nothing is evaluated during training (no eval_every).
    ev = EvaluationPlugin(accuracy_metrics(epoch=True, experience=True, stream=True),
                          loss_metrics(epoch=True, experience=True),
                          forgetting_metrics(experience=True, stream=True),
                          bwt_metrics(experience=True, stream=True), AverageAnytimeAccuracy(), params, loggers=loggers)
    return ev, params


@torch.no_grad()
def nonfinite_tensor(model: torch.nn.Module) -> str | None:
    """Name of the first floating-point parameter or buffer holding NaN or inf (None when all are finite)."""
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


@torch.no_grad()
def update_norm(model: torch.nn.Module) -> float:
    """Frobenius norm of the whole accumulated backbone update (drift from the pretrained weights)."""
    adapters = getattr(model, "adapters", None)
    if not adapters:
        return float("nan")
    return float(sum(a.delta_weight().pow(2).sum() for a in adapters) ** 0.5)


def evaluation_autocast(cfg: RunConfig):
    """The context every evaluation of a run runs in: bfloat16 autocast under ``eval_amp``, else none."""
    if not cfg.eval_amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda" if cfg.device.startswith("cuda") else "cpu", dtype=torch.bfloat16)


def num_classes(benchmark) -> int:
    return sum(len(e.classes_in_this_experience) for e in benchmark.train_stream)


def run(method: str, seed: int, cfg: RunConfig, benchmark, folder: RunFolder | str | Path, *,
        plugins: Sequence = (), on_row: Callable[[Row], None] | None = None, quiet: bool = True,
        resume: bool = False) -> list[Row]:
    """Train and evaluate ``method`` with ``seed``; returns its rows (those replayed from a resumed part included).

    ``benchmark``: the one of this seed's class order (``benchmarks.inputs.benchmark_for(cfg, seed)``; one
    tagged with another order is refused); ``plugins`` are added to the method's strategy (e.g. a trace);
    ``resume`` continues from the part and the checkpoints the folder holds for this (method, seed).
    """
    folder = folder if isinstance(folder, RunFolder) else RunFolder(folder)
    m = get_method(method)
    order = cfg.order_seed(seed)
    built_for = getattr(benchmark, "sdlora_class_order_seed", order)  # set by benchmarks.inputs.benchmark_for
    if built_for != order:
        raise ValueError(f"the benchmark given for {method} seed {seed} has class order {built_for}, but this run's "
                         f"is {order} (--class-order {cfg.class_order}); pass benchmarks.inputs.benchmark_for(cfg, "
                         "seed)")
    prior = folder.read_part(method, seed) if resume and folder.part(method, seed).exists() else None
    rows: list[Row] = []

    def emit(row: Row) -> None:
        rows.append(row)
        if distributed.is_main():
            folder.write_part(method, seed, rows)
        if on_row is not None:
            on_row(row)

    seed_everything(seed)
    evaluator, params = make_evaluator(folder.log_dir(method, seed), quiet)
    try:
        _train(m, seed, cfg, benchmark, folder, emit, prior, list(plugins), evaluator, params)
    finally:
        close_logs(evaluator)
    return rows


def _resume_point(m: Method, seed: int, cfg: RunConfig, folder: RunFolder, strategy, prior: list[Row], build,
                  emit) -> tuple[object, int]:
    """The strategy restored from the last usable checkpoint and the experience to start at (0: none)."""
    ckpt_dir = folder.checkpoints(m.name, seed)
    done = {int(r["experience"]) for r in prior}
    contiguous = next((e for e in range(len(done) + 1) if e not in done)) - 1  # rows 0..contiguous exist
    with warnings.catch_warnings(record=True) as skipped:  # a damaged checkpoint is skipped, naming its file
        warnings.simplefilter("always")
        last = latest_checkpoint(ckpt_dir, upto=contiguous)
    for w in skipped:
        print(f"note: {m.name} seed {seed}: {w.message}", flush=True)
    if last is None:
        return strategy, 0
    try:
        extra = peer_checkpoint.load(strategy, ckpt_dir, last, config={"method": m.name, "seed": seed})
    except Exception as err:  # noqa: BLE001 - re-raised naming the files
        raise ValueError(f"cannot resume {m.name} seed {seed} from its checkpoint "
                         f"'{ckpt_dir / f'exp{last}.safetensors'}' (and exp{last}.json): {err}; delete "
                         f"'{ckpt_dir}' to rerun this (method, seed) from its first experience") from err
    if "evaluator" not in extra:
        # Written before checkpoints held the evaluator's state: forgetting, BWT and AAA of the later rows
        # would differ from an uninterrupted run's, so this (method, seed) reruns from its first experience.
        print(f"note: {m.name} seed {seed}: checkpoint exp{last} in '{ckpt_dir}' holds no metric state "
              "(an older format); rerunning from the first experience", flush=True)
        seed_everything(seed)  # as a fresh start: the loaded weights and RNG states are not wanted
        return build(), 0
    # Model, RNGs, plugins, Avalanche's clock and the evaluator's metric state (forgetting, BWT, AAA).
    restore_strategy_state(strategy, extra)
    for r in sorted((r for r in prior if int(r["experience"]) <= last), key=lambda r: r["experience"]):
        emit(r)
    return strategy, last + 1


def _with_harness_plugins(m: Method, cfg: RunConfig, plugins: Sequence, recorder) -> list:
    """``plugins`` and those the harness adds to every run's strategy: bf16 training where the protocol asks for it
    and the method has no autocast of its own, and the prediction recorder (None: none)."""
    plugins = list(plugins)
    if cfg.train_autocast_dtype is not None and not m.train_amp:  # issue 30: bf16 training for every method
        plugins.append(TrainingAutocastPlugin(cfg.train_autocast_dtype))
    return plugins + ([recorder] if recorder is not None else [])


def _train(m: Method, seed: int, cfg: RunConfig, benchmark, folder: RunFolder, emit, prior, plugins, evaluator,
           params) -> None:
    n_classes = num_classes(benchmark)
    recorder = None if distributed.launched() else predictions.PredictionRecorder()  # a rank sees only its shard
    plugins = _with_harness_plugins(m, cfg, plugins, recorder)

    def build():
        return distributed.data_parallel(m.build(cfg, n_classes, evaluator, plugins), m.name)

    strategy, start = build(), 0
    base = peer_checkpoint.base_digests(strategy) if m.checkpointable else None  # what checkpoints leave out
    if prior and m.checkpointable:
        strategy, start = _resume_point(m, seed, cfg, folder, strategy, prior, build, emit)
    for logger in evaluator.loggers:
        if isinstance(logger, ResumableCSVLogger):
            logger.start(keep_upto=start - 1 if start else None)
    T = cfg.experiences_run  # the whole stream, or the first experiences a tuning candidate trains (issue 30)
    stream = benchmark.train_stream[:T]
    amp = evaluation_autocast(cfg)
    schedule = [(T - 1, stream)] if m.schedule == "joint" else list(enumerate(stream))
    for i, train_exp in schedule:
        if i < start:
            continue
        t0 = time.perf_counter()
        strategy.train(train_exp, num_workers=cfg.workers, shuffle=cfg.train_shuffle)
        _wait_for_device(strategy)
        train_s = time.perf_counter() - t0
        # A step can make the weights non-finite without a non-finite loss (the loss is computed before the
        # step): such a model's evaluation would run on NaN logits and its row would look like a result.
        bad = nonfinite_tensor(strategy.model)
        if bad is not None:
            raise FloatingPointError(f"the model holds NaN or inf after training experience {i} ({bad}): its row is "
                                     "not kept and this run stops; earlier experiences' rows are kept")
        t0 = time.perf_counter()
        with amp:
            res = strategy.eval(benchmark.test_stream[: i + 1], num_workers=cfg.workers)
        _wait_for_device(strategy)
        eval_s = time.perf_counter() - t0
        row = _row(m, seed, cfg.order_seed(seed), i, T, res, params, strategy, train_s, eval_s)
        if recorder is not None:  # before the row: a part never runs ahead of its predictions
            predictions.save(folder.predictions(m.name, seed), recorder.taken(i))
        if m.checkpointable and distributed.is_main():
            peer_checkpoint.save(strategy, folder.checkpoints(m.name, seed), i, config={"method": m.name, "seed": seed},
                                 base=base)
        emit(row)
        if m.checkpointable and distributed.is_main() and cfg.keep_checkpoints == "last":
            prune_checkpoints(folder.checkpoints(m.name, seed))  # after the row: until then the one before resumes


def predict_again(method: str, seed: int, cfg: RunConfig, benchmark, folder: RunFolder
                  ) -> tuple[predictions.Predictions, float]:
    """A finished checkpointable run's per-image predictions after its last experience, re-evaluated from that
    experience's checkpoint (for runs written before runs kept them), and the seen-class accuracy that evaluation
    gave: the caller compares it with the run's row before keeping anything. Trains nothing, writes nothing."""
    m = get_method(method)
    T = cfg.experiences_run
    last = T - 1
    ckpt_dir = folder.checkpoints(method, seed)
    if not m.checkpointable or latest_checkpoint(ckpt_dir, upto=last) != last:
        raise ValueError(f"{method} seed {seed} has no checkpoint of its last experience ({last}) in '{ckpt_dir}', "
                         "so its predictions cannot be evaluated again (rerun it to have them)")
    seed_everything(seed)
    with warnings.catch_warnings():  # the run's logs are its own: nothing is written, on purpose
        warnings.filterwarnings("ignore", message="No loggers specified")
        evaluator, _ = make_evaluator(None, quiet=True)
    recorder = predictions.PredictionRecorder()
    strategy = m.build(cfg, num_classes(benchmark), evaluator, _with_harness_plugins(m, cfg, [], recorder))
    extra = peer_checkpoint.load(strategy, ckpt_dir, last, config={"method": method, "seed": seed})
    restore_strategy_state(strategy, extra)
    with evaluation_autocast(cfg):
        res = strategy.eval(benchmark.test_stream[:T], num_workers=cfg.workers)
    return recorder.taken(last), float(res[ACC_SEEN])


def _wait_for_device(strategy) -> None:
    """Let a GPU finish its queued work, so train_seconds and eval_seconds are the work's, not its queueing's."""
    device = getattr(strategy, "device", None)
    if isinstance(device, torch.device) and device.type == "cuda":
        torch.cuda.synchronize(device)


def _row(m: Method, seed: int, order: int, i: int, T: int, res: dict, params: ParameterCount, strategy,
         train_s: float, eval_s: float) -> Row:
    """The per_task.csv row of experience ``i`` (the column order is the files'); ``order``: its class-order seed."""
    model = strategy.model
    row = {"method": m.name, "seed": seed, "class_order_seed": order, "experience": i, "n_experiences": T,
           "acc_seen": res[ACC_SEEN]}
    for j in range(T):
        row[f"acc_exp_{j}"] = res.get(f"Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp{j:03d}", np.nan)
    magnitudes = getattr(model, "magnitudes", None)
    row.update({"aaa_avalanche": res.get("AAA/eval_phase/test_stream", np.nan),
                "forgetting_avalanche": res.get("StreamForgetting/eval_phase/test_stream", np.nan),
                "bwt_avalanche": res.get("StreamBWT/eval_phase/test_stream", np.nan),
                "trainable_params": params.result(), "stored_params": m.stored_params(strategy),
                "n_alphas": len(magnitudes) if magnitudes is not None else np.nan,
                "alphas": " ".join(f"{a:.4f}" for a in magnitudes.alpha.tolist()) if magnitudes is not None else "",
                "update_norm": update_norm(model),
                **(m.extra_columns(strategy, i) if m.extra_columns else {}),
                "train_seconds": train_s, "eval_seconds": eval_s})
    return row
