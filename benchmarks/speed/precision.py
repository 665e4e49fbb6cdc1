"""bf16 autocast training against float32, in one process: ``python -m benchmarks.speed.precision`` (issue 30).

The training step of SD-LoRA (forward, the current-classes loss, backward, SGD step) in float32 and under bf16
autocast of the forward (as ``--train-amp bf16`` runs it: weights, gradients, optimizer and loss in float32), on the
same batch, timed interleaved (:func:`benchmarks.speed.timing.interleaved`) so the machine's load cancels in the
ratio. Measured 1.12x on a 2-core AMD EPYC with AVX-512 BF16; against an accuracy cost measured by training
(results/cifar100-tiny128/bf16-training*), too little for the ``cifar100-tiny128-full`` protocol to train in bf16.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import torch

from avalanche_sdlora.atomic import write_text

from .models import build_sdlora
from .timing import batch, interleaved, median, paired_ratio, sdlora_loss, step_fn


def autocast_loss(loss, device: str):
    def run():
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            value = loss()
        return value.float()

    return run


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.speed.precision", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vit_tiny_patch16_224")
    p.add_argument("--checkpoint", default=None, help="weights file (default: the assets folder's; random if none)")
    p.add_argument("--img-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rank", type=int, default=10)
    p.add_argument("--stored", type=int, default=9, help="stored directions beside the current pair (default: 9)")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="CSV file to write the measurement to")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    x, y, classes = batch(args, args.img_size)
    fns = {}
    for name in ("float32", "bf16"):
        model = build_sdlora(args, args.img_size, args.stored)
        opt = torch.optim.SGD([q for q in model.parameters() if q.requires_grad], lr=1e-4, momentum=0.9)
        loss = sdlora_loss(model, x, y, classes)
        fns[name] = step_fn(model, loss if name == "float32" else autocast_loss(loss, args.device), opt)
    times = interleaved(fns, args.reps, args.warmup, args.device)
    out = {"float32_step_s": median(times["float32"]), "bf16_step_s": median(times["bf16"]),
           "speedup_bf16_over_float32": paired_ratio(times["float32"], times["bf16"])}
    setting = (f"{args.model} {args.img_size}px batch {args.batch_size} rank {args.rank}, {args.stored} stored "
               f"directions, {args.threads} thread(s), {args.device}, {args.reps} interleaved repetitions")
    print(f"training step, {setting}: float32 {out['float32_step_s']:.3f} s, bf16 autocast {out['bf16_step_s']:.3f} s, "
          f"speed-up {out['speedup_bf16_over_float32']:.2f}x (median of paired ratios)")
    if args.out:
        lines = [["measure", "value", "setting", "command"]]
        command = " ".join(["python -m benchmarks.speed.precision"] + (argv if argv is not None else sys.argv[1:]))
        lines += [[k, f"{v:.6g}", setting, command] for k, v in out.items()]
        buf = io.StringIO()
        csv.writer(buf).writerows(lines)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_text(args.out, buf.getvalue())
    return out


if __name__ == "__main__":
    main()
