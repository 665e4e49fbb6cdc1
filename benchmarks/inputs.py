"""What a run reads (model, weights, data), checked and resolved before anything is written, and the benchmark.

Every refusal is one sentence naming the flag and the fix. :func:`file_identity` names an input file by its
content and :func:`tree_identity` a data folder by its file list, which is how a run's identity records them.
The npz protocols build Split CIFAR-100 with :func:`avalanche_sdlora.data.split_cifar100`; the paper protocols
(``imagenet-r-10`` ...) the benchmark of :mod:`avalanche_sdlora.datasets` their name gives, from ``--data``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avalanche_sdlora import public_sources
from avalanche_sdlora.data import IMAGE_CACHE_ENV, N_CLASSES, split_cifar100, task_labelled
from avalanche_sdlora.datasets import LOADERS, PAPER_BENCHMARKS, data_location
from avalanche_sdlora.model import create_backbone

from .config import RunConfig
from .protocols import PAPER_WEIGHTS, benchmark_of


def check_model(cfg: RunConfig) -> None:
    """Refuse a model the harness cannot run, and an image size its patches do not tile, before any file is read.

    Built on the meta device (no memory, no weights), so ``--model resnet18`` is refused for what it is rather than
    for its missing weights, and ``--img-size 33`` is not silently cut to 32 by the patch embedding.
    """
    import timm

    if cfg.model not in timm.list_models():
        raise SystemExit(f"error: --model '{cfg.model}' is not a timm model name; pass e.g. --model "
                         "vit_tiny_patch16_224")
    with torch.device("meta"):
        model = timm.create_model(cfg.model, pretrained=False, num_classes=0)
    blocks = getattr(model, "blocks", None)
    if not blocks or not all(hasattr(getattr(b, "attn", None), "qkv") for b in blocks):
        raise SystemExit(f"error: --model '{cfg.model}' is not a timm ViT (no .blocks[*].attn.qkv); every method "
                         "of the harness adapts or reads a ViT: pass e.g. --model vit_tiny_patch16_224")
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch
    if patch and cfg.img_size % patch:
        near = sorted({max(patch, cfg.img_size // patch * patch), (cfg.img_size // patch + 1) * patch})
        raise SystemExit(f"error: --img-size {cfg.img_size} is not a multiple of {cfg.model}'s patch size {patch} "
                         f"(the last pixels would be ignored); pass e.g. --img-size {' or '.join(map(str, near))}")


def check_classes(cfg: RunConfig) -> None:
    if cfg.classes is not None and cfg.classes > N_CLASSES:
        raise SystemExit(f"error: --classes {cfg.classes}: CIFAR-100 has {N_CLASSES} classes; pass at most {N_CLASSES}")


def resolve_checkpoint(model: str, given: str | None) -> str:
    """The weights file: the one given, else ``<model>.safetensors`` in the assets folder or the cache, else timm's
    pretrained weights fetched into the cache (:mod:`avalanche_sdlora.public_sources`); a clear error if none."""
    if given is None:
        try:
            return str(public_sources.vit_weights(model))
        except FileNotFoundError as exc:
            raise SystemExit(f"error: {exc}") from None
    if not Path(given).is_file():
        raise SystemExit(f"error: --checkpoint '{given}' is not a file; pass the path of the weights file")
    return str(given)


def resolve_data(given: str | None) -> str:
    """The CIFAR-100 npz: the one given (an npz, or torchvision's CIFAR-100 folder, converted once into the cache),
    else the assets folder's or the cache's, else torchvision's download into the cache."""
    try:
        if given is None:
            return str(public_sources.cifar100_npz())
        if Path(given).is_dir():
            npz = public_sources.cache_dir() / public_sources.CIFAR_NPZ
            return str(npz if npz.is_file() else public_sources.cifar100_folder_to_npz(given, npz))
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"error: {' '.join(str(exc).split())}") from None
    if not Path(given).is_file():
        raise SystemExit(f"error: --data '{given}' is not a file (nor a folder); pass the CIFAR-100 npz or "
                         "torchvision's cifar-100-python folder")
    return str(given)


