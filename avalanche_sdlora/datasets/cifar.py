"""CIFAR-100 from torchvision's own ``cifar-100-python`` folder (the official 50,000 / 10,000 split) or from the
project's shared npz (its own 500 / 100 per class split).

torchvision's ``CIFAR100`` reads the folder and verifies each file's md5 itself; it is only wrapped here so that a
missing or corrupted folder gets an error naming the path and the layout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR100

from ..data import load_cifar100  # the npz reader and its checks live there

FOLDER = CIFAR100.base_folder  # "cifar-100-python"
LAYOUT = (f"torchvision's CIFAR-100 folder '<root>/{FOLDER}/{{train,test,meta}}' (unpacked {CIFAR100.filename}, "
          "e.g. from torchvision.datasets.CIFAR100(root, download=True) on a machine with internet), or the shared "
          "cifar100.npz file")


class ArrayImages(Dataset):
    """uint8 HWC images held in memory, returned as PIL images so the same transforms apply as to files."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.targets = images, [int(t) for t in labels]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[i]), self.targets[i]


def cifar_folder(root: Path) -> Path:
    """The ``cifar-100-python`` folder: ``root`` itself or the one inside it."""
    return root if root.name == FOLDER else root / FOLDER


def read_cifar100(root: Path) -> tuple[str, list[str], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """(split name, class names, {split: (uint8 images N x 32 x 32 x 3, fine labels)})."""
    if root.is_file():
        if root.suffix != ".npz":
            raise ValueError(f"CIFAR-100: '{root}' is a file but not an npz; expected {LAYOUT}")
        arrays = load_cifar100(root)
        return "npz", [], {s: (arrays[f"x_{s}"], np.asarray(arrays[f"y_{s}"])) for s in ("train", "test")}
    folder = cifar_folder(root)
    base = folder.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"CIFAR-100: no '{FOLDER}' folder in '{base}'; expected {LAYOUT}")
    out = {}
    for split in ("train", "test"):
        try:
            ds = CIFAR100(str(base), train=split == "train", download=False)
        except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
            files = [n for n, _ in CIFAR100.train_list + CIFAR100.test_list] + [CIFAR100.meta["filename"]]
            raise ValueError(f"CIFAR-100: '{folder}' is incomplete or corrupted (torchvision's md5 check of {files} "
                             f"failed: {exc}); expected {LAYOUT}") from exc
        out[split] = (ds.data, np.asarray(ds.targets))
    return "official", list(ds.classes), out
