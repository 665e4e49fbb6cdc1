"""Where the offline assets (CIFAR-100 npz, ViT weights) are found.

These machines have no internet, so every loader takes an explicit path and otherwise looks in
``$SDLORA_ASSETS`` and then in ``../shared/assets`` beside the project (or the working directory).
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "SDLORA_ASSETS"
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def assets_dir() -> Path | None:
    """The first existing assets folder, or None when there is none (then loaders try downloading)."""
    candidates = []
    if os.environ.get(ENV_VAR):
        candidates.append(Path(os.environ[ENV_VAR]))
    candidates += [_PACKAGE_ROOT.parent / "shared" / "assets", Path.cwd().parent / "shared" / "assets",
                   Path.cwd() / "shared" / "assets"]
    for c in candidates:
        if c.is_dir():
            return c
    return None


def default_asset(filename: str) -> Path | None:
    """Path of ``filename`` in the assets folder if it is there."""
    d = assets_dir()
    if d is not None and (d / filename).is_file():
        return d / filename
    return None


def require_file(path: str | os.PathLike, what: str, how: str) -> Path:
    """Check that ``path`` is a readable file, with an error that says how to fix it.

    ``how`` says how the caller's user passes the path: a function argument for the library
    (``"split_cifar100(path=...)"``), a flag for a command line (``"--data"``).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"{what} not found at '{p}'. Pass the right path with {how} or set ${ENV_VAR} to the folder "
            f"holding it (the default is ../shared/assets beside the project).")
    if not os.access(p, os.R_OK):
        raise PermissionError(f"{what} at '{p}' is not readable; fix its permissions or pass another path with {how}.")
    return p
