"""DualPrompt (Wang et al., ECCV 2022): :mod:`benchmarks.peers.dualprompt`, by default with its reference's recipe."""

from __future__ import annotations

from ..distributed import OWN_TRAINING_FORWARD
from ..peers import dualprompt
from .recipe import register_peer

register_peer("dualprompt", dualprompt,
              summary="DualPrompt: a G-prompt shared by all tasks and one E-prompt per task, prefix-tuned, "
                      "key-matched per image",
              single_process_only=OWN_TRAINING_FORWARD, checkpointable=True)
