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
Files: `ratios.csv`, `timings.csv`, `memory.csv`, `flops.csv`, `params.csv`, `end_to_end.csv`, `train_step_vs_tasks.png`.
"""
