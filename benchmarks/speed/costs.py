"""Costs read without timing models against each other: parameters per task, runs' wall times, data loading."""

from __future__ import annotations

import statistics
import time
import warnings
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader

from avalanche_sdlora.assets import default_asset
from avalanche_sdlora.model import sdlora_vit
from avalanche_sdlora.options import PAPER_SCHEDULE, rank_for_task

from ..config import RunConfig
from ..inputs import make_benchmark
from ..run_folder import RunFolder
from .models import N_CLASSES, N_HEAD_TASKS, build_sdlora
from .timing import sync, train_step_fn


def params_per_task(args) -> list[dict]:
    """Learnable and stored numbers per task for SD-LoRA, RR (paper schedule) and the KD upper bound."""
    rows = []
    schedules = {"sdlora": lambda t: args.rank, "sdlora-rr": lambda t: rank_for_task(t, PAPER_SCHEDULE)}
    for method, rank_of in schedules.items():
        m = sdlora_vit(args.model, img_size=32, rank=args.rank)  # parameter counts do not depend on weights
        per = N_CLASSES // N_HEAD_TASKS
        for t in range(N_HEAD_TASKS):
            stored_before = m.stored_adapter_params()
            m.add_task(rank_of(t))
            m.head.add_classes(list(range(t * per, (t + 1) * per)))
            pair = sum(a.lora_A.numel() + a.lora_B.numel() for a in m.adapters)
            head = m.head.weights[-1].numel() + m.head.biases[-1].numel()
            learn = m.trainable_params()
            m.freeze_task()
            stored = m.stored_adapter_params()
            for name in ([method, "sdlora-kd (upper bound = sdlora)"] if method == "sdlora" else [method]):
                for measure, value in (("rank", rank_of(t)), ("learnable_params", learn),
                                       ("learnable_adapter_params", learn - head), ("learnable_pair_params", pair),
                                       ("learnable_head_params", head), ("stored_params_added", stored - stored_before),
                                       ("stored_params_total", stored)):
                    rows.append({"method": name, "setting": f"task={t + 1}", "task": t + 1, "measure": measure,
                                 "value": value, "unit": "count"})
    return rows


def stored_after_tasks(args, tasks: tuple[int, ...]) -> list[dict]:
    """Stored adapter numbers (directions, their scales, magnitudes; the head is the same for every method) after each
    of ``tasks`` for SD-LoRA and RR (the paper's schedule, its last rank kept after task 7), counted on the model after
    adding and freezing that many pairs. KD stores SD-LoRA's count less one task's directions and magnitude per absorbed
    task, a number only training tells: SD-LoRA's count is its upper bound."""
    rows = []
    schedules = {"sdlora": lambda t: args.rank, "sdlora-rr": lambda t: rank_for_task(t, PAPER_SCHEDULE)}
    for method, rank_of in schedules.items():
        m = sdlora_vit(args.model, img_size=32, rank=args.rank)  # counts do not depend on weights or input size
        for t in range(max(tasks)):
            m.add_task(rank_of(t))
            m.freeze_task()
            if t + 1 in tasks:
                rows.append({"method": method, "setting": f"task={t + 1}", "task": t + 1,
                             "measure": "stored_adapter_params_after_tasks", "value": m.stored_adapter_params(),
                             "unit": "count", "note": f"ranks {rank_of(0)}..{rank_of(t)}; stored rank per adapted "
                                                      f"slice {m.adapters[0].stored_rank}"})
    return rows


def end_to_end(args) -> list[dict]:
    """Wall time per method from compare's run folders under ``--results-root``: per_task.csv, else a running
    job's parts."""
    rows = []
    for run_dir in sorted(p for p in Path(args.results_root).glob("*") if p.is_dir()):
        folder = RunFolder(run_dir)
        files = [folder.per_task_path] if folder.per_task_path.is_file() else sorted((run_dir / "parts").glob("*.csv"))
        frames = []
        for f in files:
            try:
                frames.append(pd.read_csv(f))
            except Exception as exc:  # noqa: BLE001 - a file being written
                warnings.warn(f"could not read {f}: {exc}")
        if not frames:
            continue
        df = pd.concat(frames, ignore_index=True)
        source = "per_task.csv" if files[0].name == "per_task.csv" else "parts/*.csv (run in progress)"
        for method, g in df.groupby("method", sort=False):
            per_seed = g.groupby("seed")[["train_seconds", "eval_seconds"]].sum()
            n_exp = g.groupby("seed")["experience"].nunique()
            complete = "n_experiences" in g and bool((n_exp >= int(g["n_experiences"].max())).all())
            for measure, value, unit in (
                    ("wall_train_seconds", per_seed["train_seconds"].mean(), "s"),
                    ("wall_eval_seconds", per_seed["eval_seconds"].mean(), "s"),
                    ("wall_total_seconds", per_seed.sum(axis=1).mean(), "s"),
                    ("train_seconds_per_experience", g["train_seconds"].mean(), "s"),
                    ("seeds", len(per_seed), "count"), ("experiences_done_min", int(n_exp.min()), "count")):
                rows.append({"method": method, "setting": f"run={run_dir.name}", "measure": measure,
                             "value": float(value), "unit": unit, "complete": complete, "source": source,
                             "note": "mean over seeds of the sum over experiences" if "wall" in measure else ""})
    return rows


def data_loading_share(args) -> list[dict]:
    """Share of SD-LoRA training time spent in the DataLoader on the real CIFAR-100 path."""
    if default_asset("cifar100.npz") is None:
        return [{"measure": "data_loading_share", "setting": "skipped: no cifar100.npz", "value": float("nan"),
                 "unit": "fraction"}]
    img = 32 if args.quick else 128
    kw = dict(n_experiences=2, train_per_class=8, classes=4) if args.quick else \
        dict(n_experiences=10, train_per_class=100)
    bm = make_benchmark(RunConfig.for_protocol(img_size=img, test_per_class=1, **kw))  # test split unused: small
    ds = bm.train_stream[0].dataset
    loader = DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=0,
                        generator=torch.Generator().manual_seed(0))
    epochs = 1 if args.quick else 2
    t0 = time.perf_counter()
    batches = []
    for _ in range(epochs):
        for mb in loader:
            batches.append(mb)
    t_load = (time.perf_counter() - t0) / len(batches)
    model = build_sdlora(args, img, stored=0)
    classes = sorted(set(int(c) for c in bm.train_stream[0].classes_in_this_experience))
    steps = []
    n = min(len(batches), 3 if args.quick else 8)
    for i in range(n + 1):
        x, y = batches[i % len(batches)][0].to(args.device), batches[i % len(batches)][1].to(args.device)
        step = train_step_fn(model, x, y, classes)
        t0 = time.perf_counter()
        step()
        sync(args.device)
        if i:  # first step is warm-up
            steps.append(time.perf_counter() - t0)
    t_step = statistics.median(steps)
    base = {"img_size": img,
            "setting": f"split_cifar100 exp0 ({len(ds)} images), batch {args.batch_size}, num_workers=0"}
    return [{**base, "measure": "data_loading_seconds_per_batch", "value": t_load, "unit": "s"},
            {**base, "measure": "data_train_step_seconds_per_batch", "value": t_step, "unit": "s"},
            {**base, "measure": "data_loading_share", "value": t_load / (t_load + t_step), "unit": "fraction"}]
