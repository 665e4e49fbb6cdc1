"""The speed run's README.md and plot (written atomically, tables by :func:`benchmarks.reports.markdown_grid`)."""

from __future__ import annotations

import math
import os
import platform
import shlex
from argparse import Namespace
from pathlib import Path

import pandas as pd
import torch

from ..machine import cpu_name
from ..reports import markdown_grid, save_figure
from .peers import CLAIM_TARGET, PAPER_GFLOPS, PAPER_SOURCE, PEER_EVERY, PROMPT_SETTINGS, SETTING_METHOD


def fmt(v: float) -> str:
    """A table cell: n/a for nan, thousands separators for large or whole numbers, else 3 decimals."""
    if isinstance(v, float) and math.isnan(v):
        return "n/a"
    if abs(v) >= 1e6 or (isinstance(v, float) and v.is_integer()):
        return f"{v:,.0f}"
    return f"{v:.3f}" if abs(v) < 100 else f"{v:,.0f}"


def table(rows: list[dict], cols: list[str]) -> str:
    """A Markdown table of ``cols`` of ``rows`` (floats through :func:`fmt`)."""
    return markdown_grid(cols, [[fmt(r[c]) if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols]
                                for r in rows])


def plot(timings: pd.DataFrame, args: Namespace, path: Path) -> None:
    """Train-step time against the number of stored tasks, per image size, with plain LoRA as a line."""
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
    ax.set_ylabel(f"train step time (s, batch {args.batch_size}, {args.threads} thread(s))")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path, dpi=110)


def _value(rows: list[dict], **match) -> float:
    """The value of the one row matching ``match`` (nan when there is none)."""
    for r in rows:
        if all(str(r.get(k)) == str(v) for k, v in match.items()):
            return r["value"]
    return float("nan")


def _g(v: float) -> float:
    return v / 1e9


def _nth(n: int) -> str:
    return {1: "", 2: "2nd", 3: "3rd"}.get(n, f"{n}th")


def _cols(rows: list[dict]) -> list[str]:
    return list(rows[0]) if rows else []


# Column names of the --peers tables; "x REF" is a ratio to REF (REF = 1).
FLOPS_VS_SD, PAPER_VS_SD = "FLOPs/img (x SD-LoRA)", "paper FLOPs/img (x SD-LoRA)"
SD_SPEED_VS = "SD-LoRA img/s (x this method's)"


def _inference_rows(args: Namespace, fl: list[dict], ra: list[dict], ti: list[dict]) -> list[dict]:
    """Per inference setting of this run: counted forward passes, FLOPs and throughput, and both relative to the
    frozen backbone (the backbone's own rows are 1 by definition)."""
    here = {"model": args.model, "batch": args.batch_size}  # this run's rows (the paper architecture's have batch 1)
    here_ratio = {"model": args.model, "setting": f"batch={args.batch_size}"}
    rows = []
    for img in args.img_size:
        for k in SETTING_METHOD:
            passes = [r for r in fl if r["measure"] == "infer_forward_passes_per_image" and r["setting"] == k
                      and r["img_size"] == img and r.get("batch") == args.batch_size and r["model"] == args.model]
            ref = k == "backbone"
            rows.append({
                "img_size": img, "setting": k,
                "forward passes/img (counted)": passes[0]["value"] if passes else float("nan"),
                "registered passes": str(passes[0]["trait"]) if passes else "",
                "backbones' worth of blocks/img": _value(fl, **here, img_size=img, setting=k,
                                                         measure="infer_backbone_block_passes_per_image"),
                "GFLOPs/img": _g(_value(fl, **here, img_size=img, setting=k, measure="infer_flops_per_image")),
                "FLOPs/img (x backbone)": 1.0 if ref else
                _value(ra, **here_ratio, img_size=img, measure=f"infer_flops_ratio_{k}_vs_backbone"),
                "img/s": _value(ti, img_size=img, setting=k, measure="infer_images_per_second"),
                "img/s (x backbone)": 1.0 if ref else
                _value(ra, img_size=img, measure=f"infer_throughput_ratio_{k}_vs_backbone")})
    return rows


