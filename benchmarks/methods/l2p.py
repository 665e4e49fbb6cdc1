"""L2P: Avalanche's own ``LearningToPrompt`` with its defaults, made to run by :mod:`benchmarks.peers.l2p`."""

from __future__ import annotations

from avalanche_sdlora.plugins import FiniteLossPlugin

from ..distributed import AVALANCHE_L2P
from ..peers import l2p
from .recipe import RECIPE_OPTIONS, overridable
from .registry import Recipe, get_method, register_method


def stored_params(strategy) -> int:
    """The prompt pool, its keys and the head: L2P's trainable tensors (the backbones are frozen)."""
    return sum(p.numel() for p in strategy.model.parameters() if p.requires_grad)


@register_method("l2p", summary="Avalanche's LearningToPrompt (pool 20, length 5, top-k 5, Adam at --lr)",
                 stored_params=stored_params,
                 recipe=overridable("l2p", lambda cfg: Recipe("adam", cfg.lr, "protocol")), options=RECIPE_OPTIONS,
                 inference_forward_passes=2,  # the frozen query ViT, then the prompted one
                 reference_hparams={k: (v, "Avalanche 0.6 LearningToPrompt default")
                                    for k, v in l2p.avalanche_defaults().items()},
                 single_process_only=AVALANCHE_L2P, checkpointable=True)
def build(cfg, num_classes, evaluator, plugins):
    recipe = get_method("l2p").recipe(cfg)
    return l2p.build_l2p(model_name=cfg.model, checkpoint=cfg.checkpoint, img_size=cfg.img_size, optimizer_lr=recipe.lr,
                         optimizer=recipe.optimizer,
                         train_mb_size=cfg.batch_size, train_epochs=cfg.epochs, eval_mb_size=cfg.eval_batch_size,
                         device=cfg.device, evaluator=evaluator, plugins=[*plugins, FiniteLossPlugin()],
                         num_classes=num_classes)
