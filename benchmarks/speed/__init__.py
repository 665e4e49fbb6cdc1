"""Speed, memory, FLOPs and parameter cost of SD-LoRA: ``python -m benchmarks.speed [--quick]``.

Every timing is a RATIO of two models measured in the same process, interleaved call by call in a
shuffled order after a warm-up; a ratio is the median over repetitions of the per-repetition ratio,
so load from other processes on the machine cancels as far as possible. Peak memory of a training
step is measured in a forked child per setting (CPU: peak RSS via /proc VmHWM, reset before the
step, with glibc's mmap threshold pinned so freed tensors leave RSS; CUDA: max_memory_allocated).

Writes ``<out>/{ratios,timings,memory,flops,params,end_to_end}.csv`` (tidy rows: model, img_size,
measure, setting, value, unit, device, threads, ...), ``<out>/train_step_vs_tasks.png`` and
``<out>/README.md`` (default ``runs/perf``; ``results/perf`` is the README's). Modules: ``models`` (what is
measured), ``timing``, ``memory``, ``costs`` (parameters, runs' wall times, data loading), ``report``.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import torch

from avalanche_sdlora.atomic import write_text

from ..compare import Parser
from ..config import add_run_flags
from ..reports import write_csv
from .costs import data_loading_share, end_to_end, params_per_task
from .memory import measure_memory
from .models import build_backbone, build_l2p, build_plain_lora, build_sdlora
from .report import fmt, plot, readme
from .timing import batch, count_flops, infer_fn, interleaved, median, paired_ratio, train_step_fn

ROOT = Path(__file__).resolve().parent.parent.parent
# measure name -> (comparison, target, sense); ">=" means the ratio must be at least the target.
TARGETS = {
    "infer_throughput_ratio_sdlora_merged_vs_backbone": (">=", 0.98),
    "infer_throughput_ratio_sdlora_merged_vs_l2p": (">=", 1.9),
    "train_step_time_ratio_20tasks_vs_1task": ("<=", 1.10),
    "train_step_time_ratio_20tasks_vs_plain_lora": ("<=", 1.15),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = Parser(prog="python -m benchmarks.speed", description=__doc__.split("\n\n")[0])
    add_run_flags(p, only=("model", "checkpoint", "img_size", "batch_size", "rank", "device", "threads"),
                  lists=("img_size",), defaults={"model": "vit_tiny_patch16_224", "img_size": [128, 224],
                                                 "batch_size": 32, "rank": 10, "device": "cpu", "threads": 1})
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per training model (default 7; --quick "
                   "3); backbone vs merged SD-LoRA inference gets 3x as many, L2P the same number")
    p.add_argument("--out", default="runs/perf", help="output folder (default: runs/perf, ignored by git; "
                   "results/perf is the README's)")
    p.add_argument("--results-root", default=str(ROOT / "results" / "cifar100-tiny128"),
                   help="folder of compare run folders (<root>/*/per_task.csv) for the end-to-end wall times")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repetitions (< 60 s; for tests)")
    a = p.parse_args(argv)
    if a.quick:
        a.img_size, a.batch_size = [32], 4
        a.reps = a.reps or 3
    a.reps = a.reps or 7
    a.warmup = 1  # per model; the first train step also creates the momentum buffers
    a.train_tasks = [0, 10, 20, 50]  # stored tasks (+ the current pair)
    a.mem_tasks = [1, 10, 20, 50]  # tasks learned, the last one being trained
    return a


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
        ratios.append({**common, "img_size": img, "measure": measure, "setting": f"batch={args.batch_size}",
                       "value": value, "unit": "ratio", "target": f"{sense} {target}" if sense else "",
                       "meets_target": ok, "note": note})
        print(f"[{img}px] {measure} = {value:.3f}" + (f"  (target {sense} {target}: {'OK' if ok else 'MISSED'})"
                                                      if sense else "") + (f"  [{note}]" if note else ""), flush=True)

    def phase(name):
        print(f"... {name} ({time.perf_counter() - t_start:.0f} s)", flush=True)

    # ---- memory first: a forked child per setting, before this process has built or run any model
    for img in args.img_size:
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

    for img in args.img_size:
        phase(f"inference {img}px")
        x, y, classes = batch(args, img)
        # ---- inference: merged SD-LoRA (10 tasks) vs frozen backbone vs L2P
        merged = build_sdlora(args, img, stored=10, current=False, merged=True)
        backbone = build_backbone(args, img, merged.head)
        backbone_copy = build_backbone(args, img, merged.head)  # A/A control: the noise floor
        l2p = build_l2p(args, img)
        unmerged = build_sdlora(args, img, stored=10, current=False)
        inf = {"backbone": backbone, "sdlora_merged": merged, "l2p": l2p}
        t = interleaved({k: infer_fn(m, x) for k, m in {**inf, "backbone_copy": backbone_copy}.items()},
                        3 * args.reps, args.warmup, args.device, every={"l2p": 3})
        for k, v in t.items():
            timings.append({**common, "img_size": img, "measure": "infer_images_per_second", "setting": k,
                            "value": args.batch_size / median(v), "unit": "img/s", "reps": sum(s is not None for s in v)})
        ratio(img, "infer_throughput_ratio_backbone_copy_vs_backbone", paired_ratio(t["backbone"], t["backbone_copy"]),
              "A/A control: identical models, shows the timing noise")
        ratio(img, "infer_throughput_ratio_sdlora_merged_vs_backbone", paired_ratio(t["backbone"], t["sdlora_merged"]))
        ratio(img, "infer_throughput_ratio_l2p_vs_backbone", paired_ratio(t["backbone"], t["l2p"]))
        ratio(img, "infer_throughput_ratio_sdlora_merged_vs_l2p", paired_ratio(t["l2p"], t["sdlora_merged"]))

        phase(f"FLOPs {img}px")
        # ---- FLOPs per image (inference at this batch; the unmerged update is formed once per batch)
        for k, m in {**inf, "sdlora_unmerged_10tasks": unmerged}.items():
            f = count_flops(infer_fn(m, x)) / args.batch_size
            flops.append({**common, "img_size": img, "measure": "infer_flops_per_image", "setting": k, "value": f,
                          "unit": "FLOP", "note": f"torch FlopCounterMode, batch {args.batch_size}"})
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
                            "value": median(v), "unit": "s", "reps": len(v)})
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
                          "value": count_flops(fn) / args.batch_size, "unit": "FLOP",
                          "note": f"forward + backward, batch {args.batch_size}"})
        del train, fns
        gc.collect()

    # ---- parameters, end to end, data loading
    phase("parameters, end to end, data loading")
    params = [{**common, "img_size": "", **r} for r in params_per_task(args)]
    e2e = end_to_end(args)
    e2e = [{**common, "img_size": "", **r} for r in e2e]
    data = [{**common, **r} for r in data_loading_share(args)]
    for r in data:
        print(f"[{r.get('img_size', '')}px] {r['measure']} = {fmt(r['value'])} {r['unit']}", flush=True)
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
        write_csv(df, paths[name])
    paths["plot"] = out / "train_step_vs_tasks.png"
    plot(pd.DataFrame.from_records(timings), args, paths["plot"])
    runtime = time.perf_counter() - t_start
    paths["readme"] = out / "README.md"
    write_text(paths["readme"], readme(args, argv, frames, runtime))
    print(f"runtime {runtime:.0f} s; wrote {', '.join(str(p) for p in paths.values())}", flush=True)
    return paths


