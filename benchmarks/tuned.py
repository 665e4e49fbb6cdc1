"""Tuned recipes into a run: ``compare --tuned CHOSEN_JSON`` (issue 30), the reader of what ``benchmarks.tune`` chose.

A chosen recipe enters a run as the ``--method-option`` entries it stands for (``NAME.optimizer``, ``NAME.lr`` and
the recipe's own options), so ``config.json`` records it, the run's identity holds it (a resume with other recipes is
refused) and the tables show it; the file itself is recorded by name and SHA-256.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import RunConfig
from .inputs import file_identity
from .methods import get_method

# What a chosen.json must hold for a method that trains by gradient (benchmarks.tune writes it).
RECIPE_KEYS = ("optimizer", "lr", "options")


def read_chosen(path: str | Path) -> dict[str, Any]:
    """The content of a ``chosen.json``, checked; every refusal names ``--tuned`` and the fix."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--tuned '{path}' is not a file; pass the chosen.json that benchmarks.tune wrote")
    try:
        data = json.loads(p.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"--tuned '{path}' is not a JSON file ({exc}); pass the chosen.json that benchmarks.tune "
                         "wrote") from None
    if not isinstance(data, dict) or not isinstance(data.get("methods"), dict) or "protocol" not in data:
        raise ValueError(f"--tuned '{path}' holds no 'protocol' and 'methods' of benchmarks.tune; pass the "
                         "chosen.json that benchmarks.tune wrote")
    return data


def apply(cfg: RunConfig, methods: Sequence[str], path: str | Path) -> tuple[RunConfig, dict[str, Any]]:
    """``cfg`` with the chosen recipe of every method in ``methods`` that trains by gradient, and the record of the
    tuning for config.json. Refused (``ValueError`` naming the flag): another protocol, a method the file did not
    tune, and a recipe option also given by ``--method-option``."""
    data = read_chosen(path)
    if data["protocol"] != cfg.protocol:
        raise ValueError(f"--tuned '{path}' was tuned on --protocol {data['protocol']}, this run is --protocol "
                         f"{cfg.protocol}; tune this protocol first (python -m benchmarks.tune --protocol "
                         f"{cfg.protocol} ...)")
    given = {(m, k): v for m, k, v in cfg.method_options}
    added: list[tuple[str, str, Any]] = []
    used: dict[str, dict] = {}
    for m in methods:
        if get_method(m).recipe(cfg).optimizer is None:
            continue  # nothing trained by gradient: nothing was tuned
        base = get_method(m).recipe_of or m  # a variant trains with its base method's tuned recipe
        pick = data["methods"].get(base)
        if not isinstance(pick, dict) or any(k not in pick for k in RECIPE_KEYS):
            raise ValueError(f"--tuned '{path}' holds no chosen recipe for {base}; tune it (python -m benchmarks.tune "
                             f"--methods {base} ...) or run {m} in another run without --tuned")
        entries = [(m, "optimizer", pick["optimizer"]), (m, "lr", float(pick["lr"])),
                   *((m, k, v) for k, v in pick["options"].items())]
        # the same value is no clash: a resumed run's config.json already holds the tuned options
        clash = [f"{m}.{k}={given[(m, k)]}" for _, k, v in entries if (m, k) in given and given[(m, k)] != v]
        if clash:
            raise ValueError(f"--method-option {', '.join(clash)} differs from the recipe --tuned '{path}' chose; "
                             "drop one of the two")
        added += entries
        used[m] = {k: pick[k] for k in ("optimizer", "lr", "options", "source", "val_acc") if k in pick}
        if base != m:
            used[m]["recipe_of"] = base
    record = {"file": file_identity(path), "methods": used, "settings": data.get("settings", {})}
    return cfg.replace(method_options=tuple(cfg.method_options) + tuple(added)), record
