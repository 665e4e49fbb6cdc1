"""Sequential LoRA (the paper's vanilla-LoRA ablation): one pair, magnitude fixed at 1, trained through every task.

SD-LoRA's model, head and current-classes loss, so the comparison isolates the decoupling.
"""

from __future__ import annotations

from avalanche_sdlora import SDLoRA, sdlora_vit

from ..peers import lora_baseline
from .recipe import shared_recipe, shared_sgd, strategy_kwargs
from .registry import register_method


@register_method("seq-lora", summary="one LoRA pair (alpha fixed at 1) trained on through all tasks, SD-LoRA's head "
                 "and loss", stored_params=lora_baseline.stored_params, recipe=shared_recipe, checkpointable=True,
                 train_amp=True)
def build(cfg, num_classes, evaluator, plugins):
    model = sdlora_vit(cfg.model, checkpoint=cfg.checkpoint, img_size=cfg.img_size, options=cfg.sdlora)
    return SDLoRA(model=model, optimizer=shared_sgd(cfg, model.parameters()),
                  growth=lora_baseline.SingleLoRAPlugin(cfg.sdlora.rank), autocast_dtype=cfg.train_autocast_dtype,
                  **strategy_kwargs(cfg, evaluator, plugins))
