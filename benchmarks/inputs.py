"""What a run reads (model, weights, data), checked and resolved before anything is written.

Every refusal is one sentence naming the flag and the fix. :func:`file_identity` names an input file by its
content, which is how a run's identity records it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avalanche_sdlora.assets import default_asset
from avalanche_sdlora.data import N_CLASSES, split_cifar100

from .config import RunConfig


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
    """The weights file: the one given, else ``<model>.safetensors`` in the assets folder; a clear error if neither."""
    checkpoint = given or default_asset(f"{model}.safetensors")
    if checkpoint is None:
        raise SystemExit(f"error: no weights for '{model}' in the assets folder: pass --checkpoint PATH or set "
                         "$SDLORA_ASSETS to the folder holding <model>.safetensors")
    if not Path(checkpoint).is_file():
        raise SystemExit(f"error: --checkpoint '{checkpoint}' is not a file; pass the path of the weights file")
    return str(checkpoint)


def resolve_data(given: str | None) -> str:
    """The CIFAR-100 npz: the one given, else ``cifar100.npz`` in the assets folder."""
    data = given or default_asset("cifar100.npz")
    if data is None:
        raise SystemExit("error: cifar100.npz not found in the assets folder: pass --data PATH or set $SDLORA_ASSETS "
                         "to the folder holding it")
    if not Path(data).is_file():
        raise SystemExit(f"error: --data '{data}' is not a file; pass the path of the CIFAR-100 npz")
    return str(data)


def check_per_class(cfg: RunConfig) -> None:
    """Refuse asking for more images per class than the npz has (the loader would silently give fewer).

    Reads only the label arrays (an npz loads per key); an unreadable file is left to the loader's own error.
    """
    classes = class_subset(cfg)
    try:
        with np.load(cfg.data, allow_pickle=False) as f:
            labels = {"--train-per-class": f["y_train"], "--test-per-class": f["y_test"]}
        fewest = {}
        for flag, y in labels.items():
            y = np.asarray(y).astype(np.int64).ravel()
            counts = np.bincount(y[np.isin(y, classes)] if classes is not None else y)
            fewest[flag] = int(counts[counts > 0].min())
    except Exception:  # noqa: BLE001 - the benchmark's loader names what is wrong with the file
        return
    for flag, wanted in (("--train-per-class", cfg.train_per_class), ("--test-per-class", cfg.test_per_class)):
        if wanted is not None and wanted > fewest[flag]:
            raise SystemExit(f"error: {flag} {wanted}: '{cfg.data}' has {fewest[flag]} images per class"
                             f"{' (the fewest of the chosen classes)' if classes else ''}; pass at most {fewest[flag]}")


def resolved(cfg: RunConfig) -> RunConfig:
    """``cfg`` checked, with its weights and data files found: what a run records and its workers rebuild."""
    check_classes(cfg)
    check_model(cfg)
    cfg = cfg.replace(checkpoint=resolve_checkpoint(cfg.model, cfg.checkpoint), data=resolve_data(cfg.data))
    check_per_class(cfg)
    return cfg


def class_subset(cfg: RunConfig) -> list[int] | None:
    return list(range(cfg.classes)) if cfg.classes else None


def make_benchmark(cfg: RunConfig, seed: int | None = None):
    """The Avalanche benchmark of the run with ``seed`` (every method of that seed sees this one; under
    ``--class-order fixed`` every seed sees the same one, and ``seed`` may be left out)."""
    cfg = cfg.fixed_order(seed)  # issue 22: under --class-order seed, the seed's own class order
    return split_cifar100(n_experiences=cfg.n_experiences, class_order_seed=cfg.class_order_seed,
                          train_per_class=cfg.train_per_class, test_per_class=cfg.test_per_class,
                          img_size=cfg.img_size, path=cfg.data, classes=class_subset(cfg), augment=cfg.augment)


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


def same_file_content(a: dict, b: dict) -> bool:
    return a.get("sha256") == b.get("sha256") and a.get("size") == b.get("size")
