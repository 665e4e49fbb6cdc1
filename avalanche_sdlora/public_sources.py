"""CIFAR-100 and ViT weights from their public sources, for a machine without the project's assets.

Each is looked for, in order: the assets folder (``$SDLORA_ASSETS``, :mod:`.assets`), then this package's cache
(``$SDLORA_CACHE``, else ``$XDG_CACHE_HOME/avalanche-sdlora``, else ``~/.cache/avalanche-sdlora``), then fetched
once into that cache, saying so first:

* CIFAR-100: torchvision's ``cifar-100-python`` folder (``torchvision.datasets.CIFAR100(download=True)``, which checks
  the archive's md5), converted to ``cifar100.npz`` with the keys :func:`avalanche_sdlora.data.load_cifar100` reads
  (its official 50,000 / 10,000 split, fine labels). A folder the user already has is converted without a download.
* ViT weights: timm's pretrained weights for the model name (``timm.create_model(name, pretrained=True)``, from the
  Hugging Face hub or timm's own cache), saved as ``<name>.safetensors`` without the classifier.

Offline and with nothing local, each raises one sentence naming what to put where. ``download=False`` never uses
the network.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import timm
from safetensors.torch import save as save_safetensors
from torchvision.datasets import CIFAR100

from .assets import ENV_VAR as ASSETS_ENV
from .assets import default_asset
from .atomic import write_bytes, write_with
from .datasets.cifar import FOLDER, read_cifar100

CACHE_ENV = "SDLORA_CACHE"
CIFAR_NPZ = "cifar100.npz"
CIFAR_ARCHIVE_MB = 161  # cifar-100-python.tar.gz, as torchvision downloads it


def cache_dir() -> Path:
    """Where fetched data and weights are kept: ``$SDLORA_CACHE``, else the user's cache folder."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "avalanche-sdlora"


def cifar100_folder_to_npz(root: str | Path, out: str | Path) -> Path:
    """torchvision's CIFAR-100 folder (``root`` or ``root/cifar-100-python``) as an npz of uint8 images."""
    _, _, arrays = read_cifar100(Path(root))
    keys = {f"{k}_{split}": v for split, (x, y) in arrays.items() for k, v in (("x", x), ("y", y.astype(np.int64)))}
    write_with(out, lambda f: np.savez(f, **keys))
    return Path(out)


def _cache(cache: str | Path | None) -> Path:
    """The folder a fetch writes to: ``cache`` when given, else :func:`cache_dir`."""
    return Path(cache) if cache is not None else cache_dir()


def _local(name: str, cache: str | Path | None) -> Path | None:
    """The file ``name`` from the assets folder, else from the cache; None when neither has it (it is fetched)."""
    found = default_asset(name)
    if found is not None:
        return found
    path = _cache(cache) / name
    return path if path.is_file() else None


def cifar100_npz(*, download: bool = True, cache: str | Path | None = None,
                 say: Callable[[str], None] = print) -> Path:
    """The CIFAR-100 npz: the assets folder's, the cache's, converted from a torchvision folder in the cache, or
    downloaded by torchvision into the cache and converted."""
    found = _local(CIFAR_NPZ, cache)
    if found is not None:
        return found
    cache = _cache(cache)
    npz = cache / CIFAR_NPZ
    if not (cache / FOLDER).is_dir():
        if not download:
            raise FileNotFoundError(_no_cifar(cache, "downloads are off"))
        say(f"CIFAR-100 is not in ${ASSETS_ENV} or {cache}: downloading torchvision's {CIFAR100.filename} "
            f"({CIFAR_ARCHIVE_MB} MB, md5-checked) into {cache} (once)")
        try:
            CIFAR100(str(cache), train=True, download=True)
        except Exception as exc:  # noqa: BLE001 - no network, a proxy, a full disk: one sentence with the way out
            raise FileNotFoundError(_no_cifar(cache, f"the download failed: {exc}")) from exc
    say(f"converting torchvision's {cache / FOLDER} into {npz} (once)")
    return cifar100_folder_to_npz(cache, npz)


def _no_cifar(cache: Path, why: str) -> str:
    return (f"CIFAR-100 not found ({why}): put cifar100.npz in ${ASSETS_ENV}, or torchvision's {FOLDER} folder in "
            f"{cache} (python -c \"import torchvision; torchvision.datasets.CIFAR100('{cache}', download=True)\" on "
            "a machine with internet), or pass its path (--data)")


def vit_weights(model_name: str, *, download: bool = True, cache: str | Path | None = None,
                say: Callable[[str], None] = print) -> Path:
    """``<model_name>.safetensors``: the assets folder's, the cache's, or timm's pretrained weights saved there."""
    name = f"{model_name}.safetensors"
    found = _local(name, cache)
    if found is not None:
        return found
    cache = _cache(cache)
    path = cache / name
    why = "downloads are off"
    if download:
        say(f"no {name} in ${ASSETS_ENV} or {cache}: fetching timm's pretrained {model_name} into {path} (once)")
        try:
            model = timm.create_model(model_name, pretrained=True, num_classes=0)
        except Exception as exc:  # noqa: BLE001 - offline, or a name timm has no weights for
            why = f"timm's download failed: {exc}"
        else:
            state = {k: v.contiguous() for k, v in model.state_dict().items()}
            write_bytes(path, save_safetensors(state))
            return path
    raise FileNotFoundError(f"no weights for '{model_name}' ({why}): put {name} in ${ASSETS_ENV} or {cache}, or pass "
                            "its path (--checkpoint, or checkpoint= in Python)")
