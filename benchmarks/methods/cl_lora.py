"""CL-LoRA (He et al., CVPR 2025): :mod:`benchmarks.peers.cl_lora`, by default with its reference's CIFAR recipe."""

from __future__ import annotations

from ..distributed import SHARDED_FIT
from ..peers import cl_lora
from .recipe import register_peer

register_peer("cl-lora", cl_lora,
              summary="CL-LoRA: distilled task-shared LoRA in the first blocks, task-specific LoRA with block weights "
                      "in the later ones, prototypes per task pathway",
              single_process_only=SHARDED_FIT, checkpointable=True)
