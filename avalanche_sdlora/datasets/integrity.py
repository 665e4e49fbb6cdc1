"""Checks that a user's download is the one the paper's tables were run on: archive md5 and split sizes."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from torchvision.datasets.utils import calculate_md5


def verify_md5(archive: str | os.PathLike, expected: str | None, what: str) -> str:
    """Compare the archive's md5 with the recorded one; returns the md5. Reads the whole file (minutes for GBs)."""
    p = Path(archive).expanduser()
    if expected is None:
        raise ValueError(f"no md5 is recorded for the {what} archive, so '{p}' cannot be verified; drop archive=")
    if not p.is_file():
        raise FileNotFoundError(f"{what} archive not found at '{p}'; pass the downloaded file as archive=")
    got = calculate_md5(p)
    if got != expected:
        raise ValueError(f"{what} archive '{p}' has md5 {got}, expected {expected}; download it again "
                         "(a truncated or different archive gives a different split)")
    return got


def check_sizes(what: str, sizes: tuple[int, int], expected: tuple[int, int] | None, *, strict: bool,
                subset: bool) -> None:
    """Warn (or with ``strict`` raise) when train/test sizes differ from the recorded ones.

    A per-class limit (``subset``) makes the recorded sizes inapplicable, so nothing is compared then.
    """
    if expected is None or subset or tuple(sizes) == tuple(expected):
        return
    msg = (f"{what} has {sizes[0]} train / {sizes[1]} test images, the recorded split has {expected[0]} / "
           f"{expected[1]}; results will not be comparable with the paper's")
    if strict:
        raise ValueError(msg + " (strict=True)")
    warnings.warn(msg, stacklevel=3)