def tasks_rows(args: Namespace, frames: dict[str, list[dict]]) -> list[dict]:
    """Issue 32: per image size and number of tasks, every cost relative to the same cost after one task (training)
    or to the frozen backbone (inference)."""
    ra = frames["ratios"]
    rows = []
    for img in args.img_size:
        for n in args.train_tasks:
            def r(measure: str) -> float:
                return 1.0 if n == 1 and "vs_1task" in measure else _value(ra, img_size=img, measure=measure)

            merged = "sdlora_merged" if n == 10 else f"sdlora_merged_{n}tasks"
            unmerged = f"sdlora_unmerged_{n}tasks"
            rows.append({"img_size": img, "tasks": n,
                         "step time (x 1 task)": r(f"train_step_time_ratio_{n}tasks_vs_1task"),
                         "step peak RSS (x 1 task)": r(f"train_step_peak_memory_ratio_{n}tasks_vs_1task"),
                         "step peak torch CPU/CUDA alloc (x 1 task)": r(f"train_step_torch_peak_ratio_{n}tasks_vs_1task"),
                         "saved for backward (x 1 task)": r(f"train_step_saved_activations_ratio_{n}tasks_vs_1task"),
                         "merged img/s (x backbone)": r(f"infer_throughput_ratio_{merged}_vs_backbone"),
                         "merged FLOPs (x backbone)": r(f"infer_flops_ratio_{merged}_vs_backbone"),
                         "unmerged FLOPs (x backbone)": r(f"infer_flops_ratio_{unmerged}_vs_backbone")})
    return rows


def _stored_after_rows(params: list[dict]) -> list[dict]:
    wide: dict[int, dict] = {}
    for r in (r for r in params if r["measure"] == "stored_adapter_params_after_tasks"):
        wide.setdefault(r["task"], {"tasks": r["task"]})[r["method"]] = float(r["value"])
    for w in wide.values():
        w["sdlora-rr (x sdlora)"] = w.get("sdlora-rr", float("nan")) / w.get("sdlora", float("nan"))
    return list(wide.values())


TRAIN_SETTINGS = ("backbone_head_only", "sdlora_9stored", "dualprompt", "coda_prompt", "l2p", "inflora", "cl_lora",
                  "mos", "care", "ranpac_first_session", "aper_first_session")


def _training_rows(args: Namespace, fl: list[dict], ra: list[dict], ti: list[dict]) -> list[dict]:
    """Per method: the median seconds of one training step of its last task, relative to the frozen backbone's
    head-only step and to SD-LoRA's 10th-task step, and its forward + backward FLOPs."""
    rows = []
    for img in args.img_size:
        for k in TRAIN_SETTINGS:
            rows.append({
                "img_size": img, "setting": k,
                "s/step": _value(ti, img_size=img, setting=k, measure="train_step_seconds"),
                "s/step (x backbone)": 1.0 if k == "backbone_head_only" else
                _value(ra, img_size=img, measure=f"train_step_time_ratio_{k}_vs_backbone"),
                "s/step (x SD-LoRA)": 1.0 if k == "sdlora_9stored" else
                _value(ra, img_size=img, measure=f"train_step_time_ratio_{k}_vs_sdlora"),
                "train GFLOPs/img (fwd + bwd)": _g(_value(fl, img_size=img, setting=k,
                                                          measure="train_step_flops_per_image"))})
    return rows


def _update_rows(args: Namespace, fl: list[dict], ra: list[dict], ti: list[dict]) -> list[dict]:
    """Per method with an analytic per-experience update: its seconds, relative to the backbone's forward pass
    over the same images, and the forward passes per training image it needs outside the SGD steps."""
    rows = []
    for r in (r for r in ti if r["measure"] == "analytic_update_seconds_per_experience"):
        m = r["setting"]
        row = {"method": m, "s/experience": r["value"], "what is timed": r["note"],
               "extra forward passes/train img": _value(fl, img_size=args.img_size[0], setting=m,
                                                        measure="experience_extra_passes_per_train_image")}
        for img in args.img_size:
            row[f"s (x backbone pass), {img}px"] = _value(
                ra, img_size=img, measure=f"analytic_update_time_ratio_{m}_vs_backbone_feature_pass")
        rows.append(row)
    return rows


