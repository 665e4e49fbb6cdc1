"""CaRE (Lou et al., ICML 2026): :mod:`benchmarks.peers.care`, by default with its reference's recipe."""

from __future__ import annotations

from ..distributed import SHARDED_FIT
from ..peers import care
from .recipe import register_peer

register_peer("care", care,
              summary="CaRE: per-task adapters under bi-level routing, cosine head aligned on features drawn from "
                      "stored class Gaussians",
              single_process_only=SHARDED_FIT, checkpointable=True)
