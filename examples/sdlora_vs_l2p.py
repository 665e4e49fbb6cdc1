"""SD-LoRA beside L2P on one Avalanche benchmark, each logged by Avalanche's own loggers (CSV and text files).

L2P is Avalanche's ``LearningToPrompt`` with its defaults, made to run with timm 1.x and any ViT by the harness's
``benchmarks.peers.l2p`` (installed with this package). Each method writes ``<out>/<method>/`` (the CSVLogger's
``eval_results.csv`` and ``training_results.csv``, the TextLogger's ``log.txt``); the script ends with a table of
the accuracy on the classes seen so far after each task.

    python examples/sdlora_vs_l2p.py                         # 5 tasks of CIFAR-100, 50 images per class, 128 px
    python examples/sdlora_vs_l2p.py --classes 4 --n-experiences 2 --train-per-class 3 --img-size 32   # seconds
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from avalanche.evaluation.metrics import accuracy_metrics, forgetting_metrics
from avalanche.logging import CSVLogger, InteractiveLogger, TextLogger
from avalanche.training.plugins import EvaluationPlugin

from avalanche_sdlora import SDLoRA, sdlora_vit
from avalanche_sdlora.assets import default_asset
from avalanche_sdlora.data import split_cifar100
from avalanche_sdlora.metrics import AverageAnytimeAccuracy
from benchmarks.peers.l2p import build_l2p

MODEL = "vit_tiny_patch16_224"


def evaluator(folder: Path, quiet: bool) -> tuple[EvaluationPlugin, list]:
    folder.mkdir(parents=True, exist_ok=True)
    text = open(folder / "log.txt", "w")  # noqa: SIM115 - the TextLogger writes to it until the run ends
    loggers = [CSVLogger(log_folder=str(folder)), TextLogger(text)] + ([] if quiet else [InteractiveLogger()])
    plugin = EvaluationPlugin(accuracy_metrics(stream=True, experience=True), forgetting_metrics(experience=True),
                              AverageAnytimeAccuracy(), loggers=loggers)
    return plugin, [text]


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-experiences", type=int, default=5)
    p.add_argument("--classes", type=int, default=None, help="the first N classes only (default: all 100)")
    p.add_argument("--train-per-class", type=int, default=50)
    p.add_argument("--test-per-class", type=int, default=None, help="default: all 100")
    p.add_argument("--img-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--checkpoint", default=None, help=f"ViT weights (default: the local {MODEL}.safetensors)")
    p.add_argument("--out", type=Path, default=Path("runs/examples/sdlora_vs_l2p"))
    p.add_argument("--quiet", action="store_true", help="no InteractiveLogger on the console")
    args = p.parse_args(argv)
    checkpoint = args.checkpoint or default_asset(f"{MODEL}.safetensors")
    if checkpoint is None:
        raise SystemExit(f"error: no {MODEL}.safetensors in $SDLORA_ASSETS; pass --checkpoint FILE")

    classes = None if args.classes is None else list(range(args.classes))
    benchmark = split_cifar100(n_experiences=args.n_experiences, train_per_class=args.train_per_class,
                               test_per_class=args.test_per_class, img_size=args.img_size, classes=classes)
    n_classes = args.classes or 100
    strategies = {}
    files = []
    torch.manual_seed(0)
    plugin, opened = evaluator(args.out / "sdlora", args.quiet)
    files += opened
    model = sdlora_vit(MODEL, img_size=args.img_size, checkpoint=checkpoint)
    strategies["sdlora"] = SDLoRA(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
                                  train_mb_size=32, train_epochs=args.epochs, eval_mb_size=128, evaluator=plugin)
    torch.manual_seed(0)
    plugin, opened = evaluator(args.out / "l2p", args.quiet)
    files += opened
    strategies["l2p"] = build_l2p(model_name=MODEL, checkpoint=checkpoint, img_size=args.img_size, optimizer_lr=0.01,
                                  train_mb_size=32, train_epochs=args.epochs, eval_mb_size=128, device="cpu"
                                  if not torch.cuda.is_available() else "cuda", evaluator=plugin,
                                  num_classes=n_classes)
    seen: dict[str, list[float]] = {name: [] for name in strategies}
    for name, strategy in strategies.items():
        for t, experience in enumerate(benchmark.train_stream):
            strategy.train(experience)
            results = strategy.eval(benchmark.test_stream[: t + 1])  # the classes trained so far
            seen[name].append(float(next(v for k, v in results.items() if k.startswith("Top1_Acc_Stream"))))
    for f in files:
        f.close()
    print("accuracy on the classes seen so far (%), after each task")
    print("| method | " + " | ".join(f"task {t + 1}" for t in range(args.n_experiences)) + " |")
    print("|---|" + "---|" * args.n_experiences)
    for name, accs in seen.items():
        print(f"| {name} | " + " | ".join(f"{100 * a:.2f}" for a in accs) + " |")
    print(f"Avalanche's logs: {args.out}/<method>/eval_results.csv, training_results.csv, log.txt")
    return seen


if __name__ == "__main__":
    main()
