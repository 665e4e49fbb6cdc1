"""Split CIFAR-100 from the shared npz through Avalanche's ``nc_benchmark``.

Images are resized once (bicubic) and cached as uint8 so a CPU run spends its time in the model;
normalisation (mean = std = 0.5) and the flip augmentation happen per sample.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from avalanche.benchmarks.scenarios.deprecated.generators import nc_benchmark
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from .assets import default_asset, require_file

CIFAR_KEYS = ("x_train", "y_train", "x_test", "y_test")
_CACHE: dict[tuple, Tensor] = {}


def load_cifar100(path: str | Path | None = None) -> dict[str, np.ndarray]:
    """Arrays of the shared CIFAR-100 npz, checked for the expected keys and shapes."""
    if path is None:
        path = default_asset("cifar100.npz")
        if path is None:
            raise FileNotFoundError("cifar100.npz not found: pass --data PATH or set $SDLORA_ASSETS to the folder "
                                    "holding it (default ../shared/assets beside the project)")
    p = require_file(path, "CIFAR-100 npz", "--data")
    try:
        with np.load(p, allow_pickle=False) as f:
            missing = [k for k in CIFAR_KEYS if k not in f.files]
            if missing:
                raise KeyError(f"'{p}' lacks keys {missing} (has {sorted(f.files)}); expected x_train, y_train, "
                               "x_test, y_test as in ../shared/README.md")
            data = {k: f[k] for k in CIFAR_KEYS}
    except (OSError, ValueError) as exc:
        raise ValueError(f"'{p}' is not a readable npz file ({exc}); pass the shared cifar100.npz with --data") from exc
    for split in ("train", "test"):
        x, y = data[f"x_{split}"], data[f"y_{split}"]
        if x.ndim != 4 or x.shape[-1] != 3 or len(x) != len(y):
            raise ValueError(f"'{p}': x_{split} must be (N, H, W, 3) uint8 with one label each, got {x.shape} and {y.shape}")
    return data


def resize_images(x: np.ndarray, size: int, batch: int = 2000, cache_dir: str | Path | None = None) -> Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, size, size) uint8, bicubic, cached per process.

    With ``cache_dir`` (default ``$SDLORA_IMAGE_CACHE``; off when neither is set) the result is also kept on disk
    and memory-mapped, so the parallel processes of one run (and later runs) share one copy and resize once:
    at 224 px every process otherwise spends minutes on one thread resizing 60,000 images and holds 9 GB of them.
    """
    key = (hashlib.sha1(np.ascontiguousarray(x[:: max(1, len(x) // 64)])).hexdigest(), x.shape, size)
    if key in _CACHE:
        return _CACHE[key]
    cache_dir = cache_dir or os.environ.get("SDLORA_IMAGE_CACHE") or None
    path = None
    if cache_dir is not None:
        digest = hashlib.sha1(np.ascontiguousarray(x)).hexdigest()[:16]
        path = Path(cache_dir) / f"images-{digest}-{len(x)}-{size}px.npy"
        if path.exists():
            _CACHE[key] = _load_mapped(path, (len(x), 3, size, size))
            return _CACHE[key]
    out = torch.empty(len(x), 3, size, size, dtype=torch.uint8)
    for i in range(0, len(x), batch):
        t = torch.from_numpy(x[i:i + batch]).permute(0, 3, 1, 2).float()
        if t.shape[-1] != size:
            t = F.interpolate(t, size=(size, size), mode="bicubic", align_corners=False)
        out[i:i + batch] = t.round_().clamp_(0, 255).to(torch.uint8)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # another process may be writing the same file
        with open(tmp, "wb") as f:
            np.save(f, out.numpy())
        os.replace(tmp, path)
        out = _load_mapped(path, tuple(out.shape))
    _CACHE[key] = out
    return out


def _load_mapped(path: Path, shape: tuple[int, ...]) -> Tensor:
    arr = np.load(path, mmap_mode="r")
    if arr.shape != shape or arr.dtype != np.uint8:
        raise ValueError(f"image cache '{path}' holds {arr.shape} {arr.dtype}, expected {shape} uint8; delete it "
                         "(it is rebuilt on the next run)")
    with warnings.catch_warnings():  # read-only map: the dataset only reads it (items are converted copies)
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(arr)


class ImageTensorDataset(Dataset):
    """uint8 images in memory; items are normalised to [-1, 1] (mean = std = 0.5)."""

    def __init__(self, images: Tensor, targets: np.ndarray) -> None:
        self.images = images
        self.targets = [int(t) for t in targets]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.images[i].float().div_(127.5).sub_(1.0), self.targets[i]


def first_per_class(y: np.ndarray, n: int | None) -> np.ndarray:
    """Indices of the first ``n`` samples of each class, in file order (all when ``n`` is None)."""
    if n is None:
        return np.arange(len(y))
    if n <= 0:
        raise ValueError(f"train_per_class must be positive, got {n}")
    idx = [np.flatnonzero(y == c)[:n] for c in np.unique(y)]
    return np.sort(np.concatenate(idx))


def class_order(n_classes: int, seed: int) -> list[int]:
    """The protocol's class order: ``numpy.random.RandomState(seed).permutation(n_classes)``."""
    return [int(c) for c in np.random.RandomState(seed).permutation(n_classes)]


def split_cifar100(*, n_experiences: int = 10, class_order_seed: int = 1993, train_per_class: int | None = 100,
                   test_per_class: int | None = None, img_size: int = 128, path: str | Path | None = None,
                   augment: bool = True, classes: list[int] | None = None):
    """Class-incremental Split CIFAR-100 built by Avalanche's ``nc_benchmark``.

    ``classes`` restricts the benchmark to a subset (for quick tests); the fixed order is the
    protocol's permutation filtered to that subset. Labels are remapped so experience t holds
    classes [t*k, (t+1)*k).
    """
    if n_experiences <= 0:
        raise ValueError(f"n_experiences must be positive, got {n_experiences}")
    data = load_cifar100(path)
    order = class_order(100, class_order_seed)
    if classes is not None:
        wanted = set(int(c) for c in classes)
        order = [c for c in order if c in wanted]
    if len(order) % n_experiences:
        raise ValueError(f"{len(order)} classes cannot be split evenly into {n_experiences} experiences; "
                         f"choose --n-experiences dividing {len(order)}")

    def subset(split: str, per_class: int | None) -> ImageTensorDataset:
        x, y = data[f"x_{split}"], data[f"y_{split}"]
        keep = np.flatnonzero(np.isin(y, order))
        keep = keep[first_per_class(y[keep], per_class)]
        if len(keep) == 0:
            raise ValueError(f"no {split} samples for classes {order[:5]}...; check --train-per-class and the npz")
        return ImageTensorDataset(resize_images(x[keep], img_size), y[keep])

    train, test = subset("train", train_per_class), subset("test", test_per_class)
    return nc_benchmark(train, test, n_experiences=n_experiences, task_labels=False, shuffle=False,
                        fixed_class_order=order, class_ids_from_zero_from_first_exp=True,
                        train_transform=v2.RandomHorizontalFlip() if augment else None, eval_transform=None)
