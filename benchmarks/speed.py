"""Speed, memory, FLOPs and parameter cost of SD-LoRA: ``python -m benchmarks.speed [--quick]``.

Every timing is a RATIO of two models measured in the same process, interleaved call by call in a
shuffled order after a warm-up; a ratio is the median over repetitions of the per-repetition ratio,
so load from other processes on the machine cancels as far as possible. Peak memory of a training
step is measured in a forked child per setting (CPU: peak RSS via /proc VmHWM, reset before the
step, with glibc's mmap threshold pinned so freed tensors leave RSS; CUDA: max_memory_allocated).

Writes ``<out>/{ratios,timings,memory,flops,params,end_to_end}.csv`` (tidy rows: model, img_size,
measure, setting, value, unit, device, threads, ...), ``<out>/train_step_vs_tasks.png`` and
``<out>/README.md``.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import math
import multiprocessing as mp
import os
import platform
import random
import shlex
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from avalanche_sdlora.assets import default_asset
from avalanche_sdlora.model import SDLoRAViT, create_backbone, sdlora_vit
from avalanche_sdlora.plugins.rank_reduction import PAPER_SCHEDULE, rank_for_task

from .reports import atomic_write_csv, atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
N_CLASSES, N_HEAD_TASKS = 100, 10
# measure name -> (comparison, target, sense); ">=" means the ratio must be at least the target.
TARGETS = {
    "infer_throughput_ratio_sdlora_merged_vs_backbone": (">=", 0.98),
    "infer_throughput_ratio_sdlora_merged_vs_l2p": (">=", 1.9),
    "train_step_time_ratio_20tasks_vs_1task": ("<=", 1.10),
    "train_step_time_ratio_20tasks_vs_plain_lora": ("<=", 1.15),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vit_tiny_patch16_224", help="timm ViT name")
    p.add_argument("--checkpoint", help="local weights (default: <model>.safetensors in the assets folder)")
    p.add_argument("--img-sizes", nargs="+", type=int, default=[128, 224])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per training model (default 7; --quick 3); backbone vs merged SD-LoRA "
                   "inference gets 3x as many, L2P the same number")
    p.add_argument("--rank", type=int, default=10)
    p.add_argument("--out", default="results/perf")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--results-root", default=str(ROOT / "results" / "cifar100-cpu"),
                   help="folder of compare.py runs (<root>/*/per_task.csv) for the end-to-end wall times")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repetitions (< 60 s; for tests)")
    a = p.parse_args(argv)
    if a.quick:
        a.img_sizes, a.batch = [32], 4
        a.reps = a.reps or 3
    a.reps = a.reps or 7
    a.warmup = 1  # per model; the first train step also creates the momentum buffers
    a.train_tasks = [0, 10, 20, 50]  # stored tasks (+ the current pair)
    a.mem_tasks = [1, 10, 20, 50]  # tasks learned, the last one being trained
    return a


# ---------------------------------------------------------------------------------------- models
class Backbone(nn.Module):
    """The frozen timm backbone with a given head: the reference."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


class PlainLoRAQKV(nn.Module):
    """Minimal plain LoRA on the q and v slices of a fused qkv: y = W x + B_q A_q x (q) / B_v A_v x (v)."""

    def __init__(self, base: nn.Linear, rank: int) -> None:
        super().__init__()
        self.base, self.dim = base, base.out_features // 3
        self.A = nn.Parameter(torch.randn(2, rank, base.in_features) / math.sqrt(base.in_features))
        self.B = nn.Parameter(torch.randn(2, self.dim, rank) * 0.01)

    def forward(self, x: Tensor) -> Tensor:
        out = self.base(x)  # frozen: its backward needs no output, so in-place adds are safe (fastest variant)
        d = self.dim
        out[..., :d] += F.linear(F.linear(x, self.A[0]), self.B[0])
        out[..., 2 * d:] += F.linear(F.linear(x, self.A[1]), self.B[1])
        return out


def _checkpoint(args) -> str | None:
    c = args.checkpoint or default_asset(f"{args.model}.safetensors")
    return None if c is None else str(c)


def _fill_head(head, n_tasks: int = N_HEAD_TASKS) -> None:
    per = N_CLASSES // N_HEAD_TASKS
    for t in range(n_tasks):
        head.add_classes(list(range(t * per, (t + 1) * per)))  # earlier rows frozen, last chunk trainable


