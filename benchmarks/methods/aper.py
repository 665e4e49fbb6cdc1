"""APER (Zhou et al., IJCV 2024): :mod:`benchmarks.peers.aper`, by default with its reference's recipe."""

from __future__ import annotations

from ..distributed import SHARDED_FIT
from ..peers import aper
from .recipe import register_peer

register_peer("aper", aper,
              summary="APER: first-session adapter, then cosine prototypes of frozen + adapted features",
              single_process_only=SHARDED_FIT, checkpointable=True)
