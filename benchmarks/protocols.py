"""Named protocols; every field can be overridden on the command line."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class Protocol:
    name: str
    model: str
    img_size: int
    train_per_class: int | None  # None: all 500
    epochs: int
    batch_size: int
    lr: float
    n_experiences: int = 10
    class_order_seed: int = 1993
    eval_batch_size: int = 256
    eval_amp: bool = False  # bfloat16 autocast for evaluation only (CPU speed; see results/README.md)

    def override(self, **changes) -> "Protocol":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def as_dict(self) -> dict:
        return asdict(self)


PROTOCOLS: dict[str, Protocol] = {
    # The README's default job: fits a 2-core CPU.
    "cifar100-cpu": Protocol("cifar100-cpu", "vit_tiny_patch16_224", 128, 100, 3, 32, 0.01, eval_amp=True),
    # The closest run to the paper's with the real weights we have (ViT-Tiny): 224 px, all images, 20 epochs, batch 128.
    "cifar100-tiny224": Protocol("cifar100-tiny224", "vit_tiny_patch16_224", 224, None, 20, 128, 0.01),
    # The paper's setting, for a GPU: ViT-B/16 at 224 px, all images, 20 epochs, batch 128.
    "cifar100-paper": Protocol("cifar100-paper", "vit_base_patch16_224", 224, None, 20, 128, 0.01),
}
