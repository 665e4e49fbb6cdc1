"""SimpleCIL (Zhou et al., IJCV 2024) as its reference does it: prototypes are means of raw frozen features.

``ncm`` is the same classifier with L2-normalised features averaged (and the mean normalised).
"""

from __future__ import annotations

from ..distributed import SHARDED_FIT
from ..peers import aper
from .recipe import builder_options, no_training, peer_arguments
from .registry import register_method


@register_method("simplecil", summary="SimpleCIL: cosine classifier over means of raw frozen features (the reference "
                 "form; ncm normalises before averaging)", stored_params=aper.stored_params, recipe=no_training,
                 inference_forward_passes=aper.SIMPLECIL_INFERENCE_FORWARD_PASSES,
                 reference_hparams=aper.SIMPLECIL_REFERENCE_HPARAMS,
                 options=tuple(o for o in builder_options(aper.build_simplecil_strategy)
                               if o not in ("lr", "optimizer")),  # nothing trains
                 single_process_only=SHARDED_FIT, checkpointable=True)
def build(cfg, num_classes, evaluator, plugins):
    return aper.build_simplecil_strategy(**peer_arguments(cfg, "simplecil", num_classes, evaluator, plugins))
