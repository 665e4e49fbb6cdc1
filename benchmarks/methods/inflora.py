"""InfLoRA (Liang & Li, CVPR 2024): :mod:`benchmarks.peers.inflora`, by default with its reference's recipe."""

from __future__ import annotations

from ..distributed import SHARDED_COVARIANCES
from ..peers import inflora
from .recipe import register_peer

register_peer("inflora", inflora,
              summary="InfLoRA: per-task k/v branches whose input matrices avoid the subspace kept for earlier tasks",
              single_process_only=SHARDED_COVARIANCES, checkpointable=True)
