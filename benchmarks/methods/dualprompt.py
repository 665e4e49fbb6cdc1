"""DualPrompt (Wang et al., ECCV 2022): :mod:`benchmarks.peers.dualprompt`, by default with its reference's recipe."""

from __future__ import annotations

from ..peers import dualprompt as peer
from .recipe import builder_options, peer_arguments, peer_recipe
from .registry import register_method


@register_method(
    "dualprompt", summary="DualPrompt: a G-prompt shared by all tasks and one E-prompt per task, prefix-tuned, "
    "key-matched per image",
    stored_params=peer.stored_params, recipe=peer_recipe("dualprompt", peer.REFERENCE_HPARAMS),
    inference_forward_passes=peer.INFERENCE_FORWARD_PASSES, reference_hparams=peer.REFERENCE_HPARAMS,
    options=builder_options(peer.build_strategy, peer.OPTIONS))
def build(cfg, num_classes, evaluator, plugins):
    return peer.build_strategy(**peer_arguments(cfg, "dualprompt", num_classes, evaluator, plugins))
