"""Split CIFAR-100 from the shared npz through Avalanche 0.6's ``class_incremental_benchmark``.

Images are resized once (bicubic) and cached as uint8 so a CPU run spends its time in the model;
normalisation (mean = std = 0.5) and the flip augmentation happen per sample.
"""

from __future__ import annotations

import hashlib
import os
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
from avalanche.benchmarks.scenarios.task_aware import with_task_labels
from avalanche.benchmarks.utils import _make_taskaware_classification_dataset
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2
from tqdm import tqdm

from .assets import default_asset, require_file
from .atomic import write_with

CIFAR_KEYS = ("x_train", "y_train", "x_test", "y_test")
N_CLASSES = 100
_PATH_ARG = "load_cifar100(path=...) or split_cifar100(path=...)"
_CACHE: dict[tuple, Tensor] = {}


def load_cifar100(path: str | Path | None = None, splits: tuple[str, ...] = ("train", "test")) -> dict[str, np.ndarray]:
    """Arrays of the shared CIFAR-100 npz, checked for keys, shapes, dtypes, pixel range and labels.

    Float images (for instance in [0, 1]) or NaNs would otherwise train silently on wrong pixels. ``splits``:
    the splits to read (an npz reads per key, so ``("train",)`` never reads a test image: what tuning on a
    validation split relies on).
    """
    unknown = [s for s in splits if s not in ("train", "test")]
    if unknown or not splits:
        raise ValueError(f"splits must name 'train' and/or 'test', got {splits!r}")
    keys = tuple(k for k in CIFAR_KEYS if k.split("_")[1] in splits)
    if path is None:
        path = default_asset("cifar100.npz")
        if path is None:
            raise FileNotFoundError(f"cifar100.npz not found: pass {_PATH_ARG} or set $SDLORA_ASSETS to the folder "
                                    "holding it (default ../shared/assets beside the project)")
    p = require_file(path, "CIFAR-100 npz", _PATH_ARG)
    try:
        with np.load(p, allow_pickle=False) as f:
            missing = [k for k in keys if k not in f.files]
            if missing:
                raise KeyError(f"'{p}' lacks keys {missing} (has {sorted(f.files)}); expected x_train, y_train, "
                               "x_test, y_test (uint8 images N x H x W x 3, labels 0..99)")
            data = {k: f[k] for k in keys}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise ValueError(f"'{p}' is not a readable npz file, truncated or damaged ({type(exc).__name__}: {exc}); "
                         f"pass {_PATH_ARG} a complete copy of cifar100.npz") from exc
    for split in splits:
        x, y = data[f"x_{split}"], data[f"y_{split}"]
        if x.ndim != 4 or x.shape[-1] != 3 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"'{p}': x_{split} must be (N, H, W, 3) uint8 with one label each in y_{split}, got "
                             f"{x.shape} and {y.shape}")
        check_images(x, f"'{p}' key x_{split}")
        check_labels(y, N_CLASSES, f"'{p}' key y_{split}")
    return data


def check_images(x: np.ndarray, where: str) -> None:
    """Refuse anything but uint8 pixels, saying what the array holds and how to convert it."""
    if x.dtype == np.uint8:
        return
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"{where} has dtype {x.dtype}; store the images as uint8 pixels 0..255")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise ValueError(f"{where} holds {int((~np.isfinite(x)).sum())} non-finite values (NaN or inf); "
                         "repair the images and store them as uint8 pixels 0..255")
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if lo < 0 or hi > 255:
        raise ValueError(f"{where} holds values in [{lo:g}, {hi:g}], outside 0..255; store the images as uint8 "
                         "pixels 0..255")
    if np.issubdtype(x.dtype, np.floating) and hi <= 1.0:
        raise ValueError(f"{where} is {x.dtype} in [{lo:g}, {hi:g}], not uint8 pixels 0..255; convert it with "
                         "np.round(x * 255).astype(np.uint8)")
    raise ValueError(f"{where} is {x.dtype} in [{lo:g}, {hi:g}], not uint8; convert it with "
                     "np.round(x).astype(np.uint8)")


def check_labels(y: np.ndarray, n_classes: int, where: str) -> None:
    """Refuse labels that are not integers in 0..n_classes-1."""
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{where} has dtype {y.dtype}; labels must be integers 0..{n_classes - 1}")
    if y.size and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        bad = y[(y < 0) | (y >= n_classes)]
        raise ValueError(f"{where} holds {len(bad)} labels outside 0..{n_classes - 1} (for instance {int(bad[0])}); "
                         f"CIFAR-100 fine labels are 0..{n_classes - 1}")


IMAGE_CACHE_ENV = "SDLORA_IMAGE_CACHE"  # the folder resize_images keeps resized images in (read per call)


