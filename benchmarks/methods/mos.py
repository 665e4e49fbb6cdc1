"""MOS (Sun et al., AAAI 2025): :mod:`benchmarks.peers.mos`, by default with its reference's recipe."""

from __future__ import annotations

from ..distributed import SHARDED_FIT
from ..peers import mos
from .recipe import register_peer

register_peer("mos", mos,
              summary="MOS: per-task adapters merged by EMA, class Gaussians for classifier alignment, self-refined "
                      "adapter retrieval at inference (one pass per task)",
              single_process_only=SHARDED_FIT, checkpointable=True)