def _randomize_pair(model: SDLoRAViT, gen: torch.Generator) -> None:
    with torch.no_grad():
        for a in model.adapters:
            a.lora_B.copy_(torch.randn(a.lora_B.shape, generator=gen) * 0.02)


def build_sdlora(args, img: int, stored: int, current: bool = True, merged: bool = False,
                 single_frozen_alpha: bool = False, seed: int = 0) -> SDLoRAViT:
    """SD-LoRA with ``stored`` frozen directions (random non-zero B) and, if ``current``, a trainable pair."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    m = sdlora_vit(args.model, checkpoint=_checkpoint(args), img_size=img, rank=args.rank)
    for _ in range(stored):
        m.add_task(args.rank)
        _randomize_pair(m, gen)
        m.freeze_task()
    if current:
        m.add_task(args.rank, alpha_init=1.0 if single_frozen_alpha else 0.8)
        _randomize_pair(m, gen)
        if single_frozen_alpha:  # the sequential-LoRA baseline: one pair, alpha fixed at 1
            m.magnitudes.alpha.requires_grad_(False)
    _fill_head(m.head)
    if merged:
        m.merge()
    return m.to(args.device)


def build_backbone(args, img: int, head: nn.Module) -> Backbone:
    b = create_backbone(args.model, checkpoint=_checkpoint(args), img_size=img)
    for p in b.parameters():
        p.requires_grad_(False)
    return Backbone(b, copy.deepcopy(head)).to(args.device)


def build_plain_lora(args, img: int, head: nn.Module) -> Backbone:
    torch.manual_seed(0)
    m = build_backbone(args, img, head)
    for blk in m.backbone.blocks:
        blk.attn.qkv = PlainLoRAQKV(blk.attn.qkv, args.rank)
    return m.to(args.device)


def build_l2p(args, img: int) -> tuple[nn.Module, str]:
    """L2P from benchmarks.l2p (waits up to 3 min for it); else a clearly labelled two-pass stand-in."""
    deadline = time.monotonic() + (0 if args.quick else 180)
    while True:
        try:
            from .l2p import build_l2p_model

            return build_l2p_model(args.model, _checkpoint(args), img, N_CLASSES).to(args.device), "l2p"
        except ImportError as exc:
            if time.monotonic() > deadline:
                warnings.warn(f"benchmarks.l2p not importable ({exc}); measuring a two-pass stand-in")
                break
            time.sleep(15)
    head = nn.Linear(192, N_CLASSES)
    q, p = build_backbone(args, img, nn.Identity()), build_backbone(args, img, head)
    p.head = nn.Linear(p.backbone.num_features, N_CLASSES)

    class TwoPass(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.p = q, p

        def forward(self, x):
            self.q(x)
            return self.p(x)

    return TwoPass().to(args.device), "l2p_standin_two_passes"


# ---------------------------------------------------------------------------------------- timing
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved(fns: dict[str, Callable[[], object]], reps: int, warmup: int, device: str,
                every: dict[str, int] | None = None) -> dict[str, list[float | None]]:
    """Seconds per call of each function; calls interleaved in a shuffled order every repetition.

    ``every[k] = n`` times ``k`` only every n-th repetition (None elsewhere): precise pairs where a
    ratio is close to its target, fewer calls of slow models whose ratio has a wide margin.
    """
    every = every or {}
    for _ in range(warmup):
        for f in fns.values():
            f()
    _sync(device)
    times = {k: [None] * reps for k in fns}
    order, rng = list(fns), random.Random(0)
    for r in range(reps):
        rng.shuffle(order)
        for k in order:
            if r % every.get(k, 1):
                continue
            t0 = time.perf_counter()
            fns[k]()
            _sync(device)
            times[k][r] = time.perf_counter() - t0
    return times


def _median(v: list[float | None]) -> float:
    return statistics.median(t for t in v if t is not None)


def paired_ratio(num: list[float | None], den: list[float | None]) -> float:
    """Median over repetitions (where both ran) of num[r] / den[r]."""
    return statistics.median(a / b for a, b in zip(num, den) if a is not None and b is not None)


def train_step_fn(model: nn.Module, x: Tensor, y: Tensor, classes: list[int]) -> Callable[[], float]:
    """forward + masked cross-entropy (current classes, as SDLoRA.criterion) + backward + SGD step."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        out = model(x)
        keep = torch.zeros(out.shape[1], dtype=torch.bool, device=out.device)
        keep[classes] = True
        loss = F.cross_entropy(out.masked_fill(~keep, float("-inf")), y)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def infer_fn(model: nn.Module, x: Tensor) -> Callable[[], Tensor]:
    model.eval()

    def run():
        with torch.inference_mode():
            return model(x)

    return run