def _claim_rows(args: Namespace, fl: list[dict], ra: list[dict]) -> list[dict]:
    """FLOPs per image relative to merged SD-LoRA: the paper architecture's settings beside Table 5's numbers, then
    this run's prompt methods with SD-LoRA's measured throughput relative to theirs."""
    nan = float("nan")
    there = {"model": args.paper_model, "img_size": args.paper_img_size, "batch": 1,
             "measure": "infer_flops_per_image"}
    sd = _value(fl, **there, setting="sdlora_merged")
    rows = [{"model": args.paper_model, "img_size": args.paper_img_size, "setting": k,
             "GFLOPs/img": _g(_value(fl, **there, setting=k)), FLOPS_VS_SD: _value(fl, **there, setting=k) / sd,
             "paper GFLOPs/img": PAPER_GFLOPS.get(k, nan),
             PAPER_VS_SD: PAPER_GFLOPS.get(k, nan) / PAPER_GFLOPS["sdlora_merged"], SD_SPEED_VS: nan}
            for k in ("backbone", "sdlora_merged", "inflora_merged", "inflora_branches", *PROMPT_SETTINGS,
                      "cl_lora", "mos", "care")]
    here = {"model": args.model, "batch": args.batch_size, "measure": "infer_flops_per_image"}
    for img in args.img_size:
        for k in PROMPT_SETTINGS:
            rows.append({"model": args.model, "img_size": img, "setting": k,
                         "GFLOPs/img": _g(_value(fl, **here, img_size=img, setting=k)),
                         FLOPS_VS_SD: _value(ra, model=args.model, setting=f"batch={args.batch_size}", img_size=img,
                                             measure=f"infer_flops_ratio_{k}_vs_sdlora_merged"),
                         "paper GFLOPs/img": nan, PAPER_VS_SD: nan,
                         SD_SPEED_VS: _value(ra, img_size=img, measure=f"infer_throughput_ratio_sdlora_merged_vs_{k}")})
    return rows


def _range(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.2f}x" if round(lo, 2) == round(hi, 2) else f"{lo:.2f}-{hi:.2f}x"


def _below(rows: list[dict], col: str, target: float) -> str:
    """'setting (ratio, model at img px)' for each row whose ``col`` is below ``target``, comma-separated."""
    return ", ".join(f"{r['setting']} ({r[col]:.3f}x, {r['model']} at {r['img_size']} px)" for r in rows
                     if r[col] < target)


def claim_verdict(claim: list[dict], target: float = CLAIM_TARGET) -> str:
    """The verdict on the paper's claim, from the measured rows of :func:`_claim_rows`: it holds when every prompt
    method's FLOPs per image are at least ``target`` times merged SD-LoRA's on every model and size measured (the
    claim is Table 5's, a FLOP count); the timed throughput ratios follow as a second, load-dependent check."""
    def measured(col: str) -> list[dict]:
        return [r for r in claim if r["setting"] in PROMPT_SETTINGS and not math.isnan(r[col])]

    flops, speed = measured(FLOPS_VS_SD), measured(SD_SPEED_VS)
    if not flops:
        return "**Not measured**: no prompt method's FLOPs per image were counted."
    low = _below(flops, FLOPS_VS_SD, target)
    text = (f"**{'Does not hold' if low else 'Holds'}** (FLOPs): every prompt method costs "
            f"{_range([r[FLOPS_VS_SD] for r in flops])} merged SD-LoRA's FLOPs per image on every model and input "
            f"size measured (target: at least {target}x" + (f"; below it: {low})." if low else ")."))
    if speed:
        slow = _below(speed, SD_SPEED_VS, target)
        text += (f" Timed here, merged SD-LoRA processes {_range([r[SD_SPEED_VS] for r in speed])} as many images "
                 f"per second as each prompt method (same target: {'missed by ' + slow if slow else 'met'}; "
                 "throughput depends on the machine and its load, FLOPs do not).")
    return text


def _stored_table(pa: list[dict]) -> list[dict]:
    """One row per method: its stored numbers after 10 tasks (its ``stored_params``) and their parts."""
    stored = {}
    for r in (r for r in pa if r.get("measure") == "stored_params_after_10_tasks"):
        w = stored.setdefault(r["method"], {"method": r["method"], "stored numbers": float("nan"), "parts": "",
                                            "note": ""})
        if r["part"] == "total":
            w["stored numbers"] = float(r["value"])
        else:
            w["parts"] += f"{'; ' if w['parts'] else ''}{r['part']} {int(r['value']):,}"
        if r.get("note"):
            w["note"] = f"{w['note']}; {r['note']}" if w["note"] else r["note"]
    rows = list(stored.values())
    sd = next((w["stored numbers"] for w in rows if w["method"] == "sdlora"), float("nan"))
    for w in rows:
        w["x SD-LoRA"] = w["stored numbers"] / sd
    return [{k: w[k] for k in ("method", "stored numbers", "x SD-LoRA", "parts", "note")} for w in rows]