def check_per_class(cfg: RunConfig) -> None:
    """Refuse asking for more images per class than the npz has (the loader would silently give fewer).

    Reads only the label arrays (an npz loads per key); an unreadable file is left to the loader's own error.
    """
    classes = class_subset(cfg)
    try:
        with np.load(cfg.data, allow_pickle=False) as f:  # labels only; no test label under --validation-per-class
            labels = {"--train-per-class": f["y_train"]}
            if cfg.validation_per_class is None:
                labels["--test-per-class"] = f["y_test"]
        fewest = {}
        for flag, y in labels.items():
            y = np.asarray(y).astype(np.int64).ravel()
            counts = np.bincount(y[np.isin(y, classes)] if classes is not None else y)
            fewest[flag] = int(counts[counts > 0].min())
    except Exception:  # noqa: BLE001 - the benchmark's loader names what is wrong with the file
        return
    held = cfg.validation_per_class or 0
    if held and held >= fewest["--train-per-class"]:
        raise SystemExit(f"error: --validation-per-class {held}: '{cfg.data}' has {fewest['--train-per-class']} "
                         "training images per class and some must stay for training; pass fewer")
    fewest["--train-per-class"] -= held
    for flag, wanted in (("--train-per-class", cfg.train_per_class), ("--test-per-class", cfg.test_per_class)):
        if wanted is not None and flag in fewest and wanted > fewest[flag]:
            raise SystemExit(f"error: {flag} {wanted}: '{cfg.data}' has {fewest[flag]} images per class"
                             f"{' (the fewest of the chosen classes)' if classes else ''}"
                             f"{' beside the held-out validation images' if held and flag == '--train-per-class' else ''}"
                             f"; pass at most {fewest[flag]}")


def check_weights(cfg: RunConfig) -> None:
    """Load ``--checkpoint`` into the run's backbone once, so a damaged, foreign or non-finite weights file is refused
    before a run folder exists (every method builds its backbone with :func:`create_backbone`)."""
    try:
        create_backbone(cfg.model, checkpoint=cfg.checkpoint, img_size=cfg.img_size)
    except (ValueError, TypeError, OSError) as exc:
        message = " ".join(str(exc).split()).replace("checkpoint=", "--checkpoint ").replace("model_name=", "--model ")
        raise SystemExit(f"error: --checkpoint '{cfg.checkpoint}': {message}") from None


def resolved(cfg: RunConfig) -> RunConfig:
    """``cfg`` checked, with its weights and data found: what a run records and its workers rebuild."""
    if benchmark_of(cfg.protocol) is not None:
        check_model(cfg)
        return resolved_paper(cfg)
    for flag, value in (("--split", cfg.split), ("--lists", cfg.lists)):
        if value is not None:
            raise SystemExit(f"error: {flag} is for the paper protocols (imagenet-r-10 ...); --protocol {cfg.protocol} "
                             "reads the npz's own split: drop it")
    check_classes(cfg)
    check_model(cfg)
    cfg = cfg.replace(checkpoint=resolve_checkpoint(cfg.model, cfg.checkpoint), data=resolve_data(cfg.data))
    check_per_class(cfg)
    return cfg


# ------------------------------------------------------------------------------------------- paper protocols
# The loaders' keywords, as the command line names them (their errors are shown with the flag).
_FLAGS = {r"\(pass n_classes=\d+ or None only for a deliberate subset\)":
          "(for a deliberate subset pass --classes N: the first N classes, the count then unchecked)",
          "root=PATH": "--data PATH", "lists=FOLDER": "--lists FOLDER", r"\bclasses=": "--classes ",
          "n_experiences=": "--n-experiences ", r"\btrain_per_class\b": "--train-per-class",
          r"\btest_per_class\b": "--test-per-class", r"\bsplit=": "--split "}


def _as_flags(message: str) -> str:
    for keyword, flag in _FLAGS.items():
        message = re.sub(keyword, flag, message)
    return message


def resolved_paper(cfg: RunConfig) -> RunConfig:
    """A paper protocol's run checked, its weights required and its data (and split lists) found."""
    name = benchmark_of(cfg.protocol)
    bench = PAPER_BENCHMARKS[name]
    takes = inspect.signature(LOADERS[name]).parameters
    if cfg.split is not None and "split" not in takes and name != "cifar100":
        raise SystemExit(f"error: --split {cfg.split}: {name} has one published split ({bench.default_split}); drop "
                         "--split")
    if cfg.split is not None and cfg.split not in bench.splits:
        raise SystemExit(f"error: --split {cfg.split}: {name} has the splits {', '.join(bench.splits)}; pass one of "
                         "them")
    if cfg.checkpoint is None:
        raise SystemExit(f"error: --protocol {cfg.protocol} needs --checkpoint PATH, a local weights file of "
                         f"{cfg.model} (the paper's weights are timm's {PAPER_WEIGHTS}; save them once on a machine "
                         "with internet, see docs/reproducing.md); nothing is downloaded")
    checkpoint = resolve_checkpoint(cfg.model, cfg.checkpoint)
    try:
        root, lists = data_location(name, cfg.data, split=cfg.split, lists=cfg.lists)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: {_as_flags(str(exc))}") from None
    if cfg.lists is not None and lists is None:
        raise SystemExit(f"error: --lists is for a split made of CODA-Prompt's lists (imagenet-r --split coda, "
                         f"domainnet); {name} --split {cfg.split or bench.default_split} reads the archive's own "
                         "train/ and test/ folders: drop --lists")
    if not root.exists():
        raise SystemExit(f"error: --data '{root}' does not exist; pass the {name} folder")
    split = cfg.split or ("npz" if name == "cifar100" and root.is_file() else bench.default_split)
    if name == "cifar100" and cfg.split is not None and cfg.split != split:
        raise SystemExit(f"error: --split {cfg.split}: '{root}' holds CIFAR-100's {split} split (the split follows "
                         "--data: torchvision's cifar-100-python folder is 'official', the npz 'npz'); drop --split")
    return cfg.replace(checkpoint=checkpoint, data=str(root), split=split,
                       lists=None if lists is None else str(lists[0].parent))