def _batch(args, img: int, seed: int = 0) -> tuple[Tensor, Tensor, list[int]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(args.batch, 3, img, img, generator=g).to(args.device)
    classes = list(range(N_CLASSES - N_CLASSES // N_HEAD_TASKS, N_CLASSES))
    y = torch.tensor([classes[i % len(classes)] for i in range(args.batch)], device=args.device)
    return x, y, classes


# ---------------------------------------------------------------------------------------- memory
def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _mem_child(args, img: int, tasks: int, conn) -> None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD fixed at 64 KiB: freed tensors leave RSS at once
        torch.set_num_threads(args.threads)
        gc.collect()
        libc.malloc_trim(0)
        rss_start = _rss_kb("VmRSS")
        model = build_sdlora(args, img, stored=tasks - 1)
        x, y, classes = _batch(args, img)
        step = train_step_fn(model, x, y, classes)
        step()  # warm-up: gradients and momentum buffers exist from here on
        gc.collect()
        libc.malloc_trim(0)
        rss_before = _rss_kb("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        step()
        peak = _rss_kb("VmHWM")
        conn.send({"peak_delta_mib": (peak - rss_before) / 1024, "state_mib": (rss_before - rss_start) / 1024,
                   "peak_rss_mib": peak / 1024})
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        conn.send({"error": repr(exc)})
    finally:
        conn.close()


def measure_memory(args, img: int, tasks: int) -> dict:
    if args.device.startswith("cuda"):
        model = build_sdlora(args, img, stored=tasks - 1)
        x, y, classes = _batch(args, img)
        step = train_step_fn(model, x, y, classes)
        step()
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        del model, step
        return {"peak_delta_mib": (peak - before) / 2**20, "state_mib": before / 2**20, "peak_rss_mib": peak / 2**20}
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_mem_child, args=(args, img, tasks, child))
    proc.start()
    child.close()
    res = parent.recv() if parent.poll(300) else {"error": "timeout"}
    proc.join(30)
    if proc.is_alive():
        proc.kill()
    return res


# ---------------------------------------------------------------------------------------- FLOPs
def count_flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


# ---------------------------------------------------------------------------------------- parameters
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


# ---------------------------------------------------------------------------------------- end to end
def end_to_end(args) -> list[dict]:
    """Wall time per method from compare.py runs: ``<root>/*/per_task.csv``, else a running job's ``parts/*.csv``."""
    rows = []
    for run_dir in sorted(p for p in Path(args.results_root).glob("*") if p.is_dir()):
        files = [run_dir / "per_task.csv"] if (run_dir / "per_task.csv").is_file() else \
            sorted((run_dir / "parts").glob("*.csv"))
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
    from torch.utils.data import DataLoader

    from avalanche_sdlora.data import split_cifar100

    img = 32 if args.quick else 128
    kw = dict(n_experiences=2, train_per_class=8, classes=list(range(4))) if args.quick else \
        dict(n_experiences=10, train_per_class=100)
    bm = split_cifar100(img_size=img, test_per_class=1, **kw)  # test split unused here: keep it small
    ds = bm.train_stream[0].dataset
    loader = DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=0,
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
        _sync(args.device)
        if i:  # first step is warm-up
            steps.append(time.perf_counter() - t0)
    t_step = statistics.median(steps)
    base = {"img_size": img, "setting": f"split_cifar100 exp0 ({len(ds)} images), batch {args.batch}, num_workers=0"}
    return [{**base, "measure": "data_loading_seconds_per_batch", "value": t_load, "unit": "s"},
            {**base, "measure": "data_train_step_seconds_per_batch", "value": t_step, "unit": "s"},
            {**base, "measure": "data_loading_share", "value": t_load / (t_load + t_step), "unit": "fraction"}]


# ---------------------------------------------------------------------------------------- main
def _hardware() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"}


def _fmt(v: float) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "n/a"
    if abs(v) >= 1e6 or (isinstance(v, float) and v.is_integer()):
        return f"{v:,.0f}"
    return f"{v:.3f}" if abs(v) < 100 else f"{v:,.0f}"


def main(argv: list[str] | None = None) -> dict[str, Path]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args([str(a) for a in argv])
    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = {"model": args.model, "device": args.device, "threads": args.threads}
    ratios, timings, memory, flops = [], [], [], []

    def ratio(img, measure, value, note=""):
        sense, target = TARGETS.get(measure, ("", float("nan")))
        ok = "" if not sense else bool(value >= target if sense == ">=" else value <= target)
        ratios.append({**common, "img_size": img, "measure": measure, "setting": f"batch={args.batch}",
                       "value": value, "unit": "ratio", "target": f"{sense} {target}" if sense else "",
                       "meets_target": ok, "note": note})
        print(f"[{img}px] {measure} = {value:.3f}" + (f"  (target {sense} {target}: {'OK' if ok else 'MISSED'})"
                                                      if sense else "") + (f"  [{note}]" if note else ""), flush=True)

    def phase(name):
        print(f"... {name} ({time.perf_counter() - t_start:.0f} s)", flush=True)

    # ---- memory first: a forked child per setting, before this process has built or run any model
    for img in args.img_sizes:
        phase(f"memory {img}px")
        for tasks in args.mem_tasks:
            res = measure_memory(args, img, tasks)
            if "error" in res:
                warnings.warn(f"memory at {tasks} tasks, {img}px failed: {res['error']}")
                res = {"peak_delta_mib": float("nan"), "state_mib": float("nan"), "peak_rss_mib": float("nan")}
            for k, v in res.items():
                memory.append({**common, "img_size": img, "measure": f"train_step_{k[:-4]}", "setting": f"tasks={tasks}",
                               "tasks": tasks, "value": v, "unit": "MiB",
                               "note": "CUDA max_memory_allocated" if args.device.startswith("cuda") else
                               "CPU VmHWM in a forked child (reset before the step), minus RSS before it"})
            print(f"[{img}px] train-step peak memory at {tasks} tasks: +{res['peak_delta_mib']:.1f} MiB "
                  f"(model/state {res['state_mib']:.1f} MiB)", flush=True)

    for img in args.img_sizes:
        phase(f"inference {img}px")
        x, y, classes = _batch(args, img)
        # ---- inference: merged SD-LoRA (10 tasks) vs frozen backbone vs L2P
        merged = build_sdlora(args, img, stored=10, current=False, merged=True)
        backbone = build_backbone(args, img, merged.head)
        backbone_copy = build_backbone(args, img, merged.head)  # A/A control: the noise floor
        l2p, l2p_label = build_l2p(args, img)
        unmerged = build_sdlora(args, img, stored=10, current=False)
        inf = {"backbone": backbone, "sdlora_merged": merged, l2p_label: l2p}
        t = interleaved({k: infer_fn(m, x) for k, m in {**inf, "backbone_copy": backbone_copy}.items()},
                        3 * args.reps, args.warmup, args.device, every={l2p_label: 3})
        for k, v in t.items():
            timings.append({**common, "img_size": img, "measure": "infer_images_per_second", "setting": k,
                            "value": args.batch / _median(v), "unit": "img/s", "reps": sum(s is not None for s in v)})
        note = "" if l2p_label == "l2p" else "L2P is a two-pass stand-in"
        ratio(img, "infer_throughput_ratio_backbone_copy_vs_backbone", paired_ratio(t["backbone"], t["backbone_copy"]),
              "A/A control: identical models, shows the timing noise")
        ratio(img, "infer_throughput_ratio_sdlora_merged_vs_backbone", paired_ratio(t["backbone"], t["sdlora_merged"]))
        ratio(img, "infer_throughput_ratio_l2p_vs_backbone", paired_ratio(t["backbone"], t[l2p_label]), note)
        ratio(img, "infer_throughput_ratio_sdlora_merged_vs_l2p", paired_ratio(t[l2p_label], t["sdlora_merged"]), note)

        phase(f"FLOPs {img}px")
        # ---- FLOPs per image (inference at this batch; the unmerged update is formed once per batch)
        for k, m in {**inf, "sdlora_unmerged_10tasks": unmerged}.items():
            f = count_flops(infer_fn(m, x)) / args.batch
            flops.append({**common, "img_size": img, "measure": "infer_flops_per_image", "setting": k, "value": f,
                          "unit": "FLOP", "note": f"torch FlopCounterMode, batch {args.batch}"})
        del merged, backbone, backbone_copy, l2p, unmerged, inf
        gc.collect()

        phase(f"training step {img}px")
        # ---- training step vs stored tasks, and vs plain LoRA
        head_src = build_sdlora(args, img, stored=0, current=False).head
        train = {f"sdlora_{n}stored": build_sdlora(args, img, stored=n) for n in args.train_tasks}
        train["seq_lora_single_pair"] = build_sdlora(args, img, stored=0, single_frozen_alpha=True)
        train["plain_lora"] = build_plain_lora(args, img, head_src)
        fns = {k: train_step_fn(m, x, y, classes) for k, m in train.items()}
        t = interleaved(fns, args.reps, args.warmup, args.device)
        for k, v in t.items():
            timings.append({**common, "img_size": img, "measure": "train_step_seconds", "setting": k,
                            "value": _median(v), "unit": "s", "reps": len(v)})
        one = t["sdlora_0stored"]
        ratio(img, "train_step_time_ratio_20tasks_vs_1task", paired_ratio(t["sdlora_20stored"], one))
        ratio(img, "train_step_time_ratio_50tasks_vs_1task", paired_ratio(t["sdlora_50stored"], one))
        ratio(img, "train_step_time_ratio_20tasks_vs_plain_lora", paired_ratio(t["sdlora_20stored"], t["plain_lora"]),
              "minimal LoRA: base(x), += B(Ax) on q and v")
        ratio(img, "train_step_time_ratio_20tasks_vs_seq_lora", paired_ratio(t["sdlora_20stored"],
                                                                             t["seq_lora_single_pair"]),
              "SDLoRAViT with one pair, alpha frozen")
        ratio(img, "train_step_time_ratio_1task_vs_plain_lora", paired_ratio(one, t["plain_lora"]))
        for k, fn in fns.items():
            flops.append({**common, "img_size": img, "measure": "train_step_flops_per_image", "setting": k,
                          "value": count_flops(fn) / args.batch, "unit": "FLOP",
                          "note": f"forward + backward, batch {args.batch}"})
        del train, fns
        gc.collect()

    # ---- parameters, end to end, data loading
    phase("parameters, end to end, data loading")
    params = [{**common, "img_size": "", **r} for r in params_per_task(args)]
    e2e = end_to_end(args)
    e2e = [{**common, "img_size": "", **r} for r in e2e]
    data = [{**common, **r} for r in data_loading_share(args)]
    for r in data:
        print(f"[{r.get('img_size', '')}px] {r['measure']} = {_fmt(r['value'])} {r['unit']}", flush=True)
    for r in e2e:
        if r["measure"] == "wall_total_seconds":
            print(f"end to end {r['setting']} {r['method']}: {r['value']:.0f} s per seed "
                  f"({'complete' if r['complete'] else 'incomplete'}, {r['source']})", flush=True)

    cols = ["model", "img_size", "measure", "setting", "value", "unit", "device", "threads"]
    frames = {"ratios": ratios, "timings": timings, "memory": memory, "flops": flops, "params": params,
              "end_to_end": e2e + data}
    paths = {}
    for name, rows in frames.items():
        df = pd.DataFrame.from_records(rows)
        if df.empty:
            df = pd.DataFrame(columns=cols)
        df = df[cols + [c for c in df.columns if c not in cols]]
        paths[name] = out / f"{name}.csv"
        atomic_write_csv(df, paths[name])
    paths["plot"] = out / "train_step_vs_tasks.png"
    _plot(pd.DataFrame.from_records(timings), args, paths["plot"])
    runtime = time.perf_counter() - t_start
    paths["readme"] = out / "README.md"
    atomic_write_text(paths["readme"], _readme(args, argv, frames, runtime))
    print(f"runtime {runtime:.0f} s; wrote {', '.join(str(p) for p in paths.values())}", flush=True)
    return paths


def _plot(timings: pd.DataFrame, args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    tr = timings[timings["measure"] == "train_step_seconds"]
    for img, g in tr.groupby("img_size"):
        s = g[g["setting"].str.match(r"sdlora_\d+stored")]
        n = s["setting"].str.extract(r"(\d+)")[0].astype(int)
        line = ax.plot(n, s["value"], marker="o", label=f"SD-LoRA, {img}px")[0]
        plain = g.loc[g["setting"] == "plain_lora", "value"]
        if len(plain):
            ax.axhline(float(plain.iloc[0]), ls="--", color=line.get_color(), alpha=0.6, label=f"plain LoRA, {img}px")
    ax.set_xlabel("stored tasks (plus the current pair)")
    ax.set_ylabel(f"train step time (s, batch {args.batch}, {args.threads} thread(s))")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    plt.close(fig)


def _table(rows: list[dict], cols: list[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r[c]) if isinstance(r.get(c), float) else str(r.get(c, ""))
                                       for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _readme(args, argv, frames, runtime) -> str:
    hw = _hardware()
    cmd = " ".join(["python -m benchmarks.speed"] + [shlex.quote(str(a)) for a in argv])
    mem = [r for r in frames["memory"] if r["measure"] == "train_step_peak_delta"]
    fl = [r for r in frames["flops"]]
    par = [r for r in frames["params"] if r["measure"] in ("learnable_adapter_params", "stored_params_total")
           and r["method"] != "sdlora-kd (upper bound = sdlora)"]
    wide = {}
    for r in par:
        wide.setdefault(r["task"], {"task": r["task"]})[f"{r['method']} {r['measure']}"] = r["value"]
    pcols = ["task"] + sorted({k for w in wide.values() for k in w if k != "task"})
    e2e = [r for r in frames["end_to_end"] if r["measure"] in ("wall_total_seconds", "train_seconds_per_experience",
                                                               "experiences_done_min",
                                                               "data_loading_share", "data_loading_seconds_per_batch",
                                                               "data_train_step_seconds_per_batch")]
    tim = [r for r in frames["timings"]]
    quick_note = "**--quick run: sizes are too small for the ratios to mean anything (a smoke test).**\n" \
        if args.quick else ""
    return f"""# SD-LoRA speed, memory, FLOPs and parameter cost

Command (from the project root): `{cmd}` — runtime {runtime:.0f} s.
{quick_note}
Hardware: {hw['cpu']} ({hw['logical_cpus']} logical CPUs, shared with other jobs), GPU: {hw['gpu']};
device `{args.device}`, torch threads {args.threads}, torch {hw['torch']}, Python {hw['python']}.
Model `{args.model}`, batch {args.batch}, {args.reps} interleaved repetitions (backbone vs merged
SD-LoRA: {3 * args.reps}) after {args.warmup} warm-up call(s);
every ratio is the median over repetitions of the per-repetition ratio of two models timed back to back
in one process; `infer_throughput_ratio_backbone_copy_vs_backbone` (two identical models, A/A) shows
the noise floor of the machine. SD-LoRA models: 10 (inference) or N (training) stored tasks with random non-zero B,
rank {args.rank}, a 100-class head (last 10 classes trainable); the backbone reference has the same head.

## Ratios

{_table(frames['ratios'], ['img_size', 'measure', 'value', 'target', 'meets_target', 'note'])}
## Timings (medians)

{_table(tim, ['img_size', 'measure', 'setting', 'value', 'unit'])}
## Peak memory of a training step (above the RSS before the step)

{_table(mem, ['img_size', 'setting', 'value', 'unit', 'note'])}
## FLOPs per image

{_table(fl, ['img_size', 'measure', 'setting', 'value', 'note'])}
## Parameters per task (adapter only; head rows in params.csv)

SD-LoRA-KD stores at most what SD-LoRA stores (a task is dropped only when it is absorbed), so
SD-LoRA's column is the KD upper bound. RR follows the paper's schedule (ranks 10,10,10,8,8,8,8,6,6,6).

{_table(list(wide.values()), pcols)}
## End to end

{_table(e2e, ['method', 'img_size', 'measure', 'setting', 'value', 'unit', 'complete']) if e2e else 'no per_task.csv found'}
Files: `ratios.csv`, `timings.csv`, `memory.csv`, `flops.csv`, `params.csv`, `end_to_end.csv`, `train_step_vs_tasks.png`.
"""


if __name__ == "__main__":
    main()