def peer_section(args: Namespace, frames: dict[str, list[dict]]) -> str:
    """The README's --peers section: inference, training step, analytic updates, the paper's cost claim (its
    verdict computed from the measured rows) and stored state, each table naming its units and reference."""
    fl, ra, ti = frames["flops"], frames["ratios"], frames["timings"]
    inf, train = _inference_rows(args, fl, ra, ti), _training_rows(args, fl, ra, ti)
    update, claim = _update_rows(args, fl, ra, ti), _claim_rows(args, fl, ra)
    stored = _stored_table(frames["params"])
    return f"""
## Peer methods (`--peers`; issues 16, 17)

Each method is built by its registered builder (`benchmarks.methods`, the reference recipe) and set up as during the
last of 10 tasks (prompts or components of 10 tasks, 10 InfLoRA branches, RanPAC and APER adapted with their
classifier fitted, 100-class heads; CL-LoRA, MOS and CaRE with their per-task modules of 10 tasks and the class
statistics of 100 classes, trained by one iteration of their own strategy's forward, criterion, backward and
optimizer step); values training would set are random, since costs depend on shapes only. The
peers are timed in every {_nth(PEER_EVERY['infer'])} inference and every {_nth(PEER_EVERY['train'])} training
repetition, interleaved with the backbone and SD-LoRA. Columns "(x REF)" are ratios to REF (REF = 1): for times
and FLOPs above 1 means costlier, for img/s above 1 means faster. GFLOPs/img: 10^9 floating-point operations per
image (torch's FlopCounterMode); img/s: images per second (median); s: seconds (median).

Forward passes are counted (images through every timm `PatchEmbed` per input image) and must equal the method's
registered `inference_forward_passes` (after 10 tasks: MOS one pass per stored adapter, 10; CaRE one pass per known
task plus one with the task unknown, 11). "backbones' worth of blocks/img" counts transformer block calls per image
over the ViT's depth: it differs from the passes where blocks run more than once per embedding, as CL-LoRA's
(one embedding and its 6 shared blocks, then its 6 later blocks once per task: 6 + 6 x 10 = 66 blocks, 5.5
backbones). `inflora_branches` sums its 10 branches into the weights once per batch (the
unmerged form); `inflora_merged` has them merged, as SD-LoRA.

### Inference, relative to the frozen backbone (`{args.model}`, batch {args.batch_size})

{table(inf, _cols(inf))}
### Training step of the last task (each method's own loss and optimizer, batch {args.batch_size})

Reference rows: `backbone_head_only` is the frozen backbone training only its head's last chunk (one forward, no
backward through the ViT); `sdlora_9stored` is SD-LoRA in its 10th task (9 stored directions and the current pair).
RanPAC and APER train only in the first session, so theirs is that session's step.

{table(train, _cols(train))}
### Per-experience analytic updates

Timed once, on one experience's worth of features (10 classes x 100 images). "s (x backbone pass)": the update's
seconds over those of the frozen backbone's forward over the same images; "extra forward passes/train img":
forward passes over each training image outside the SGD steps (InfLoRA's two covariance passes, the classifiers'
feature pass), counted. MOS and CaRE: their classifier alignment after the 10th task, on features drawn from the 100
stored class Gaussians (n/a: their statistics and prototype passes are not counted here).

{table(update, _cols(update)) if update else 'none timed'}
### The paper's claim: SD-LoRA's inference is about 2x cheaper than every prompt method's

`{args.paper_model}` at {args.paper_img_size} px: random weights, batch 1, FLOPs only (not timed; FLOPs depend on
the architecture alone), beside the paper's numbers: {PAPER_SOURCE}. `{args.model}` rows: this run's models (FLOPs
at batch {args.batch_size}, throughput timed). L2P prepends prompt_length x top_k prompt tokens to the patch tokens,
so with few patches (small inputs) its ratio is well above 2; with ViT-B/16's 196 patches it is close to 2. The
rows of CL-LoRA, MOS and CaRE (issue 31, after 10 tasks) are set beside the claim, not part of it.

{claim_verdict(claim)}

{table(claim, _cols(claim))}
### Stored state after 10 tasks (numbers kept beyond the frozen backbone, each method's `stored_params`)

Counts of numbers stored (each method's `stored_params`), and their ratio to SD-LoRA's (x SD-LoRA).

{table(stored, _cols(stored))}"""