def _normalization_source(model: str) -> torch.nn.Module:
    """A shell of the timm model on the meta device (no memory, no weights): its pretrained config gives the
    loaders' mean and std (:func:`avalanche_sdlora.datasets.timm_normalization`)."""
    import timm

    with torch.device("meta"):
        return timm.create_model(model, pretrained=False, num_classes=0)


def paper_benchmark_of(cfg: RunConfig):
    """A paper protocol's benchmark from its loader, with task label 0 on every experience (as the npz protocols'),
    normalised by the model's timm config; ``benchmark.info`` says what it read."""
    name = benchmark_of(cfg.protocol)
    loader = LOADERS[name]
    takes = inspect.signature(loader).parameters
    kw = dict(n_experiences=cfg.n_experiences, class_order_seed=cfg.class_order_seed, img_size=cfg.img_size,
              model=_normalization_source(cfg.model), train_per_class=cfg.train_per_class,
              test_per_class=cfg.test_per_class, classes=cfg.classes)
    if cfg.classes is not None:
        kw["n_classes"] = None  # a quick run on the first classes: the folder's class count is not checked
    if "split" in takes:
        kw["split"] = cfg.split
    if "lists" in takes and cfg.lists is not None:
        kw["lists"] = cfg.lists
    try:
        bench = loader(cfg.data, **kw)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: {_as_flags(str(exc))}") from None
    info = bench.info
    bench = task_labelled(bench)
    bench.info = info
    return bench


def benchmark_record(benchmark) -> dict | None:
    """What a paper protocol's benchmark read (split, layout, folder, class order, sizes, normalisation), for
    config.json; None for the npz protocols (their split is the npz's own)."""
    info = getattr(benchmark, "info", None)
    return None if info is None else json_ready(dataclasses.asdict(info))


def json_ready(value):
    if isinstance(value, (tuple, list)):
        return [json_ready(v) for v in value]
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    return value


def class_subset(cfg: RunConfig) -> list[int] | None:
    return list(range(cfg.classes)) if cfg.classes else None


def image_cache(cfg: RunConfig) -> str | None:
    """The folder of resized images a run keeps (``avalanche_sdlora.data.resize_images``), None for none.

    ``$SDLORA_IMAGE_CACHE`` when set (set but empty: none); else, on a GPU, the user's cache folder
    (``$XDG_CACHE_HOME`` or ``~/.cache``, then ``avalanche-sdlora/images``): at 224 px every process of a run otherwise
    resizes the 60,000 images for minutes on one thread and holds 9 GB of them, and a GPU waits meanwhile. Off on CPU.
    The images are the same either way (no number changes), so it is recorded but not in the identity.
    """
    if IMAGE_CACHE_ENV in os.environ:
        return os.environ[IMAGE_CACHE_ENV] or None
    if not cfg.device.startswith("cuda"):
        return None
    return str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "avalanche-sdlora" / "images")


def make_benchmark(cfg: RunConfig, seed: int | None = None):
    """The Avalanche benchmark of the run with ``seed`` (every method of that seed sees this one; under
    ``--class-order fixed`` every seed sees the same one, and ``seed`` may be left out)."""
    cfg = cfg.fixed_order(seed)  # issue 22: under --class-order seed, the seed's own class order
    if benchmark_of(cfg.protocol) is not None:  # issue 18: a paper protocol, from its loader
        if cfg.validation_per_class is not None:
            raise SystemExit(f"error: --validation-per-class is for the CIFAR-100 npz protocols for now; --protocol "
                             f"{cfg.protocol} reads its folder's own train/test split: drop it")
        return paper_benchmark_of(cfg)
    return split_cifar100(n_experiences=cfg.n_experiences, class_order_seed=cfg.class_order_seed,
                          train_per_class=cfg.train_per_class, test_per_class=cfg.test_per_class,
                          img_size=cfg.img_size, path=cfg.data, classes=class_subset(cfg), augment=cfg.augment,
                          image_cache=image_cache(cfg), validation_per_class=cfg.validation_per_class)