# A step that takes longer than this shows a progress bar (on stderr); shorter ones stay silent.
PROGRESS_DELAY_S = 2.0


def resize_images(x: np.ndarray, size: int, batch: int = 2000, cache_dir: str | Path | None = None) -> Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, size, size) uint8, bicubic, cached per process.

    With ``cache_dir`` (default ``$SDLORA_IMAGE_CACHE``; off when neither is set) the result is also kept on disk
    and memory-mapped, so the parallel processes of one run (and later runs) share one copy and resize once:
    at 224 px every process otherwise spends minutes on one thread resizing 60,000 images and holds 9 GB of them.
    """
    key = (hashlib.sha1(np.ascontiguousarray(x[:: max(1, len(x) // 64)])).hexdigest(), x.shape, size)
    if key in _CACHE:
        return _CACHE[key]
    cache_dir = cache_dir or os.environ.get(IMAGE_CACHE_ENV) or None
    path = None
    if cache_dir is not None:
        digest = hashlib.sha1(np.ascontiguousarray(x)).hexdigest()[:16]
        path = Path(cache_dir) / f"images-{digest}-{len(x)}-{size}px.npy"
        if path.exists():
            _CACHE[key] = _load_mapped(path, (len(x), 3, size, size))
            return _CACHE[key]
    out = torch.empty(len(x), 3, size, size, dtype=torch.uint8)
    hint = "" if path is not None else f"; ${IMAGE_CACHE_ENV}=DIR keeps them on disk for the next run"
    with tqdm(total=len(x), unit="img", delay=PROGRESS_DELAY_S,
              desc=f"resizing {len(x)} images to {size} px (once per process{hint})") as progress:
        for i in range(0, len(x), batch):
            t = torch.from_numpy(x[i:i + batch]).permute(0, 3, 1, 2).float()
            if t.shape[-1] != size:
                t = F.interpolate(t, size=(size, size), mode="bicubic", align_corners=False)
            out[i:i + batch] = t.round_().clamp_(0, 255).to(torch.uint8)
            progress.update(len(t))
    if path is not None:
        write_with(path, lambda f: np.save(f, out.numpy()))  # a unique temporary name: other processes may write it too
        out = _load_mapped(path, tuple(out.shape))
    _CACHE[key] = out
    return out


def _load_mapped(path: Path, shape: tuple[int, ...]) -> Tensor:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"image cache '{path}' is truncated or damaged ({exc}); delete it (it is rebuilt on the "
                         "next run)") from exc
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


def first_per_class(y: np.ndarray, n: int | None, name: str = "train_per_class") -> np.ndarray:
    """Indices of the first ``n`` samples of each class, in file order (all when ``n`` is None)."""
    if n is None:
        return np.arange(len(y))
    if n <= 0:
        raise ValueError(f"{name} must be positive, got {n}")
    idx = [np.flatnonzero(y == c)[:n] for c in np.unique(y)]
    return np.sort(np.concatenate(idx))


VALIDATION_SEED = 0  # the seed of the held-out validation images (one split for every run that tunes)


def validation_split(y: np.ndarray, per_class: int, seed: int = VALIDATION_SEED) -> np.ndarray:
    """Sorted indices of ``per_class`` training samples of each class, drawn at random with ``seed``: a validation
    split carved from the training images (never the test images), the same for every method and class order.

    Class c's images are drawn by ``RandomState(seed + c).permutation`` of its samples (file order), so a class's
    split does not depend on which other classes a run uses.
    """
    if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) or per_class <= 0:
        raise ValueError(f"validation_per_class must be a positive integer, got {per_class!r}")
    out = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if per_class >= len(idx):
            raise ValueError(f"validation_per_class {per_class}: class {int(c)} has {len(idx)} training images, and "
                             "some must stay for training; pass fewer")
        out.append(idx[np.random.RandomState(seed + int(c)).permutation(len(idx))[:per_class]])
    return np.sort(np.concatenate(out))


def class_order(n_classes: int, seed: int) -> list[int]:
    """The protocol's class order: ``numpy.random.RandomState(seed).permutation(n_classes)``."""
    return [int(c) for c in np.random.RandomState(seed).permutation(n_classes)]


