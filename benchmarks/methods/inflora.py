"""InfLoRA (Liang & Li, CVPR 2024): :mod:`benchmarks.peers.inflora`, by default with its reference's recipe."""

from __future__ import annotations

from ..peers import inflora as peer
from .recipe import builder_options, peer_arguments, peer_recipe
from .registry import register_method


@register_method(
    "inflora", summary="InfLoRA: per-task k/v branches whose input matrices avoid the subspace kept for "
    "earlier tasks",
    stored_params=peer.stored_params, recipe=peer_recipe("inflora", peer.REFERENCE_HPARAMS),
    inference_forward_passes=peer.INFERENCE_FORWARD_PASSES, reference_hparams=peer.REFERENCE_HPARAMS,
    options=builder_options(peer.build_strategy))
def build(cfg, num_classes, evaluator, plugins):
    return peer.build_strategy(**peer_arguments(cfg, "inflora", num_classes, evaluator, plugins))
