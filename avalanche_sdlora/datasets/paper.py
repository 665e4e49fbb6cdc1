"""The paper's benchmarks (SD-LoRA, ICLR 2025, Tables 1-3) from a user's own files, one function each.

Each returns an Avalanche 0.6 class-incremental benchmark (``class_incremental_benchmark``) whose ``info``
attribute (:class:`BenchmarkInfo`) records the split, layout, root, class order and sizes the run used.
Images are decoded on access; nothing is downloaded. Paths: the ``root`` argument, else the dataset's own variable
(``$SDLORA_IMAGENET_R``, ``$SDLORA_IMAGENET_A``, ``$SDLORA_CUB``, ``$SDLORA_DOMAINNET``, ``$SDLORA_CIFAR100``), else
``$SDLORA_DATA/<folder>`` with the folder names of the archives (``imagenet-r``, ``imagenet-a``, ``cub``,
``DomainNet``, ``cifar-100-python``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from avalanche.benchmarks.scenarios.generic_scenario import CLScenario
from torch import nn
from torchvision.datasets import CIFAR100

from .cifar import LAYOUT as CIFAR_LAYOUT
from .cifar import ArrayImages, cifar_folder, read_cifar100
from .image_folders import read_split_folders, unpacked_root
from .integrity import check_sizes, verify_md5
from .locations import find_split_lists, resolve_root
from .scenario import (BenchmarkInfo, RawSplit, build_benchmark, check_class_count, check_experiences, class_order,
                       first_classes, path_split)
from .split_lists import read_split_lists
from .transforms import resolve_normalization, sdlora_transforms

PathLike = str | os.PathLike


@dataclass(frozen=True)
class SplitSpec:
    """One published split of a benchmark: its sizes, the file users download, and where these facts come from."""

    sizes: tuple[int, int] | None  # (train, test) images; None where no source states them
    archive: str | None
    md5: str | None  # of ``archive``; None where no source states it
    layout: str
    source: str


@dataclass(frozen=True)
class PaperBenchmark:
    """One of the paper's benchmarks: its classes, task counts, split sizes and archive."""
    name: str
    n_classes: int
    task_counts: tuple[int, ...]  # the task counts the paper reports
    default_split: str
    splits: MappingProxyType  # split name -> SplitSpec


_APER = ("zhoudw-zdw/RevisitingCIL README (archives shared by APER, used by LAMDA-PILOT and SD-LoRA's code); "
         "md5: RevisitingCIL issue #5")
PAPER_BENCHMARKS: MappingProxyType = MappingProxyType({
    "imagenet-r": PaperBenchmark("imagenet-r", 200, (5, 10, 20), "aper", MappingProxyType({
        "aper": SplitSpec((24000, 6000), "imagenet-r.zip", "730aa3fb9c7d2ec0b6381c6b23040681",
                          "<root>/{train,test}/<wnid>/<image>.jpg", _APER),
        "coda": SplitSpec((24000, 6000), "imagenet-r.tar", "a61312130a589d0ca1a8fca1f2bd3337",
                          "the original tree <root>/<wnid>/<image>.jpg (hendrycks/imagenet-r imagenet-r.tar) plus "
                          "imagenet-r_train.yaml and imagenet-r_test.yaml",
                          "GT-RIPL/CODA-Prompt dataloaders/splits (24,000 / 6,000 entries, counted); tar md5 as in "
                          "kkirchheim/pytorch-ood"),
    })),
    "imagenet-a": PaperBenchmark("imagenet-a", 200, (10,), "aper", MappingProxyType({
        "aper": SplitSpec((5981, 1519), "ina.zip", "7f4aaf0b1532b7a0bd670822c152d3c5",
                          "<root>/{train,test}/<wnid>/<image>.jpg", _APER),
    })),
    "cub": PaperBenchmark("cub", 200, (10,), "aper", MappingProxyType({
        "aper": SplitSpec((9430, 2358), "cub.zip", "85e342a2d5f941e740193602057df7a5",
                          "<root>/{train,test}/<class>/<image>.jpg", _APER + " (not CUB's official 5,994 / 5,794)"),
    })),
    "domainnet": PaperBenchmark("domainnet", 345, (5,), "coda", MappingProxyType({
        "coda": SplitSpec(None, None, None,
                          "the DomainNet tree <root>/<domain>/<class>/<image>.jpg (ai.bu.edu/M3SDA, one zip per "
                          "domain) plus domainnet_train.yaml and domainnet_test.yaml",
                          "GT-RIPL/CODA-Prompt dataloaders/splits (quickdraw excluded: CODA-Prompt issue #19); the "
                          "lists' sizes and the zips' md5 are not stated in any source read"),
    })),
    "cifar100": PaperBenchmark("cifar100", 100, (10,), "official", MappingProxyType({
        "official": SplitSpec((50000, 10000), CIFAR100.filename, CIFAR100.tgz_md5,
                              f"<root>/{CIFAR100.base_folder}/{{train,test,meta}}", "torchvision.datasets.CIFAR100"),
        "npz": SplitSpec((50000, 10000), "cifar100.npz", None, "the shared cifar100.npz",
                         "../shared/README.md (own 500 / 100 per class split; sha256 there, no md5)"),
    })),
})

