"""Where a benchmark's files are found: an explicit path, a per-dataset variable, or ``$SDLORA_DATA``.

Nothing is ever downloaded (these machines are offline, and the paper's splits are archives a user fetches once).
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "SDLORA_DATA"
LISTS_ENV = "SDLORA_SPLIT_LISTS"


def resolve_root(root: str | os.PathLike | None, *, env_var: str, folder: str, what: str,
                 layout: str) -> Path:
    """``root``, else ``$<env_var>``, else ``$SDLORA_DATA/<folder>``; the folder must exist."""
    if root is not None:
        source = "root"
    elif os.environ.get(env_var):
        root, source = os.environ[env_var], f"${env_var}"
    elif os.environ.get(DATA_ENV):
        root, source = Path(os.environ[DATA_ENV]) / folder, f"${DATA_ENV}/{folder}"
    else:
        raise FileNotFoundError(
            f"no {what} folder given: pass root=PATH, or set ${env_var} to it, or ${DATA_ENV} to the folder that "
            f"holds '{folder}/' (expected layout: {layout}); nothing is downloaded")
    p = Path(root).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what} not found at '{p}' (from {source}); expected {layout}")
    return p


def find_split_lists(lists: str | os.PathLike | None, root: Path, names: tuple[str, str],
                     what: str) -> tuple[Path, Path]:
    """The train and test split lists: in ``lists``, ``$SDLORA_SPLIT_LISTS``, ``root`` or ``root``'s parent."""
    if lists is not None:
        places = [Path(lists).expanduser()]
    elif os.environ.get(LISTS_ENV):
        places = [Path(os.environ[LISTS_ENV]).expanduser()]
    else:
        places = [root, root.parent]
    for d in places:
        if all((d / n).is_file() for n in names):
            return d / names[0], d / names[1]
    shown = ", ".join(f"'{d}'" for d in places)
    raise FileNotFoundError(
        f"{what} split lists {names[0]} and {names[1]} not found in {shown}; take them from CODA-Prompt "
        f"(GT-RIPL/CODA-Prompt, dataloaders/splits/) and pass lists=FOLDER or set ${LISTS_ENV}")
