"""CODA-Prompt's split lists (GT-RIPL/CODA-Prompt ``dataloaders/splits/*.yaml``) over an unsplit image tree.

Each list is a YAML mapping with ``data`` (image paths relative to CODA-Prompt's repository, e.g.
``data/imagenet-r/n01443537/art_0.jpg``) and ``targets`` (one int per path). An entry is found under ``root`` by
dropping its leading components up to and including the dataset's folder (``imagenet-r`` or ``DomainNet``, any
case); an entry without that folder is taken relative to ``root``. The class is the image's parent folder. CODA's
own ints number the classes in directory-listing order, so class ids here are the sorted class names' positions
(as for the image folders): a seed then picks the same classes under either split, and the ints are only checked to
name one class each.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path, PurePosixPath

import yaml  # declared in pyproject.toml (timm needs it too)

SPLITS = ("train", "test")


def read_split_list(path: Path) -> tuple[list[str], list[int]]:
    """Entries and targets of one list, refusing anything that is not CODA-Prompt's structure."""
    expected = ("a YAML mapping with 'data' (a list of image paths such as data/imagenet-r/<wnid>/<file>.jpg) "
                "and 'targets' (one integer class per path), as CODA-Prompt's dataloaders/splits/*.yaml")
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"split list '{path}' could not be read ({exc}); expected {expected}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list) or not isinstance(doc.get("targets"), list):
        found = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"split list '{path}' is not a CODA-Prompt list (found {found}); expected {expected}")
    data, targets = doc["data"], doc["targets"]
    if len(data) != len(targets) or not data:
        raise ValueError(f"split list '{path}' has {len(data)} paths and {len(targets)} targets; expected {expected} "
                         "with equally many (and at least one) of each")
    if not all(isinstance(p, str) for p in data) or not all(isinstance(t, int) for t in targets):
        raise ValueError(f"split list '{path}' holds a path that is not a string or a target that is not an "
                         f"integer; expected {expected}")
    return data, targets


def _relative(entry: str, marker: str) -> tuple[str, ...]:
    parts = PurePosixPath(entry.replace("\\", "/")).parts
    lowered = [p.lower() for p in parts]
    if marker.lower() in lowered:
        return parts[lowered.index(marker.lower()) + 1:]
    return parts


def read_split_lists(root: Path, lists: tuple[Path, Path], *, what: str, marker: str, depth: int, layout: str,
                     excluded_domain: str | None = None
                     ) -> tuple[list[str], dict[str, list[tuple[str, int]]], Counter]:
    """Class names, per split (absolute path, class id) in list order, and images per domain (``depth`` 3).

    ``depth`` is how many trailing components an entry has below the dataset folder: 2 for ``<class>/<file>``,
    3 for ``<domain>/<class>/<file>``.
    """
    if not root.is_dir():
        raise NotADirectoryError(f"{what}: '{root}' is not a folder; expected {layout}")
    raw: dict[str, list[tuple[Path, str]]] = {}
    domains: Counter = Counter()
    for split, list_path in zip(SPLITS, lists):
        data, targets = read_split_list(list_path)
        rows, class_of_target, target_of_class, missing = [], {}, {}, []
        for entry, target in zip(data, targets):
            rel = _relative(entry, marker)
            if len(rel) < depth:
                raise ValueError(f"{what}: entry '{entry}' of '{list_path}' has fewer than {depth} path components "
                                 f"below '{marker}/'; expected {layout}")
            if excluded_domain and rel[-3].lower() == excluded_domain:
                raise ValueError(f"{what}: '{list_path}' lists '{entry}' from {excluded_domain}, which CODA-Prompt's "
                                 "lists exclude; pass CODA-Prompt's own lists")
            if depth >= 3 and split == "train":
                domains[rel[-3]] += 1
            name = rel[-2]
            p = Path(*rel) if Path(*rel).is_absolute() else root.joinpath(*rel)
            if class_of_target.setdefault(target, name) != name or target_of_class.setdefault(name, target) != target:
                raise ValueError(f"{what}: '{list_path}' gives target {target} to class folders "
                                 f"'{class_of_target[target]}' and '{name}' (or class '{name}' two targets); "
                                 "expected one target per class folder, as CODA-Prompt's lists")
            if not p.is_file():
                missing.append((entry, p))
            rows.append((p, name))
        if missing:
            entry, p = missing[0]
            raise FileNotFoundError(f"{what}: {len(missing)} of {len(rows)} entries of '{list_path}' have no file "
                                    f"under '{root}', e.g. '{entry}' -> '{p}'; expected {layout}")
        raw[split] = rows
    train_classes = sorted({n for _, n in raw["train"]})
    test_classes = sorted({n for _, n in raw["test"]})
    if train_classes != test_classes:
        diff = sorted(set(train_classes) ^ set(test_classes))
        raise ValueError(f"{what}: the train list '{lists[0]}' and test list '{lists[1]}' name different classes "
                         f"({len(diff)} in only one, e.g. {diff[:5]}); expected CODA-Prompt's pair of lists")
    index = {c: i for i, c in enumerate(train_classes)}
    items = {s: [(str(p), index[n]) for p, n in rows] for s, rows in raw.items()}
    return train_classes, items, domains
