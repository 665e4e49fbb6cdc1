"""CODA-Prompt (Smith et al., CVPR 2023): :mod:`benchmarks.peers.coda_prompt`, with its reference's recipe."""

from __future__ import annotations

from ..distributed import OWN_TRAINING_FORWARD
from ..peers import coda_prompt
from .recipe import register_peer

register_peer("coda-prompt", coda_prompt,
              summary="CODA-Prompt: prompts as attention-weighted sums of components, new ones orthogonal to old, "
                      "prefix-tuned",
              single_process_only=OWN_TRAINING_FORWARD, checkpointable=True)
