"""Named protocols: presets of the protocol fields of a :class:`~benchmarks.config.RunConfig`.

A protocol is named after what it is (dataset, backbone, input size), not the machine it was first run on; every
field can still be overridden by its own flag. Adding a protocol is one entry in ``PROTOCOLS``.
"""

from __future__ import annotations

# The fields a protocol sets; RunConfig takes their defaults from DEFAULT_PROTOCOL.
PROTOCOL_FIELDS = ("model", "img_size", "train_per_class", "epochs", "batch_size", "lr", "n_experiences",
                   "class_order_seed", "eval_batch_size", "eval_amp")
_SPLIT_CIFAR100 = {"n_experiences": 10, "class_order_seed": 1993, "eval_batch_size": 256}

PROTOCOLS: dict[str, dict] = {
    # The README's default job, sized for a 2-core CPU: ViT-Tiny at 128 px, 100 training images per class,
    # 3 epochs, batch 32, SGD lr 0.01, bfloat16 autocast for evaluation (training in float32).
    "cifar100-tiny128": {**_SPLIT_CIFAR100, "model": "vit_tiny_patch16_224", "img_size": 128, "train_per_class": 100,
                         "epochs": 3, "batch_size": 32, "lr": 0.01, "eval_amp": True},
    # The closest run to the paper's with the real weights we have (ViT-Tiny): 224 px, all images, 20 epochs, batch 128.
    "cifar100-tiny224": {**_SPLIT_CIFAR100, "model": "vit_tiny_patch16_224", "img_size": 224, "train_per_class": None,
                         "epochs": 20, "batch_size": 128, "lr": 0.01, "eval_amp": False},
    # The paper's setting, for a GPU: ViT-B/16 at 224 px, all images, 20 epochs, batch 128.
    "cifar100-paper": {**_SPLIT_CIFAR100, "model": "vit_base_patch16_224", "img_size": 224, "train_per_class": None,
                       "epochs": 20, "batch_size": 128, "lr": 0.01, "eval_amp": False},
}
DEFAULT_PROTOCOL = "cifar100-tiny128"
# Former names, still accepted (and read from old run folders) as the protocol they name.
ALIASES = {"cifar100-cpu": "cifar100-tiny128"}

assert all(set(p) == set(PROTOCOL_FIELDS) for p in PROTOCOLS.values())


def canonical(name: str) -> str:
    """The protocol's current name (an alias maps to it; an unknown name is returned as it is)."""
    return ALIASES.get(name, name)
