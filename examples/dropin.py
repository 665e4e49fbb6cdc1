"""SD-LoRA dropped into a plain Avalanche loop: the README's script with its sizes as flags, then adapters saved,
reloaded, merged and exported to a plain timm ViT with the same predictions.

    python examples/dropin.py                       # the README's sizes: 10 tasks, 100 images per class, 128 px
    python examples/dropin.py --classes 4 --n-experiences 2 --train-per-class 3 --img-size 32 --epochs 1  # seconds
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from avalanche.evaluation.metrics import accuracy_metrics, forgetting_metrics
from avalanche.logging import InteractiveLogger
from avalanche.training.plugins import EvaluationPlugin

from avalanche_sdlora import AverageAnytimeAccuracy, SDLoRA, SDLoRAViT, sdlora_vit, split_cifar100


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-experiences", type=int, default=10)
    p.add_argument("--train-per-class", type=int, default=100)
    p.add_argument("--test-per-class", type=int, default=None, help="default: all 100")
    p.add_argument("--classes", type=int, default=None, help="the first N classes only (default: all 100)")
    p.add_argument("--img-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--out", default="runs/examples/dropin", help="where the adapters are saved")
    args = p.parse_args(argv)
    torch.manual_seed(0)

    classes = None if args.classes is None else list(range(args.classes))
    benchmark = split_cifar100(n_experiences=args.n_experiences, train_per_class=args.train_per_class,
                               test_per_class=args.test_per_class, img_size=args.img_size, classes=classes)
    model = sdlora_vit("vit_tiny_patch16_224", img_size=args.img_size, pretrained=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    evaluator = EvaluationPlugin(accuracy_metrics(stream=True, experience=True), forgetting_metrics(experience=True),
                                 AverageAnytimeAccuracy(), loggers=[InteractiveLogger()])
    strategy = SDLoRA(model=model, optimizer=optimizer, train_mb_size=32, train_epochs=args.epochs, eval_mb_size=256,
                      evaluator=evaluator)
    for experience in benchmark.train_stream:
        strategy.train(experience)
        results = strategy.eval(benchmark.test_stream)

    # The adapters alone (a few MB), reloaded into a fresh base built from the same weights.
    folder = model.save_pretrained(Path(args.out))
    reloaded = SDLoRAViT.from_pretrained(folder, pretrained=True).eval()
    model.merge()
    # Merged and unloaded, they are a plain timm ViT: no SD-LoRA code is needed to run it.
    plain = reloaded.merge_and_unload()
    x, *_ = next(iter(torch.utils.data.DataLoader(benchmark.test_stream[0].dataset.eval(), batch_size=8)))
    with torch.no_grad():
        same = torch.allclose(plain.eval()(x), model.eval()(x), atol=1e-4)
    final = {k: float(v) for k, v in results.items() if k.startswith(("Top1_Acc_Stream", "AAA"))}
    print(f"adapters in {folder}; exported timm model gives the same logits: {same}")
    print("\n".join(f"{k} = {v:.4f}" for k, v in final.items()))
    if not same:
        raise SystemExit("error: the exported model's logits differ from the trained model's")
    return final


if __name__ == "__main__":
    main()
