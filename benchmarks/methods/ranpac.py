"""RanPAC (McDonnell et al., NeurIPS 2023): :mod:`benchmarks.peers.ranpac`, by default with its reference's recipe."""

from __future__ import annotations

from ..distributed import SHARDED_FIT
from ..peers import ranpac
from .recipe import register_peer

register_peer("ranpac", ranpac,
              summary="RanPAC: first-session adapter, then a random ReLU projection and a ridge head refitted per "
                      "experience",
              single_process_only=SHARDED_FIT, checkpointable=True)