def split_cifar100(*, n_experiences: int = 10, class_order_seed: int = 1993, train_per_class: int | None = 100,
                   test_per_class: int | None = None, img_size: int = 128, path: str | Path | None = None,
                   augment: bool = True, classes: list[int] | None = None,
                   image_cache: str | Path | None = None, validation_per_class: int | None = None,
                   validation_seed: int = VALIDATION_SEED):
    """Class-incremental Split CIFAR-100 built by Avalanche's ``class_incremental_benchmark``.

    ``classes`` restricts the benchmark to a subset (for quick tests); the fixed order is the
    protocol's permutation filtered to that subset. Labels are remapped to the position in that order, so
    experience t holds classes [t*k, (t+1)*k): Avalanche 0.6 counts a benchmark's classes as 1 + the largest
    label, so labels must be 0..n-1. Experiences hold the samples nc_benchmark gave, in its order (below);
    training samples are flipped at random (``augment``), test samples are not. ``image_cache``: the folder the
    resized images are kept in (:func:`resize_images`' ``cache_dir``; default ``$SDLORA_IMAGE_CACHE``, else none).

    ``validation_per_class``: hold out that many training images of each class (:func:`validation_split`, seeded
    by ``validation_seed``) and give them as the evaluation stream (``benchmark.test_stream``, named so for
    Avalanche) in place of the test images, which are then never read: what tuning hyperparameters needs. The
    training images are the rest (``train_per_class`` of them, file order).
    """
    if n_experiences <= 0:
        raise ValueError(f"n_experiences must be positive, got {n_experiences}")
    order = class_order(N_CLASSES, class_order_seed)
    if classes is not None:
        wanted = {int(c) for c in classes}
        outside = sorted(c for c in wanted if not 0 <= c < N_CLASSES)
        if outside or not wanted:
            raise ValueError(f"classes must be CIFAR-100 class ids 0..{N_CLASSES - 1}, got "
                             f"{outside[:5] if outside else 'an empty list'}")
        order = [c for c in order if c in wanted]
    if len(order) % n_experiences:
        raise ValueError(f"{len(order)} classes cannot be split evenly into {n_experiences} experiences; "
                         f"choose n_experiences dividing {len(order)}")
    data = load_cifar100(path, splits=("train",) if validation_per_class is not None else ("train", "test"))
    position = np.full(N_CLASSES, -1, dtype=np.int64)
    position[order] = np.arange(len(order))
    held_out = None
    if validation_per_class is not None:
        if test_per_class is not None:
            raise ValueError("test_per_class has no effect with validation_per_class (no test image is read); pass "
                             "one of the two")
        held_out = validation_split(data["y_train"], validation_per_class, validation_seed)
        held_out = held_out[np.isin(data["y_train"][held_out], order)]

    def subset(split: str, per_class: int | None, group: str):
        x, y = data[f"x_{'train' if split == 'validation' else split}"], data[f"y_{'train' if split == 'validation' else split}"]
        if split == "validation":
            keep = held_out
        else:
            keep = np.flatnonzero(np.isin(y, order))
            if held_out is not None:
                keep = np.setdiff1d(keep, held_out)
            keep = keep[first_per_class(y[keep], per_class, f"{split}_per_class")]
        if len(keep) == 0:
            raise ValueError(f"no {split} samples for classes {order[:5]}...; check {split}_per_class and the npz")
        images = ImageTensorDataset(resize_images(x[keep], img_size, cache_dir=image_cache), position[y[keep]])
        flip = v2.RandomHorizontalFlip() if augment else None
        return _make_taskaware_classification_dataset(images, transform_groups={"train": (flip, None), "eval": (None, None)},
                                                      initial_transform_group=group)

    k = len(order) // n_experiences
    # Sample order inside an experience, kept from the nc_benchmark these results were made with: class by class
    # in the iteration order of the Python set of the experience's original class ids (nc_scenario.py builds
    # ``set(classes_order_original_ids[start:end])`` and walks it), file order within a class. Changing it
    # would reshuffle every minibatch and change every number in results/.
    within = [[int(position[c]) for c in set(order[t * k:(t + 1) * k])] for t in range(n_experiences)]
    # class_incremental_benchmark builds an experience by prepending class after class (0.6:
    # ``data_by_class[c].concat(curr_data)``), so each experience's classes are given last-to-first.
    reversed_within = [c for classes_t in within for c in reversed(classes_t)]
    benchmark = class_incremental_benchmark({"train": subset("train", train_per_class, "train"),
                                             "test": subset("test" if held_out is None else "validation",
                                                            test_per_class, "eval")},
                                            class_order=reversed_within, num_experiences=n_experiences)
    return task_labelled(benchmark)


def task_labelled(benchmark):
    """A class-incremental benchmark whose experiences carry task label 0 and sorted class lists, as
    ``nc_benchmark`` gave them (every sample has task label 0).

    The task label keeps Avalanche's metric names (".../Task000"). ``class_incremental_benchmark`` gives the class
    lists as sets; Avalanche's own LearningToPrompt passes them to np.setdiff1d, which takes a set for one object and
    masks every logit (NaN loss).
    """
    benchmark = with_task_labels(benchmark)
    for stream in benchmark.streams.values():
        for exp in stream:
            for attr in ("classes_in_this_experience", "previous_classes", "classes_seen_so_far", "future_classes"):
                setattr(exp, attr, sorted(getattr(exp, attr)))
    return benchmark
