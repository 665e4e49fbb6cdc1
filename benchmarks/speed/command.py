"""Speed, memory, FLOPs and parameter cost of SD-LoRA: ``python -m benchmarks.speed [--quick]``.

Every timing is a RATIO of two models measured in the same process, interleaved call by call in a
shuffled order after a warm-up; a ratio is the median over repetitions of the per-repetition ratio,
so load from other processes on the machine cancels as far as possible. Peak memory of a training
step is measured in a forked child per setting (CPU: peak RSS via /proc VmHWM, reset before the
step, with glibc's mmap threshold pinned so freed tensors leave RSS, and torch's own peak allocation from its
profiler's memory events; CUDA: max_memory_allocated), with the bytes autograd saves for backward.

Issue 32: step time, step memory and merged inference after 1, 10, 20 and 50 tasks (``TASKS``), as ratios to one
task (training) or to the frozen backbone (inference), and stored adapter numbers of SD-LoRA and RR at those counts.

``--peers`` adds the peer methods (issues 16, 17, 31: DualPrompt, CODA-Prompt, L2P, InfLoRA merged and
branch-summed, RanPAC, APER, SimpleCIL, CL-LoRA, MOS, CaRE, each built by its registered builder as during the last
of 10 tasks) to the same interleaved runs: forward passes per image (counted), FLOPs, throughput and training step
relative to the frozen backbone and to SD-LoRA, the per-experience analytic updates (MOS's and CaRE's classifier
alignment among them), stored state after 10 tasks by parts, and FLOPs of the paper's architecture
(``--paper-model``, random weights, not timed) to set beside the paper's Table 5.

Writes ``<out>/{ratios,timings,memory,flops,params,end_to_end}.csv`` (tidy rows: model, img_size,
measure, setting, value, unit, device, threads, ...), ``<out>/train_step_vs_tasks.png`` and
``<out>/README.md`` (default ``runs/perf``; ``results/perf`` is the README's). Modules: ``models`` (what is
measured), ``peers`` (the peer methods as measured), ``timing``, ``memory``, ``costs`` (parameters, runs' wall
times, data loading), ``report``.
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
from ..methods import get_method
from ..reports import write_csv
from .costs import data_loading_share, end_to_end, params_per_task, stored_after_tasks
from .memory import measure_memory
from .models import N_HEAD_TASKS, build_backbone, build_l2p, build_plain_lora, build_sdlora
from .peers import (CLAIM_TARGET, PAPER_GFLOPS, PAPER_SOURCE, PEER_EVERY, PROMPT_SETTINGS, SETTING_METHOD, SGD_PEERS,
                    UPDATE_IMAGES, build_peers, paper_architecture_models, stored_rows, train_steps)
from .report import fmt, plot, readme
from .timing import (batch, count_flops, count_inference_costs, infer_fn, interleaved, median, paired_ratio,
                     train_step_fn)

ROOT = Path(__file__).resolve().parent.parent.parent
# issue 32: the task counts costs are measured at (training: tasks learned, the last one being trained, i.e. TASKS-1
# stored directions and the current pair; inference: tasks finished, merged)
TASKS = (1, 10, 20, 50)
MEMORY_NOTES = {
    "peak_delta": "CPU VmHWM in a forked child (reset before the step), minus RSS before it",
    "torch_peak": "torch's CPU allocations during the step, peak above the start (its profiler's memory events)",
    "saved_activations": "bytes of the tensors autograd saves for backward that the model does not hold anyway",
}
# measure name -> (comparison, target, sense); ">=" means the ratio must be at least the target.
TARGETS = {
    "infer_throughput_ratio_sdlora_merged_vs_backbone": (">=", 0.98),
    "infer_throughput_ratio_sdlora_merged_vs_l2p": (">=", 1.9),
    "train_step_time_ratio_20tasks_vs_1task": ("<=", 1.10),
    # issue 32: cost flat in the number of tasks
    "train_step_time_ratio_50tasks_vs_1task": ("<=", 1.10),
    "train_step_peak_memory_ratio_50tasks_vs_1task": ("<=", 1.10),
    "train_step_torch_peak_ratio_50tasks_vs_1task": ("<=", 1.10),
    "train_step_saved_activations_ratio_50tasks_vs_1task": ("<=", 1.10),
    **{f"infer_throughput_ratio_sdlora_merged_{t}tasks_vs_backbone": (">=", 0.98) for t in (1, 20, 50)},
    "train_step_time_ratio_20tasks_vs_plain_lora": ("<=", 1.15),
    # --peers: the paper's claim that SD-LoRA's inference costs about half of every prompt method's
    **{f"infer_flops_ratio_{k}_vs_sdlora_merged": (">=", CLAIM_TARGET) for k in PROMPT_SETTINGS},
    **{f"infer_throughput_ratio_sdlora_merged_vs_{k}": (">=", CLAIM_TARGET) for k in PROMPT_SETTINGS},
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
    p.add_argument("--peers", action="store_true",
                   help="also measure the peer methods (DualPrompt, CODA-Prompt, L2P, InfLoRA, RanPAC, APER, "
                        "SimpleCIL, CL-LoRA, MOS, CaRE) in the same interleaved runs, and their FLOPs on --paper-model "
                        "(about doubles the runtime)")
    p.add_argument("--paper-model", default=None, help="--peers: timm ViT whose FLOPs per image are set beside the "
                   "paper's Table 5, random weights, not timed (default vit_base_patch16_224; --quick: --model)")
    p.add_argument("--paper-img-size", type=int, default=None, help="--peers: input size of --paper-model (default "
                   "224; --quick: 48)")
    p.add_argument("--ranpac-m", type=int, default=None, help="--peers: RanPAC's random-projection size M (default: "
                   "the method's, 10000; --quick: 64)")
    a = p.parse_args(argv)
    for flag in ("reps", "paper_img_size", "ranpac_m"):
        if getattr(a, flag) is not None and getattr(a, flag) <= 0:
            p.error(f"--{flag.replace('_', '-')} must be a positive integer, got {getattr(a, flag)}")
    if a.quick:
        a.img_size, a.batch_size = [32], 4
        a.reps = a.reps or 3
        a.paper_model, a.paper_img_size = a.paper_model or a.model, a.paper_img_size or 48
        a.ranpac_m = a.ranpac_m or 64
    a.reps = a.reps or 7
    a.paper_model, a.paper_img_size = a.paper_model or "vit_base_patch16_224", a.paper_img_size or 224
    a.warmup = 1  # per model; the first train step also creates the momentum buffers
    a.train_tasks = list(TASKS)  # tasks learned, the last one being trained
    a.mem_tasks = list(TASKS)
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
    peer_params, updates = [], {}  # --peers: stored state after 10 tasks; method -> Peer with a timed update

    def ratio(img, measure, value, note="", **fields):
        sense, target = TARGETS.get(measure, ("", float("nan")))
        ok = "" if not sense else bool(value >= target if sense == ">=" else value <= target)
        ratios.append({**common, "img_size": img, "measure": measure, "setting": f"batch={args.batch_size}",
                       "value": value, "unit": "ratio", "target": f"{sense} {target}" if sense else "",
                       "meets_target": ok, "note": note, **fields})
        where = f"{fields['model']} " if "model" in fields else ""
        print(f"[{where}{img}px] {measure} = {value:.3f}" + (f"  (target {sense} {target}: {'OK' if ok else 'MISSED'})"
                                                             if sense else "") + (f"  [{note}]" if note else ""),
              flush=True)

    def count_inference(img, models, x, model=None, note=None):
        """FLOPs and counted forward passes per image of each inference model (flops.csv rows)."""
        per_image = {}
        for k, m in models.items():
            f, passes, blocks = count_inference_costs(infer_fn(m, x), m, x.shape[0])
            per_image[k] = f / x.shape[0]
            base = {**common, "img_size": img, "setting": k, "batch": x.shape[0],
                    **({"model": model} if model else {})}
            flops.append({**base, "measure": "infer_flops_per_image", "value": per_image[k], "unit": "FLOP",
                          "note": note or f"torch FlopCounterMode, batch {x.shape[0]}"})
            if k in SETTING_METHOD:
                method = SETTING_METHOD[k]
                flops.append({**base, "measure": "infer_forward_passes_per_image", "value": passes, "unit": "count",
                              "trait": get_method(method).forward_passes(N_HEAD_TASKS) if method else 1,
                              "note": "images through the model's timm PatchEmbed modules per input image; trait: "
                                      "the method's registered inference_forward_passes"})
                flops.append({**base, "measure": "infer_backbone_block_passes_per_image", "value": blocks,
                              "unit": "count",
                              "note": "transformer block calls per input image over the ViT's depth (backbones' worth "
                                      "of blocks; CL-LoRA runs its later blocks once per task after one embedding)"})
        return per_image

    def phase(name):
        print(f"... {name} ({time.perf_counter() - t_start:.0f} s)", flush=True)

    # ---- memory first: a forked child per setting, before this process has built or run any model
    for img in args.img_size:
        phase(f"memory {img}px")
        for tasks in args.mem_tasks:
            res = measure_memory(args, img, tasks)
            if "error" in res:
                warnings.warn(f"memory at {tasks} tasks, {img}px failed: {res['error']}")
                res = {f"{k}_mib": float("nan") for k in ("peak_delta", "state", "peak_rss", *MEMORY_NOTES)}
            for k, v in res.items():
                cuda = args.device.startswith("cuda") and k != "saved_activations_mib"
                memory.append({**common, "img_size": img, "measure": f"train_step_{k[:-4]}", "setting": f"tasks={tasks}",
                               "tasks": tasks, "value": v, "unit": "MiB",
                               "note": "CUDA max_memory_allocated" if cuda else
                               MEMORY_NOTES.get(k[:-4], MEMORY_NOTES["peak_delta"])})
            print(f"[{img}px] train-step peak memory at {tasks} tasks: +{res['peak_delta_mib']:.1f} MiB "
                  f"(torch's allocations +{res['torch_peak_mib']:.1f} MiB, saved for backward "
                  f"{res['saved_activations_mib']:.1f} MiB; model/state {res['state_mib']:.1f} MiB)", flush=True)
        mem = {(r["measure"], r["tasks"]): r["value"] for r in memory if r["img_size"] == img}
        for tasks in args.mem_tasks[1:]:
            for k, name in (("peak_delta", "peak_memory"), ("torch_peak", "torch_peak"),
                            ("saved_activations", "saved_activations")):
                one = mem[(f"train_step_{k}", args.mem_tasks[0])]
                ratio(img, f"train_step_{name}_ratio_{tasks}tasks_vs_1task", mem[(f"train_step_{k}", tasks)] / one,
                      MEMORY_NOTES[k] if not args.device.startswith("cuda") or k == "saved_activations" else
                      "CUDA max_memory_allocated")

    for i, img in enumerate(args.img_size):
        x, y, classes = batch(args, img)
        peers = {}
        if args.peers:  # the first size is the protocol's: its setup runs InfLoRA on data and times the updates
            phase(f"peer methods {img}px: setup as during the last of 10 tasks")
            peers, data_source = build_peers(args, img, x, with_data=i == 0, time_update=i == 0)
            if i == 0:
                peer_params = stored_rows(peers, args)
                for r in peer_params:
                    if r["method"] == "inflora" and r["part"] == "subspace_bases":
                        r["note"] = f"DualGPM bases kept after 10 tasks of {data_source} at {img}px (data-dependent)"
                updates = {m: (p.update_seconds, p.update_note) for m, p in peers.items()
                           if p.update_seconds is not None}
                for m, (seconds, note) in updates.items():
                    timings.append({**common, "img_size": "", "measure": "analytic_update_seconds_per_experience",
                                    "setting": m, "value": seconds, "unit": "s", "reps": 1, "note": note})
                    print(f"{m}: analytic update {seconds:.3f} s per experience ({note})", flush=True)
        peer_inf = {k: m for p in peers.values() for k, m in p.infer.items() if k != "l2p"}  # L2P: the row below
        phase(f"inference {img}px")
        # ---- inference: merged SD-LoRA (10 tasks) vs frozen backbone vs L2P (and, --peers, the peer methods)
        merged = build_sdlora(args, img, stored=10, current=False, merged=True)
        backbone = build_backbone(args, img, merged.head)
        backbone_copy = build_backbone(args, img, merged.head)  # A/A control: the noise floor
        l2p = build_l2p(args, img)
        unmerged = build_sdlora(args, img, stored=10, current=False)
        inf = {"backbone": backbone, "sdlora_merged": merged, "l2p": l2p}
        # issue 32: merged SD-LoRA after 1, 20 and 50 tasks (10: sdlora_merged), and unmerged after each (FLOPs only)
        merged_at = {f"sdlora_merged_{n}tasks": build_sdlora(args, img, stored=n, current=False, merged=True)
                     for n in TASKS if n != 10}
        unmerged_at = {f"sdlora_unmerged_{n}tasks": build_sdlora(args, img, stored=n, current=False)
                       for n in TASKS if n != 10}
        t = interleaved({k: infer_fn(m, x) for k, m in {**inf, "backbone_copy": backbone_copy, **merged_at,
                                                         **peer_inf}.items()},
                        3 * args.reps, args.warmup, args.device,
                        every={"l2p": 3, **{k: PEER_EVERY["infer"] for k in peer_inf}})
        for k, v in t.items():
            timings.append({**common, "img_size": img, "measure": "infer_images_per_second", "setting": k,
                            "value": args.batch_size / median(v), "unit": "img/s", "reps": sum(s is not None for s in v)})
        ratio(img, "infer_throughput_ratio_backbone_copy_vs_backbone", paired_ratio(t["backbone"], t["backbone_copy"]),
              "A/A control: identical models, shows the timing noise")
        ratio(img, "infer_throughput_ratio_sdlora_merged_vs_backbone", paired_ratio(t["backbone"], t["sdlora_merged"]))
        for k in merged_at:
            ratio(img, f"infer_throughput_ratio_{k}_vs_backbone", paired_ratio(t["backbone"], t[k]))
        ratio(img, "infer_throughput_ratio_l2p_vs_backbone", paired_ratio(t["backbone"], t["l2p"]))
        ratio(img, "infer_throughput_ratio_sdlora_merged_vs_l2p", paired_ratio(t["l2p"], t["sdlora_merged"]))
        if peers:
            for k in peer_inf:
                ratio(img, f"infer_throughput_ratio_{k}_vs_backbone", paired_ratio(t["backbone"], t[k]))
            for k in ("dualprompt", "coda_prompt"):  # L2P's is above
                ratio(img, f"infer_throughput_ratio_sdlora_merged_vs_{k}", paired_ratio(t[k], t["sdlora_merged"]))
            backbone_pass = UPDATE_IMAGES * median(t["backbone"]) / args.batch_size
            for m, (seconds, note) in updates.items():
                ratio(img, f"analytic_update_time_ratio_{m}_vs_backbone_feature_pass", seconds / backbone_pass,
                      f"{note}; vs the frozen backbone's forward over those {UPDATE_IMAGES} images")

        phase(f"FLOPs {img}px")
        # ---- FLOPs per image (inference at this batch; the unmerged update is formed once per batch)
        per_image = count_inference(img, {**inf, "sdlora_unmerged_10tasks": unmerged, **merged_at, **unmerged_at,
                                          **peer_inf}, x)
        for k in ("sdlora_merged", "sdlora_unmerged_10tasks", *merged_at, *unmerged_at):
            ratio(img, f"infer_flops_ratio_{k}_vs_backbone", per_image[k] / per_image["backbone"],
                  "merged: the backbone's own FLOPs, whatever the number of tasks" if "_merged" in k else
                  "unmerged: the update formed once per batch, a cost that grows with the tasks")
        if peers:
            for k in ("l2p", *peer_inf):
                ratio(img, f"infer_flops_ratio_{k}_vs_backbone", per_image[k] / per_image["backbone"])
            for k in PROMPT_SETTINGS:
                ratio(img, f"infer_flops_ratio_{k}_vs_sdlora_merged", per_image[k] / per_image["sdlora_merged"])
        for m, p in peers.items():
            if p.extra_passes is not None:
                flops.append({**common, "img_size": img, "measure": "experience_extra_passes_per_train_image",
                              "setting": m, "value": p.extra_passes, "unit": "count",
                              "note": "forward passes over each training image outside the SGD steps, once per "
                                      "experience (InfLoRA: covariances before and after; RanPAC, APER, SimpleCIL: "
                                      "the classifier's feature pass), counted"})
        # methods trained by SGD steps stay for the training step below; the rest (RanPAC's G) go
        peers = {m: p for m, p in peers.items() if m in SGD_PEERS}
        for p in peers.values():
            p.infer.clear()
        del merged, backbone, backbone_copy, l2p, unmerged, inf, peer_inf, merged_at, unmerged_at
        gc.collect()

        phase(f"training step {img}px")
        # ---- training step vs stored tasks, and vs plain LoRA
        head_src = build_sdlora(args, img, stored=0, current=False).head
        train = {f"sdlora_{n - 1}stored": build_sdlora(args, img, stored=n - 1) for n in args.train_tasks}
        train["seq_lora_single_pair"] = build_sdlora(args, img, stored=0, single_frozen_alpha=True)
        train["plain_lora"] = build_plain_lora(args, img, head_src)
        fns = {k: train_step_fn(m, x, y, classes) for k, m in train.items()}
        peer_steps = train_steps(peers, args, img, x, y, classes, head_src) if peers else {}
        t = interleaved({**fns, **peer_steps}, args.reps, args.warmup, args.device,
                        every={k: PEER_EVERY["train"] for k in peer_steps})
        for k, v in t.items():
            timings.append({**common, "img_size": img, "measure": "train_step_seconds", "setting": k,
                            "value": median(v), "unit": "s", "reps": sum(s is not None for s in v)})
        one, twenty = t["sdlora_0stored"], t["sdlora_19stored"]
        for n in args.train_tasks[1:]:
            ratio(img, f"train_step_time_ratio_{n}tasks_vs_1task", paired_ratio(t[f"sdlora_{n - 1}stored"], one),
                  f"{n - 1} stored directions and the current pair")
        ratio(img, "train_step_time_ratio_20tasks_vs_plain_lora", paired_ratio(twenty, t["plain_lora"]),
              "minimal LoRA: base(x), += B(Ax) on q and v")
        ratio(img, "train_step_time_ratio_20tasks_vs_seq_lora", paired_ratio(twenty, t["seq_lora_single_pair"]),
              "SDLoRAViT with one pair, alpha frozen")
        ratio(img, "train_step_time_ratio_1task_vs_plain_lora", paired_ratio(one, t["plain_lora"]))
        for k in peer_steps:
            if k != "backbone_head_only":
                ratio(img, f"train_step_time_ratio_{k}_vs_backbone", paired_ratio(t[k], t["backbone_head_only"]),
                      "backbone: the frozen backbone training only its head's last chunk (one forward, no "
                      "backward through the ViT)")
            if k not in ("backbone_head_only", "sdlora_9stored"):
                ratio(img, f"train_step_time_ratio_{k}_vs_sdlora", paired_ratio(t[k], t["sdlora_9stored"]),
                      "SD-LoRA in its 10th task (9 stored directions + the current pair)" +
                      ("; first session only (later tasks train nothing)" if k.endswith("first_session") else ""))
        for k, fn in {**fns, **peer_steps}.items():
            flops.append({**common, "img_size": img, "measure": "train_step_flops_per_image", "setting": k,
                          "value": count_flops(fn) / args.batch_size, "unit": "FLOP",
                          "note": f"forward + backward, batch {args.batch_size}"})
        del train, fns, peer_steps, peers
        gc.collect()

    if args.peers:
        phase(f"FLOPs of {args.paper_model} at {args.paper_img_size}px (random weights, not timed)")
        note = "random weights, batch 1, FLOPs only (not timed)"
        fields = {"model": args.paper_model, "setting": "batch=1"}
        paper = {}
        for k, m, xp in paper_architecture_models(args):
            paper.update(count_inference(args.paper_img_size, {k: m}, xp, model=args.paper_model, note=note))
            print(f"[{args.paper_model} {args.paper_img_size}px] {k}: {paper[k] / 1e9:.2f} GFLOPs per image"
                  + (f" (paper: {PAPER_GFLOPS[k]})" if k in PAPER_GFLOPS else ""), flush=True)
            del m
            gc.collect()
        for k in paper:
            if k != "backbone":
                ratio(args.paper_img_size, f"infer_flops_ratio_{k}_vs_backbone", paper[k] / paper["backbone"],
                      note, **fields)
        for k in PROMPT_SETTINGS:
            paper_ratio = PAPER_GFLOPS[k] / PAPER_GFLOPS["sdlora_merged"]
            ratio(args.paper_img_size, f"infer_flops_ratio_{k}_vs_sdlora_merged", paper[k] / paper["sdlora_merged"],
                  f"{note}; paper: {paper_ratio:.3f} ({PAPER_SOURCE})", **fields)

    # ---- parameters, end to end, data loading
    phase("parameters, end to end, data loading")
    params = [{**common, "img_size": "", **r} for r in params_per_task(args) + stored_after_tasks(args, TASKS)
              + peer_params]
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
        for c in ("batch", "trait"):  # integers in rows that have them (NaN elsewhere would make them floats)
            if c in df:
                df[c] = df[c].astype("Int64")
        paths[name] = out / f"{name}.csv"
        write_csv(df, paths[name])
    paths["plot"] = out / "train_step_vs_tasks.png"
    plot(pd.DataFrame.from_records(timings), args, paths["plot"])
    runtime = time.perf_counter() - t_start
    paths["readme"] = out / "README.md"
    write_text(paths["readme"], readme(args, argv, frames, runtime))
    print(f"runtime {runtime:.0f} s; wrote {', '.join(str(p) for p in paths.values())}", flush=True)
    return paths


