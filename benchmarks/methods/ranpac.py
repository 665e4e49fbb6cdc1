"""RanPAC (McDonnell et al., NeurIPS 2023): :mod:`benchmarks.peers.ranpac`, by default with its reference's recipe."""

from __future__ import annotations

from ..peers import ranpac as peer
from .recipe import builder_options, peer_arguments, peer_recipe
from .registry import register_method


@register_method(
    "ranpac", summary="RanPAC: first-session adapter, then a random ReLU projection and a ridge head "
    "refitted per experience",
    stored_params=peer.stored_params, recipe=peer_recipe("ranpac", peer.REFERENCE_HPARAMS),
    inference_forward_passes=peer.INFERENCE_FORWARD_PASSES, reference_hparams=peer.REFERENCE_HPARAMS,
    options=builder_options(peer.build_strategy))
def build(cfg, num_classes, evaluator, plugins):
    return peer.build_strategy(**peer_arguments(cfg, "ranpac", num_classes, evaluator, plugins))
