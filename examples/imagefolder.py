"""SD-LoRA on your own images: class-incremental learning over a folder in torchvision's ImageFolder layout.

    ROOT/train/<class name>/*.png|jpg|...     ROOT/test/<class name>/*.png|jpg|...

The classes (sorted by name, as ImageFolder numbers them) are split into --n-experiences tasks of equal size, in
name order or shuffled by --class-order-seed; each task is trained, then every task so far is evaluated.

    python examples/imagefolder.py ROOT --n-experiences 5 --img-size 224 --epochs 5
    python examples/imagefolder.py ROOT --checkpoint vit_base.safetensors --model vit_base_patch16_224
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
from avalanche.benchmarks.utils import as_classification_dataset
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.logging import InteractiveLogger
from avalanche.training.plugins import EvaluationPlugin
from torchvision.datasets import ImageFolder

from avalanche_sdlora import SDLoRA, sdlora_vit
from avalanche_sdlora.datasets import sdlora_transforms, timm_normalization
from avalanche_sdlora.metrics import AverageAnytimeAccuracy


def main(argv: list[str] | None = None) -> list[float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", type=Path, help="folder holding train/ and test/, one subfolder per class in each")
    p.add_argument("--n-experiences", type=int, default=5)
    p.add_argument("--class-order-seed", type=int, default=None, help="shuffle the classes (default: name order)")
    p.add_argument("--model", default="vit_tiny_patch16_224", help="any timm ViT")
    p.add_argument("--checkpoint", default=None, help="weights file (default: the local asset, else timm's download)")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--out", type=Path, default=Path("runs/examples/imagefolder"), help="where the adapters go")
    args = p.parse_args(argv)
    torch.manual_seed(0)

    model = sdlora_vit(args.model, img_size=args.img_size, checkpoint=args.checkpoint,
                       pretrained=args.checkpoint is None)
    # SD-LoRA's transforms (random resized crop and flip for training), normalised as the weights expect.
    train_tf, eval_tf = sdlora_transforms(args.img_size, timm_normalization(model.backbone))
    train = ImageFolder(args.root / "train", transform=train_tf)
    test = ImageFolder(args.root / "test", transform=eval_tf)
    if train.classes != test.classes:
        raise SystemExit(f"error: {args.root}/train and {args.root}/test hold different class folders; give both "
                         "the same classes")
    n = len(train.classes)
    if n % args.n_experiences:
        raise SystemExit(f"error: {n} classes do not split into --n-experiences {args.n_experiences} equal tasks")
    order = (list(range(n)) if args.class_order_seed is None
             else [int(c) for c in np.random.RandomState(args.class_order_seed).permutation(n)])
    benchmark = class_incremental_benchmark({"train": as_classification_dataset(train),
                                             "test": as_classification_dataset(test)},
                                            class_order=order, num_experiences=args.n_experiences)

    evaluator = EvaluationPlugin(accuracy_metrics(stream=True), AverageAnytimeAccuracy(),
                                 loggers=[InteractiveLogger()])
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    strategy = SDLoRA(model=model, optimizer=optimizer, train_mb_size=args.batch_size, train_epochs=args.epochs,
                      eval_mb_size=2 * args.batch_size, evaluator=evaluator)
    seen_accuracy = []
    for t, experience in enumerate(benchmark.train_stream):
        strategy.train(experience)
        results = strategy.eval(benchmark.test_stream[: t + 1])  # the tasks trained so far
        seen_accuracy.append(float(next(v for k, v in results.items() if k.startswith("Top1_Acc_Stream/eval_phase"))))
        names = [train.classes[c] for c in experience.classes_in_this_experience]
        print(f"task {t + 1} ({', '.join(names)}): accuracy on the classes seen so far {100 * seen_accuracy[-1]:.2f}%")
    print(f"adapters saved in {model.save_pretrained(args.out)}")
    return seen_accuracy


if __name__ == "__main__":
    main()