# named protocols: "<benchmark>-<tasks>" -> (benchmark, n_experiences), one per cell of the paper's tables
PAPER_PROTOCOLS: MappingProxyType = MappingProxyType({
    f"{b.name}-{t}": (b.name, t) for b in PAPER_BENCHMARKS.values() for t in b.task_counts})


# where each benchmark's files are looked for: (its own variable, the folder its archive unpacks to under $SDLORA_DATA)
LOCATIONS: MappingProxyType = MappingProxyType({
    "imagenet-r": ("SDLORA_IMAGENET_R", "imagenet-r"), "imagenet-a": ("SDLORA_IMAGENET_A", "imagenet-a"),
    "cub": ("SDLORA_CUB", "cub"), "domainnet": ("SDLORA_DOMAINNET", "DomainNet"),
    "cifar100": ("SDLORA_CIFAR100", CIFAR100.base_folder)})


def data_location(name: str, root: PathLike | None = None, *, split: str | None = None,
                  lists: PathLike | None = None) -> tuple[Path, tuple[Path, Path] | None]:
    """What the loader of benchmark ``name`` would read: the folder (or CIFAR-100's npz file) and, for a split made
    of lists, the two list files; found by the loader's own rules (``root``, its variable, ``$SDLORA_DATA``).

    Cheap (no image is listed), so a caller can name the inputs of a run before building it.
    """
    if name not in PAPER_BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {sorted(PAPER_BENCHMARKS)}")
    split = split or PAPER_BENCHMARKS[name].default_split
    spec = _check_split(name, split)
    env_var, folder = LOCATIONS[name]
    layout = CIFAR_LAYOUT if name == "cifar100" else spec.layout
    path = resolve_root(root, env_var=env_var, folder=folder, what=name, layout=layout)
    if name == "cifar100":
        return (path if path.is_file() else cifar_folder(path)), None
    if split != "coda":  # an APER archive: train/ and test/ folders
        return unpacked_root(path, folder), None
    return path, find_split_lists(lists, path, (f"{name}_train.yaml", f"{name}_test.yaml"), name)


def _check_split(name: str, split: str) -> SplitSpec:
    splits = PAPER_BENCHMARKS[name].splits
    if split not in splits:
        raise ValueError(f"{name} has no split {split!r}; choose one of {sorted(splits)} (each is a published split)")
    return splits[split]


def _assemble(name: str, split: str, root: Path, class_names: Sequence[str], train: RawSplit, test: RawSplit, *,
              n_experiences: int, class_order_seed: int, img_size: int, model: nn.Module | None,
              mean: Sequence[float] | None, std: Sequence[float] | None, train_per_class: int | None,
              test_per_class: int | None, strict: bool, classes: int | None = None, domains: tuple = (),
              split_lists: tuple = ()) -> CLScenario:
    """Check the counts against the published split, build the benchmark, attach what it used as ``info``."""
    spec = PAPER_BENCHMARKS[name].splits[split]
    n = len(class_names) if class_names else int(max(train.targets.max(), test.targets.max())) + 1
    order = class_order(n, class_order_seed)
    sizes = (len(train.targets), len(test.targets))
    if classes is not None:  # the first classes of the numbering, in the order the seed gives the whole benchmark
        if isinstance(classes, bool) or not isinstance(classes, int) or not 0 < classes <= n:
            raise ValueError(f"classes={classes!r}: {name} at '{root}' has {n} classes; pass 1 to {n}, or None for all")
        n, order = classes, [c for c in order if c < classes]
        train, test, class_names = first_classes(train, n), first_classes(test, n), class_names[:n]
    check_experiences(n, n_experiences)
    normalization = resolve_normalization(model, mean, std)
    check_sizes(f"{name} ({split}) at '{root}'", sizes, spec.sizes, strict=strict,
                subset=train_per_class is not None or test_per_class is not None or classes is not None)
    bench = build_benchmark(train, test, n_classes=n, n_experiences=n_experiences, seed=class_order_seed,
                            transforms=sdlora_transforms(img_size, normalization),
                            train_per_class=train_per_class, test_per_class=test_per_class, order=order)
    bench.info = BenchmarkInfo(
        name=name, split=split, layout=spec.layout, root=str(root), n_classes=n, n_experiences=n_experiences,
        class_order_seed=class_order_seed, class_order=tuple(order),
        class_names=tuple(class_names), train_size=sum(len(e.dataset) for e in bench.train_stream),
        test_size=sum(len(e.dataset) for e in bench.test_stream), expected_sizes=spec.sizes, img_size=img_size,
        normalization=normalization, domains=domains, split_lists=split_lists)
    return bench