# issue 22: the benchmark of a class order, built once per process and order.
_LAST_BENCHMARK: dict[str, Any] = {}


def benchmark_for(cfg: RunConfig, seed: int | None = None):
    """:func:`make_benchmark`'s benchmark, built once per class order in this process and tagged with its order.

    Runs go seed-major (every method of a seed, then the next seed), so keeping only the last benchmark built is
    enough: a ``--class-order seed`` run builds one per seed, a fixed-order run one in all, each worker of
    ``--jobs`` one per order it meets; and at most one (about 1 GB at 128 px, all images) is held.
    """
    fixed = cfg.fixed_order(seed)
    key = json.dumps(fixed.to_json(), sort_keys=True, default=str)
    if key not in _LAST_BENCHMARK:
        _LAST_BENCHMARK.clear()  # before building: never two in memory
        bench = make_benchmark(fixed)
        bench.sdlora_class_order_seed = fixed.class_order_seed  # what runner.run checks against its seed's order
        _LAST_BENCHMARK[key] = bench
    return _LAST_BENCHMARK[key]


def forget_benchmarks() -> None:
    """Drop the benchmark :func:`benchmark_for` keeps (a parent whose workers build their own)."""
    _LAST_BENCHMARK.clear()


_HASHES: dict[tuple, str] = {}


def file_identity(path: str | Path) -> dict:
    """What identifies an input file: its content's SHA-256 (and size); the name is kept for the reader only.

    Content, not name, size or mtime: the same file moved or copied elsewhere is the same input (a copy gets a
    new mtime), and a file replaced under the same name is not. Hashing the 167 MB CIFAR-100 npz takes ~0.2 s;
    the result is memoised per process by (path, size, mtime, inode).
    """
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        _HASHES[key] = h.hexdigest()
    return {"sha256": _HASHES[key], "size": st.st_size, "name": p.name}


def _files_and_sizes(folder: Path | str, prefix: str):
    """(relative posix path, size) of every file below ``folder``, links followed (os.scandir: one stat each)."""
    with os.scandir(folder) as entries:
        for e in entries:
            if e.is_dir():
                yield from _files_and_sizes(e.path, f"{prefix}{e.name}/")
            else:
                yield f"{prefix}{e.name}", e.stat().st_size


def tree_identity(root: str | Path, lists: str | Path | None = None, split_lists: tuple[str, ...] = ()) -> dict:
    """What identifies a data folder: the SHA-256 of its file list, one "relative path, size" line per file (and
    the content hashes of the split lists read beside it); the name is kept for the reader only.

    Hashing the images themselves would read the whole tree (gigabytes: minutes per run). The list with sizes is one
    stat per file (about 0.3 s for 30,000 files on this machine, ImageNet-R's count) and changes when
    a file is added, removed, renamed, truncated or replaced by one of another size (a re-encoded image), which is
    how a download goes wrong; relative paths keep a moved or copied tree the same input. A byte changed in place
    with the size kept is not seen. Not memoised: a run computes it once, and a tree may change between calls.
    """
    p = Path(root).resolve()
    lines, total = [], 0
    for rel, size in _files_and_sizes(p, ""):
        total += size
        lines.append(f"{rel}\t{size}\n")
    lines.sort()
    found = {}
    if lists is not None:
        for f in sorted(Path(lists).glob("*.yaml")):
            if not split_lists or f.name in split_lists:
                found[f.name] = file_identity(f)["sha256"]
    return {"files_sha256": hashlib.sha256("".join(lines).encode()).hexdigest(), "files": len(lines), "bytes": total,
            "split_lists": found, "name": p.name}


def data_identity(cfg: RunConfig) -> dict:
    """The identity of ``--data``: the npz's content, or a data folder's file list (:func:`tree_identity`)."""
    if Path(cfg.data).is_file():
        return file_identity(cfg.data)
    names = ()
    name = benchmark_of(cfg.protocol)
    if cfg.lists is not None and name is not None:
        names = (f"{name}_train.yaml", f"{name}_test.yaml")
    return tree_identity(cfg.data, cfg.lists, names)


# what identifies an input: a file's content hash and size, or a folder's file-list hash, counts and lists
_CONTENT = ("sha256", "size", "files_sha256", "files", "bytes", "split_lists")


def same_file_content(a: dict, b: dict) -> bool:
    return all(a.get(k) == b.get(k) for k in _CONTENT)
