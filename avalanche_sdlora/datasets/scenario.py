"""From items on disk to an Avalanche 0.6 class-incremental benchmark in the PILOT/SD-LoRA class order.

The order is ``numpy.random.seed(seed); numpy.random.permutation(n_classes)`` (PILOT's and SD-LoRA's
``utils/data_manager.py``). Labels are remapped to each class's position in it, so experience t holds labels
[t*k, (t+1)*k) and ``class_incremental_benchmark`` (which counts classes as 1 + the largest label) sees labels
0..n-1 in the identity order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from avalanche.benchmarks.scenarios.generic_scenario import CLScenario
from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
from avalanche.benchmarks.utils import DataAttribute, TaskLabels, TransformGroups
from avalanche.benchmarks.utils.classification_dataset import ClassificationDataset
from avalanche.benchmarks.utils.datasets_from_filelists import PathsDataset, default_image_loader
from avalanche.benchmarks.utils.flat_data import ConstantSequence
from torch.utils.data import Dataset


def class_order(n_classes: int, seed: int) -> list[int]:
    """Original class ids in order of appearance (``RandomState(seed)`` equals ``numpy.random.seed(seed)``)."""
    return [int(c) for c in np.random.RandomState(seed).permutation(n_classes)]


@dataclass(frozen=True)
class BenchmarkInfo:
    """What a run used, attached to the benchmark as ``benchmark.info``: which split, from where, in which order."""

    name: str
    split: str  # "aper", "coda", "official" or "npz": the split's origin, never one made here
    layout: str
    root: str
    n_classes: int
    n_experiences: int
    class_order_seed: int
    class_order: tuple[int, ...]  # original class ids (sorted-name positions); label i is class_order[i]
    class_names: tuple[str, ...]  # by original id; empty when the source names none
    train_size: int
    test_size: int
    expected_sizes: tuple[int, int] | None
    img_size: int
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None  # (mean, std); None: as SD-LoRA's code
    domains: tuple[tuple[str, int], ...] = ()  # DomainNet: training images per domain
    split_lists: tuple[str, ...] = ()  # the CODA-Prompt lists read (train, test); empty for folders

    @property
    def classes_per_experience(self) -> int:
        """Classes of each experience, in order."""
        return self.n_classes // self.n_experiences


@dataclass(frozen=True)
class RawSplit:
    """One split as read: the original class id of each item and how to build a dataset of a selection of them."""

    targets: np.ndarray
    build: Callable[[np.ndarray, list[int]], Dataset]  # (item indices, new labels) -> items (PIL image, label)


def path_split(items: Sequence[tuple[str, int]]) -> RawSplit:
    """Image files decoded on access by Avalanche's ``PathsDataset`` (nothing is read up front)."""
    def build(idx: np.ndarray, labels: list[int]) -> Dataset:
        return PathsDataset(None, [(items[i][0], lab) for i, lab in zip(idx, labels)], loader=default_image_loader)

    return RawSplit(np.asarray([t for _, t in items], dtype=np.int64), build)


def first_per_class(targets: np.ndarray, n: int | None, arg: str) -> np.ndarray:
    """Indices of the first ``n`` items of each class, in source order (all when ``n`` is None)."""
    if n is None:
        return np.arange(len(targets))
    if n <= 0:
        raise ValueError(f"{arg} must be positive, got {n}")
    return np.sort(np.concatenate([np.flatnonzero(targets == c)[:n] for c in np.unique(targets)]))


def check_experiences(n_classes: int, n_experiences: int) -> None:
    """One sentence unless ``n_experiences`` divides ``n_classes`` into non-empty experiences."""
    if n_experiences <= 0 or n_classes % n_experiences:
        raise ValueError(f"n_experiences={n_experiences} does not divide the {n_classes} classes evenly; choose a "
                         f"divisor of {n_classes} (class_incremental_benchmark would silently drop the remainder)")


def check_class_count(what: str, found: int, expected: int | None, where: str) -> None:
    """One sentence when ``found`` classes differ from the ``expected`` count of ``what``."""
    if expected is not None and found != expected:
        raise ValueError(f"{what}: found {found} classes in '{where}', expected {expected}; the download is "
                         f"incomplete or not this dataset (pass n_classes={found} or None only for a deliberate "
                         "subset)")


def first_classes(raw: RawSplit, n: int) -> RawSplit:
    """The items of original classes 0..n-1 only (a quick run on part of a benchmark)."""
    keep = np.flatnonzero(raw.targets < n)
    return RawSplit(raw.targets[keep], lambda idx, labels: raw.build(keep[idx], labels))


def build_benchmark(train: RawSplit, test: RawSplit, *, n_classes: int, n_experiences: int, seed: int,
                    transforms: tuple[Callable, Callable], train_per_class: int | None = None,
                    test_per_class: int | None = None, order: Sequence[int] | None = None) -> CLScenario:
    """``class_incremental_benchmark`` over both splits with labels remapped to the seed's class order
    (``order``: original class ids in order of appearance, when not ``class_order(n_classes, seed)``)."""
    check_experiences(n_classes, n_experiences)
    position = np.empty(n_classes, dtype=np.int64)  # an order holds the ids 0..n_classes-1 (first_classes)
    position[list(order) if order is not None else class_order(n_classes, seed)] = np.arange(n_classes)
    streams = {}
    train_tf, eval_tf = transforms
    # the test set is never augmented, whichever group a caller leaves active (class_incremental_benchmark's
    # concatenation leaves 'train' active on every stream)
    for name, raw, limit, groups in (("train", train, train_per_class, {"train": train_tf, "eval": eval_tf}),
                                     ("test", test, test_per_class, {"train": eval_tf, "eval": eval_tf})):
        idx = first_per_class(raw.targets, limit, f"{name}_per_class")
        labels = [int(v) for v in position[raw.targets[idx]]]
        streams[name] = ClassificationDataset(
            [raw.build(idx, labels)],
            data_attributes=[DataAttribute(labels, "targets"), TaskLabels(ConstantSequence(0, len(labels)))],
            transform_groups=TransformGroups(groups))
    return class_incremental_benchmark(streams, class_order=list(range(n_classes)), num_experiences=n_experiences)