def _verify(name: str, split: str, archive: PathLike | None) -> None:
    if archive is not None:
        spec = PAPER_BENCHMARKS[name].splits[split]
        verify_md5(archive, spec.md5, f"{name} ({split}: {spec.archive})")


def _folders(name: str, root: PathLike | None, split: str, n_classes: int | None, archive: PathLike | None,
             **kw) -> CLScenario:
    env_var, folder = LOCATIONS[name]
    spec = _check_split(name, split)
    _verify(name, split, archive)
    path = resolve_root(root, env_var=env_var, folder=folder, what=name, layout=spec.layout)
    path, names, items = read_split_folders(path, what=name, layout=f"{spec.layout} ({spec.archive} unpacked)",
                                            default_folder=folder)
    check_class_count(name, len(names), n_classes, str(path))
    return _assemble(name, split, path, names, path_split(items["train"]), path_split(items["test"]), **kw)


def _lists(name: str, root: PathLike | None, split: str, lists: PathLike | None, n_classes: int | None,
           archive: PathLike | None, *, marker: str, depth: int, excluded: str | None = None, **kw) -> CLScenario:
    env_var, folder = LOCATIONS[name]
    spec = _check_split(name, split)
    _verify(name, split, archive)
    path = resolve_root(root, env_var=env_var, folder=folder, what=name, layout=spec.layout)
    files = find_split_lists(lists, path, (f"{name}_train.yaml", f"{name}_test.yaml"), name)
    names, items, domains = read_split_lists(path, files, what=name, marker=marker, depth=depth,
                                             layout=spec.layout, excluded_domain=excluded)
    check_class_count(name, len(names), n_classes, str(files[0]))
    return _assemble(name, split, path, names, path_split(items["train"]), path_split(items["test"]),
                     domains=tuple(sorted(domains.items())), split_lists=tuple(str(f) for f in files), **kw)


def imagenet_r(root: PathLike | None = None, *, n_experiences: int = 10, class_order_seed: int = 1993,
               img_size: int = 224, split: str = "aper", lists: PathLike | None = None,
               model: nn.Module | None = None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
               n_classes: int | None = 200, train_per_class: int | None = None, test_per_class: int | None = None,
               archive: PathLike | None = None, strict: bool = False, classes: int | None = None) -> CLScenario:
    """ImageNet-R, 200 classes. ``split="aper"``: the APER/PILOT archive (what SD-LoRA's code reads);
    ``split="coda"``: the original tree with CODA-Prompt's lists (what CODA-Prompt and InfLoRA read).

    ``lists`` is the folder holding the two YAML lists (default ``$SDLORA_SPLIT_LISTS``, then ``root`` and its
    parent). ``model`` (a timm ViT or ``sdlora_vit``) sets the normalisation from its pretrained config;
    ``n_classes=None`` accepts any class count (synthetic or deliberately partial trees); ``archive`` checks the
    downloaded file's md5 first; ``strict`` turns a size mismatch with the published split into an error;
    ``classes=N`` keeps only the first N classes of the sorted-name numbering (quick runs; the class order is the
    seed's order of the whole benchmark with the others left out). Every loader takes these keywords.
    """
    kw = dict(n_experiences=n_experiences, class_order_seed=class_order_seed, img_size=img_size, model=model,
              mean=mean, std=std, train_per_class=train_per_class, test_per_class=test_per_class, strict=strict,
              classes=classes)
    if split == "coda":
        return _lists("imagenet-r", root, split, lists, n_classes, archive,
                      marker="imagenet-r", depth=2, **kw)
    if lists is not None:
        raise ValueError(f"lists= is for split='coda'; split={split!r} reads the archive's own train/ and test/")
    return _folders("imagenet-r", root, split, n_classes, archive, **kw)


def imagenet_a(root: PathLike | None = None, *, n_experiences: int = 10, class_order_seed: int = 1993,
               img_size: int = 224, model: nn.Module | None = None, mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None, n_classes: int | None = 200, train_per_class: int | None = None,
               test_per_class: int | None = None, archive: PathLike | None = None,
               strict: bool = False, classes: int | None = None) -> CLScenario:
    """ImageNet-A, 200 classes, the APER archive's split (some classes have only a few images)."""
    return _folders("imagenet-a", root, "aper", n_classes, archive, classes=classes,
                    n_experiences=n_experiences, class_order_seed=class_order_seed, img_size=img_size, model=model,
                    mean=mean, std=std, train_per_class=train_per_class, test_per_class=test_per_class, strict=strict)


