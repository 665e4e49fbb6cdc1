"""Split image folders, the layout of the APER/PILOT archives: ``<root>/{train,test}/<class>/<image>``.

Class ids are the sorted folder names' positions, as torchvision's ``ImageFolder`` (which APER/PILOT and SD-LoRA's
code use) assigns them, so the class order ``permutation(seed)`` picks the same classes as theirs.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

SPLITS = ("train", "test")


def _images_directly_in(d: Path) -> bool:
    return any(p.is_file() and p.suffix.lower() in IMG_EXTENSIONS for p in d.iterdir())


def unpacked_root(root: Path, default_folder: str | None) -> Path:
    """``root``, or ``root/<default_folder>`` when ``root`` is the folder above the unpacked archive."""
    if default_folder and not (root / "train").is_dir() and (root / default_folder / "train").is_dir():
        return root / default_folder
    return root


def read_split_folders(root: Path, *, what: str, layout: str, default_folder: str | None = None
                       ) -> tuple[Path, list[str], dict[str, list[tuple[str, int]]]]:
    """The folder read, class names and, per split, (path, class id) in sorted order; every check names the path
    and the layout.

    ``root`` may also be the folder above the unpacked archive (``<root>/<default_folder>/train``).
    """
    if not root.is_dir():
        raise NotADirectoryError(f"{what}: '{root}' is not a folder; expected {layout}")
    root = unpacked_root(root, default_folder)
    missing = [s for s in SPLITS if not (root / s).is_dir()]
    if missing:
        hint = ""
        subdirs = [d for d in root.iterdir() if d.is_dir()]
        if subdirs and any(_images_directly_in(d) for d in subdirs[:20]):
            hint = (" (it holds class folders directly: that is an unsplit tree such as the original "
                    "imagenet-r.tar, which needs a split list, e.g. split='coda')")
        raise FileNotFoundError(f"{what}: '{root}' has no {' or '.join(m + '/' for m in missing)} folder{hint}; "
                                f"expected {layout}")
    classes: dict[str, list[str]] = {}
    for s in SPLITS:
        d = root / s
        classes[s] = sorted(e.name for e in d.iterdir() if e.is_dir())
        if not classes[s]:
            loose = " (images lie directly in it)" if _images_directly_in(d) else ""
            raise FileNotFoundError(f"{what}: '{d}' has no class folders{loose}; expected {layout}")
    if classes["train"] != classes["test"]:
        only_train = sorted(set(classes["train"]) - set(classes["test"]))
        only_test = sorted(set(classes["test"]) - set(classes["train"]))
        raise ValueError(f"{what}: '{root}/train' and '{root}/test' hold different classes (only in train: "
                         f"{only_train[:5]}{'...' if len(only_train) > 5 else ''}, only in test: {only_test[:5]}"
                         f"{'...' if len(only_test) > 5 else ''}); expected the same class folders in both, {layout}")
    names = classes["train"]
    index = {c: i for i, c in enumerate(names)}
    items: dict[str, list[tuple[str, int]]] = {}
    for s in SPLITS:
        items[s] = make_dataset(str(root / s), index, extensions=IMG_EXTENSIONS, allow_empty=True)
        counts = Counter(t for _, t in items[s])
        empty = [names[i] for i in range(len(names)) if counts[i] == 0]
        if empty:
            raise ValueError(f"{what}: {len(empty)} class folder(s) in '{root / s}' hold no images, e.g. "
                             f"'{root / s / empty[0]}'; every class needs images in both splits ({layout})")
    return root, names, items
