"""APER (Zhou et al., IJCV 2024): :mod:`benchmarks.peers.aper`, by default with its reference's recipe."""

from __future__ import annotations

from ..peers import aper as peer
from .recipe import builder_options, peer_arguments, peer_recipe
from .registry import register_method


@register_method(
    "aper", summary="APER: first-session adapter, then cosine prototypes of frozen + adapted features",
    stored_params=peer.stored_params, recipe=peer_recipe("aper", peer.REFERENCE_HPARAMS),
    inference_forward_passes=peer.INFERENCE_FORWARD_PASSES, reference_hparams=peer.REFERENCE_HPARAMS,
    options=builder_options(peer.build_strategy))
def build(cfg, num_classes, evaluator, plugins):
    return peer.build_strategy(**peer_arguments(cfg, "aper", num_classes, evaluator, plugins))