def cub200(root: PathLike | None = None, *, n_experiences: int = 10, class_order_seed: int = 1993,
           img_size: int = 224, model: nn.Module | None = None, mean: Sequence[float] | None = None,
           std: Sequence[float] | None = None, n_classes: int | None = 200, train_per_class: int | None = None,
           test_per_class: int | None = None, archive: PathLike | None = None, strict: bool = False,
           classes: int | None = None) -> CLScenario:
    """CUB-200-2011, 200 classes, the APER archive's split (9,430 / 2,358, not the official 5,994 / 5,794)."""
    return _folders("cub", root, "aper", n_classes, archive, classes=classes,
                    n_experiences=n_experiences, class_order_seed=class_order_seed, img_size=img_size, model=model,
                    mean=mean, std=std, train_per_class=train_per_class, test_per_class=test_per_class, strict=strict)


def domainnet(root: PathLike | None = None, *, n_experiences: int = 5, class_order_seed: int = 1993,
              img_size: int = 224, lists: PathLike | None = None, model: nn.Module | None = None,
              mean: Sequence[float] | None = None, std: Sequence[float] | None = None, n_classes: int | None = 345,
              train_per_class: int | None = None, test_per_class: int | None = None,
              strict: bool = False, classes: int | None = None) -> CLScenario:
    """DomainNet, 345 classes over five domains (quickdraw excluded), CODA-Prompt's lists; 5 tasks of 69 classes.

    The class is the image's folder; the domains of one class share its label (``info.domains`` counts them).
    """
    return _lists("domainnet", root, "coda", lists, n_classes, None, marker="DomainNet", depth=3,
                  excluded="quickdraw", classes=classes, n_experiences=n_experiences,
                  class_order_seed=class_order_seed, img_size=img_size, model=model, mean=mean, std=std,
                  train_per_class=train_per_class, test_per_class=test_per_class, strict=strict)


def cifar100(root: PathLike | None = None, *, n_experiences: int = 10, class_order_seed: int = 1993,
             img_size: int = 224, model: nn.Module | None = None, mean: Sequence[float] | None = None,
             std: Sequence[float] | None = None, n_classes: int | None = 100, train_per_class: int | None = None,
             test_per_class: int | None = None, archive: PathLike | None = None, strict: bool = False,
             classes: int | None = None) -> CLScenario:
    """CIFAR-100 at ``img_size`` through the same transforms (as SD-LoRA's ``cifar224``).

    ``root``: a folder holding torchvision's ``cifar-100-python`` (or that folder): the official split; or the shared
    ``cifar100.npz``: that file's own split. ``info.split`` says which.
    """
    env_var, folder = LOCATIONS["cifar100"]
    path = resolve_root(root, env_var=env_var, folder=folder, what="cifar100", layout=CIFAR_LAYOUT)
    split, names, arrays = read_cifar100(path)
    _verify("cifar100", split, archive)
    n = len(names) or int(max(arrays["train"][1].max(), arrays["test"][1].max())) + 1
    check_class_count("cifar100", n, n_classes, str(path))
    raw = {s: RawSplit(y, lambda idx, labels, x=x: ArrayImages(x[idx], labels)) for s, (x, y) in arrays.items()}
    return _assemble("cifar100", split, path, names, raw["train"], raw["test"], n_experiences=n_experiences,
                     class_order_seed=class_order_seed, img_size=img_size, model=model, mean=mean, std=std,
                     train_per_class=train_per_class, test_per_class=test_per_class, strict=strict, classes=classes)


LOADERS = MappingProxyType({"imagenet-r": imagenet_r, "imagenet-a": imagenet_a, "cub": cub200,
                            "domainnet": domainnet, "cifar100": cifar100})


def paper_benchmark(protocol: str, root: PathLike | None = None, **kwargs) -> CLScenario:
    """The benchmark of one named protocol, e.g. ``paper_benchmark("imagenet-r-10", root, model=vit)``."""
    if protocol not in PAPER_PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {sorted(PAPER_PROTOCOLS)}")
    name, tasks = PAPER_PROTOCOLS[protocol]
    if kwargs.setdefault("n_experiences", tasks) != tasks:
        raise ValueError(f"protocol {protocol!r} has {tasks} tasks; drop n_experiences={kwargs['n_experiences']} "
                         f"or call {LOADERS[name].__name__}() directly")
    return LOADERS[name](root, **kwargs)
