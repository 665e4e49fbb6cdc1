"""The speed run's README.md and plot (written atomically, tables by :func:`benchmarks.reports.markdown_grid`)."""

from __future__ import annotations

import math
import os
import platform
import shlex
from pathlib import Path

import pandas as pd
import torch

from ..machine import cpu_name
from ..reports import markdown_grid, save_figure
from .peers import PAPER_GFLOPS, PAPER_SOURCE, PEER_EVERY, PROMPT_SETTINGS, SETTING_METHOD


def fmt(v: float) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "n/a"
    if abs(v) >= 1e6 or (isinstance(v, float) and v.is_integer()):
        return f"{v:,.0f}"
    return f"{v:.3f}" if abs(v) < 100 else f"{v:,.0f}"


def table(rows: list[dict], cols: list[str]) -> str:
    return markdown_grid(cols, [[fmt(r[c]) if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols]
                                for r in rows])


def plot(timings: pd.DataFrame, args, path: Path) -> None:
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


def peer_section(args, frames) -> str:
    """The --peers tables: inference, training step, analytic updates, the paper's cost claim, stored state."""
    fl, ra, ti, pa = frames["flops"], frames["ratios"], frames["timings"], frames["params"]
    model, paper, pimg = args.model, args.paper_model, args.paper_img_size
    here = {"model": model, "batch": args.batch_size}  # this run's rows (the paper architecture's have batch 1)
    here_ratio = {"model": model, "setting": f"batch={args.batch_size}"}
    inf, train, update, claim = [], [], [], []
    for img in args.img_size:
        for k in SETTING_METHOD:
            passes = [r for r in fl if r["measure"] == "infer_forward_passes_per_image" and r["setting"] == k
                      and r["img_size"] == img and r.get("batch") == args.batch_size and r["model"] == model]
            inf.append({"img_size": img, "setting": k,
                        "passes (counted)": passes[0]["value"] if passes else float("nan"),
                        "trait": str(passes[0]["trait"]) if passes else "",
                        "GFLOPs/img": _g(_value(fl, **here, img_size=img, setting=k, measure="infer_flops_per_image")),
                        "FLOPs vs backbone": 1.0 if k == "backbone" else
                        _value(ra, **here_ratio, img_size=img, measure=f"infer_flops_ratio_{k}_vs_backbone"),
                        "img/s": _value(ti, img_size=img, setting=k, measure="infer_images_per_second"),
                        "throughput vs backbone": 1.0 if k == "backbone" else
                        _value(ra, img_size=img, measure=f"infer_throughput_ratio_{k}_vs_backbone")})
        for k in ("backbone_head_only", "sdlora_9stored", "dualprompt", "coda_prompt", "l2p", "inflora",
                  "ranpac_first_session", "aper_first_session"):
            train.append({"img_size": img, "setting": k,
                          "s/step": _value(ti, img_size=img, setting=k, measure="train_step_seconds"),
                          "vs backbone": 1.0 if k == "backbone_head_only" else
                          _value(ra, img_size=img, measure=f"train_step_time_ratio_{k}_vs_backbone"),
                          "vs SD-LoRA": 1.0 if k == "sdlora_9stored" else
                          _value(ra, img_size=img, measure=f"train_step_time_ratio_{k}_vs_sdlora"),
                          "train GFLOPs/img": _g(_value(fl, img_size=img, setting=k,
                                                        measure="train_step_flops_per_image"))})
        for k in PROMPT_SETTINGS:
            claim.append({"model": model, "img_size": img, "setting": k,
                          "GFLOPs/img": _g(_value(fl, **here, img_size=img, setting=k,
                                                  measure="infer_flops_per_image")),
                          "FLOPs vs SD-LoRA": _value(ra, **here_ratio, img_size=img,
                                                     measure=f"infer_flops_ratio_{k}_vs_sdlora_merged"),
                          "SD-LoRA throughput vs it": _value(ra, img_size=img,
                                                             measure=f"infer_throughput_ratio_sdlora_merged_vs_{k}")})
    for r in (r for r in ti if r["measure"] == "analytic_update_seconds_per_experience"):
        row = {"method": r["setting"], "s/experience": r["value"], "what": r["note"],
               "extra passes/train image": _value(fl, img_size=args.img_size[0], setting=r["setting"],
                                                  measure="experience_extra_passes_per_train_image")}
        for img in args.img_size:
            row[f"vs backbone pass, {img}px"] = _value(
                ra, img_size=img, measure=f"analytic_update_time_ratio_{r['setting']}_vs_backbone_feature_pass")
        update.append(row)
    there = {"model": paper, "img_size": pimg, "batch": 1, "measure": "infer_flops_per_image"}
    sd_paper = _value(fl, **there, setting="sdlora_merged")
    claim = [{"model": paper, "img_size": pimg, "setting": k, "GFLOPs/img": _g(_value(fl, **there, setting=k)),
              "FLOPs vs SD-LoRA": _value(fl, **there, setting=k) / sd_paper,
              "paper GFLOPs": PAPER_GFLOPS.get(k, float("nan")),
              "paper vs SD-LoRA": PAPER_GFLOPS.get(k, float("nan")) / PAPER_GFLOPS["sdlora_merged"],
              "SD-LoRA throughput vs it": float("nan")}
             for k in ("backbone", "sdlora_merged", "inflora_merged", "inflora_branches", *PROMPT_SETTINGS)] + claim
    prompt_ratios = [c["FLOPs vs SD-LoRA"] for c in claim if c["setting"] in PROMPT_SETTINGS]
    speed_ratios = [c["SD-LoRA throughput vs it"] for c in claim if c["setting"] in PROMPT_SETTINGS
                    and not math.isnan(c["SD-LoRA throughput vs it"])]
    holds = all(v >= 1.9 for v in prompt_ratios) and all(v >= 1.9 for v in speed_ratios)
    verdict = (f"**{'Holds' if holds else 'Does not hold everywhere'}**: every prompt method costs "
               f"{min(prompt_ratios):.2f}-{max(prompt_ratios):.2f}x SD-LoRA's FLOPs per image"
               + (f", and merged SD-LoRA runs {min(speed_ratios):.2f}-{max(speed_ratios):.2f}x as many images per "
                  "second" if speed_ratios else "") + " (target: >= 1.9).")
    stored = {}
    for r in (r for r in pa if r.get("measure") == "stored_params_after_10_tasks"):
        w = stored.setdefault(r["method"], {"method": r["method"], "stored params": float("nan"), "parts": "",
                                            "note": ""})
        if r["part"] == "total":
            w["stored params"] = float(r["value"])
        else:
            w["parts"] += f"{'; ' if w['parts'] else ''}{r['part']} {int(r['value']):,}"
        if r.get("note"):
            w["note"] = f"{w['note']}; {r['note']}" if w["note"] else r["note"]
    cols = lambda rows: list(rows[0]) if rows else []  # noqa: E731
    claim_cols = ["model", "img_size", "setting", "GFLOPs/img", "FLOPs vs SD-LoRA", "paper GFLOPs",
                  "paper vs SD-LoRA", "SD-LoRA throughput vs it"]
    return f"""
## Peer methods (`--peers`; issues 16, 17)

Each built by its registered builder (`benchmarks.methods`, the reference recipe) and set up as during the last of
10 tasks (prompts or components of 10 tasks, 10 InfLoRA branches, RanPAC/APER adapted with their classifier fitted,
100-class heads); values training would set are random (costs depend on shapes). Peers are timed every
{_nth(PEER_EVERY['infer'])} inference and every {_nth(PEER_EVERY['train'])} training repetition, interleaved with
the backbone and SD-LoRA.
Forward passes are counted (images through every timm `PatchEmbed` per input image) and must equal the
method's registered trait. `inflora_branches` sums its 10 branches into the weights once per batch (the unmerged
form); `inflora_merged` has them merged, as SD-LoRA.

### Inference, relative to the frozen backbone

{table(inf, cols(inf))}
### Training step of the last task (each method's own loss and optimizer)

`backbone_head_only`: the frozen backbone training only its head's last chunk (one forward, no backward through the
ViT); `sdlora_9stored`: SD-LoRA in its 10th task. RanPAC and APER train only in the first session (that step).

{table(train, cols(train))}
### Per-experience analytic updates

Timed once (one experience: 10 classes x 100 images); "vs backbone pass": the update's time over the frozen
backbone's forward over those images; "extra passes": forward passes per training image outside SGD steps
(InfLoRA's two covariance passes, the classifiers' feature pass), counted.

{table(update, cols(update)) if update else 'none timed'}
### The paper's claim: SD-LoRA's inference is about 2x cheaper than every prompt method's

`{paper}` at {args.paper_img_size} px: random weights, batch 1, FLOPs only (not timed; FLOPs depend on the
architecture alone), set beside the paper's numbers ({PAPER_SOURCE}). `{model}` rows: this run's models (FLOPs at
batch {args.batch_size}, throughput timed). {verdict}

{table(claim, claim_cols)}
### Stored state after 10 tasks (numbers kept beyond the frozen backbone, each method's `stored_params`)

{table(list(stored.values()), ['method', 'stored params', 'parts', 'note'])}"""


def readme(args, argv, frames, runtime) -> str:
    cmd = " ".join(["python -m benchmarks.speed"] + [shlex.quote(str(a)) for a in argv])
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    mem = [r for r in frames["memory"] if r["measure"] == "train_step_peak_delta"]
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
the noise floor of the machine. SD-LoRA models: 10 (inference) or N (training) stored tasks with random non-zero B,
rank {args.rank}, a 100-class head (last 10 classes trainable); the backbone reference has the same head.

## Ratios

{table(frames['ratios'], ['img_size', 'measure', 'value', 'target', 'meets_target', 'note'])}
## Timings (medians)

{table(frames['timings'], ['img_size', 'measure', 'setting', 'value', 'unit'])}
## Peak memory of a training step (above the RSS before the step)

{table(mem, ['img_size', 'setting', 'value', 'unit', 'note'])}
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
