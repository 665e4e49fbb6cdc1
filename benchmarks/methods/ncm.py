"""``ncm``: SimpleCIL with L2-normalised prototypes (Avalanche's NCMClassifier) on the frozen backbone.

The committed results name it ``ncm``; ``simplecil`` is the reference form (raw-feature means).
"""

from __future__ import annotations

from avalanche_sdlora import create_backbone

from ..distributed import SHARDED_FIT
from ..peers import ncm
from .recipe import no_training, strategy_kwargs
from .registry import register_method


@register_method("ncm", summary="SimpleCIL with L2-normalised prototypes (cosine nearest class mean, frozen backbone)",
                 stored_params=ncm.stored_params, recipe=no_training,
                 single_process_only=SHARDED_FIT, checkpointable=True)
def build(cfg, num_classes, evaluator, plugins):
    backbone = create_backbone(cfg.model, checkpoint=cfg.checkpoint, img_size=cfg.img_size)
    return ncm.NCMStrategy(backbone=backbone, **{**strategy_kwargs(cfg, evaluator, plugins), "train_epochs": 1})
