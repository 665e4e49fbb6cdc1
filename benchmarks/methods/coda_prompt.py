"""CODA-Prompt (Smith et al., CVPR 2023): :mod:`benchmarks.peers.coda_prompt`, with its reference's recipe."""

from __future__ import annotations

from ..peers import coda_prompt as peer
from .recipe import builder_options, peer_arguments, peer_recipe
from .registry import register_method


@register_method(
    "coda-prompt", summary="CODA-Prompt: prompts as attention-weighted sums of components, new ones orthogonal "
    "to old, prefix-tuned",
    stored_params=peer.stored_params, recipe=peer_recipe("coda-prompt", peer.REFERENCE_HPARAMS),
    inference_forward_passes=peer.INFERENCE_FORWARD_PASSES, reference_hparams=peer.REFERENCE_HPARAMS,
    options=builder_options(peer.build_strategy, peer.OPTIONS))
def build(cfg, num_classes, evaluator, plugins):
    return peer.build_strategy(**peer_arguments(cfg, "coda-prompt", num_classes, evaluator, plugins))
