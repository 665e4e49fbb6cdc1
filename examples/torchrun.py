"""The drop-in loop on several GPUs (or CPU processes) under torchrun, on Avalanche 0.6's DistributedHelper:
data-parallel training, evaluation over the whole test set on every rank, rank 0 alone writing, and exact resume.

    torchrun --standalone --nproc_per_node 4 examples/torchrun.py            # one process per GPU (NCCL)
    torchrun --standalone --nproc_per_node 2 examples/torchrun.py --classes 4 --n-experiences 2 \\
        --train-per-class 4 --test-per-class 2 --img-size 32 --batch-size 4   # 2 CPU processes (gloo), seconds

``--batch-size`` is the global batch: each rank trains ``batch-size / world size`` images per step. Run again
with the same ``--out`` after an interruption: every rank resumes from the checkpoint rank 0 wrote.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from avalanche.distributed import DistributedHelper
from avalanche.evaluation.metrics import accuracy_metrics, forgetting_metrics
from avalanche.logging import InteractiveLogger
from avalanche.training.plugins import EvaluationPlugin

from avalanche_sdlora import SDLoRA, sdlora_vit
from avalanche_sdlora.checkpoint import CheckpointPlugin
from avalanche_sdlora.data import split_cifar100
from avalanche_sdlora.metrics import AverageAnytimeAccuracy


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-experiences", type=int, default=10)
    p.add_argument("--classes", type=int, default=None, help="the first N classes only (default: all 100)")
    p.add_argument("--train-per-class", type=int, default=100)
    p.add_argument("--test-per-class", type=int, default=None, help="default: all 100")
    p.add_argument("--img-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32, help="the global batch, divided between the ranks")
    p.add_argument("--out", type=Path, default=Path("runs/examples/torchrun"))
    args = p.parse_args(argv)

    DistributedHelper.init_distributed(random_seed=0)  # NCCL on GPUs, gloo on CPU, one seed on every rank
    device = DistributedHelper.make_device()            # cuda:<rank>, or cpu
    world = DistributedHelper.world_size
    if args.batch_size % world:
        raise SystemExit(f"error: --batch-size {args.batch_size} does not divide between {world} ranks")
    main_rank = DistributedHelper.is_main_process
    classes = None if args.classes is None else list(range(args.classes))
    benchmark = split_cifar100(n_experiences=args.n_experiences, train_per_class=args.train_per_class,
                               test_per_class=args.test_per_class, img_size=args.img_size, classes=classes)
    model = sdlora_vit("vit_tiny_patch16_224", img_size=args.img_size, pretrained=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    evaluator = EvaluationPlugin(accuracy_metrics(stream=True, experience=True), forgetting_metrics(experience=True),
                                 AverageAnytimeAccuracy(),
                                 loggers=[InteractiveLogger()] if main_rank else [])  # Avalanche: rank 0 logs
    checkpoints = CheckpointPlugin(args.out / "checkpoints")  # rank 0 writes; every rank reads
    strategy = SDLoRA(model=model, optimizer=optimizer, train_mb_size=args.batch_size // world,
                      train_epochs=args.epochs, eval_mb_size=256, device=device, evaluator=evaluator,
                      plugins=[checkpoints])
    start = checkpoints.resume(strategy)
    results = {}
    for t, experience in enumerate(benchmark.train_stream[start:], start):
        strategy.train(experience)
        results = strategy.eval(benchmark.test_stream)  # every rank gets the same numbers, over the whole test set
    checkpoints.save(strategy)  # the last experience too, so a rerun finds it finished (rank 0 writes)
    if main_rank:  # one writer
        model.save_pretrained(args.out / "adapters")
        final = {k: float(v) for k, v in results.items() if k.startswith(("Top1_Acc_Stream", "AAA"))}
        (args.out / "final.json").write_text(json.dumps({"world_size": world, **final}, indent=1) + "\n")
        print(f"{world} rank(s): " + ", ".join(f"{k} = {v:.4f}" for k, v in final.items()))
    DistributedHelper.barrier()  # the other ranks wait for rank 0 to finish writing


if __name__ == "__main__":
    main()