def readme(args: Namespace, argv: list[str], frames: dict[str, list[dict]], runtime: float) -> str:
    """The run's README.md: command, machine, every table, and with ``--peers`` the peer methods' section."""
    cmd = " ".join(["python -m benchmarks.speed"] + [shlex.quote(str(a)) for a in argv])
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    mem = [r for r in frames["memory"] if r["measure"] in ("train_step_peak_delta", "train_step_torch_peak",
                                                           "train_step_saved_activations")]
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
    quick_note = "**--quick run: sizes are too small for the ratios to mean anything (a smoke test).**\n" \
        if args.quick else ""
    return f"""# SD-LoRA speed, memory, FLOPs and parameter cost

Command (from the project root): `{cmd}` — runtime {runtime:.0f} s.
{quick_note}
Hardware: {cpu_name()} ({os.cpu_count()} logical CPUs, shared with other jobs), GPU: {gpu};
device `{args.device}`, torch threads {args.threads}, torch {torch.__version__}, Python {platform.python_version()}.
Model `{args.model}`, batch {args.batch_size}, {args.reps} interleaved repetitions (backbone vs merged
SD-LoRA: {3 * args.reps}) after {args.warmup} warm-up call(s);
every ratio is the median over repetitions of the per-repetition ratio of two models timed back to back
in one process; `infer_throughput_ratio_backbone_copy_vs_backbone` (two identical models, A/A) shows
the noise floor of the machine. SD-LoRA models: N finished tasks (inference; 10 where not named) or N - 1 stored
tasks and the current pair (training) with random non-zero B,
rank {args.rank}, a 100-class head (last 10 classes trainable); the backbone reference has the same head.

## Cost against the number of tasks (issue 32)

Training: after N tasks, the step of the N-th (N-1 stored directions and the current pair), each cost over the same
cost in the first task: wall time (interleaved, median), peak RSS above the RSS before the step (forked child),
torch's own peak allocation during the step (CPU: its profiler's memory events; CUDA: max_memory_allocated) and the
bytes of the tensors autograd saves for backward that the model does not hold anyway. Inference: merged SD-LoRA
after N tasks against the frozen backbone (timed, and FLOPs counted), and the unmerged model's FLOPs (the update
formed once per batch). Target: 1.10 for training at 50 tasks; merged inference equal to the backbone.

{table(tasks_rows(args, frames), _cols(tasks_rows(args, frames)))}
Stored adapter numbers (directions, scales, magnitudes; the head is the same for every method) after N tasks, rank
{args.rank}; RR with the paper's schedule (its last rank, 6, kept after task 7). KD stores at most SD-LoRA's (one
task fewer per absorbed task; how many it absorbs only training tells).

{table(_stored_after_rows(frames['params']), _cols(_stored_after_rows(frames['params'])))}
## Ratios

{table(frames['ratios'], ['img_size', 'measure', 'value', 'target', 'meets_target', 'note'])}
## Timings (medians)

{table(frames['timings'], ['img_size', 'measure', 'setting', 'value', 'unit'])}
## Peak memory of a training step (above the RSS before the step)

{table(mem, ['img_size', 'measure', 'setting', 'value', 'unit', 'note'])}
## FLOPs per image

{table(frames['flops'], ['img_size', 'measure', 'setting', 'value', 'note'])}
## Parameters per task (adapter only; head rows in params.csv)

SD-LoRA-KD stores at most what SD-LoRA stores (a task is dropped only when it is absorbed), so
SD-LoRA's column is the KD upper bound. RR follows the paper's schedule (ranks 10,10,10,8,8,8,8,6,6,6).

{table(list(wide.values()), pcols)}
## End to end

{table(e2e, ['method', 'img_size', 'measure', 'setting', 'value', 'unit', 'complete']) if e2e else 'no per_task.csv found'}
{peer_section(args, frames) if getattr(args, "peers", False) else ""}
Files: `ratios.csv`, `timings.csv`, `memory.csv`, `flops.csv`, `params.csv`, `end_to_end.csv`, `train_step_vs_tasks.png`.
"""
