"""Sequential LoRA (the paper's vanilla-LoRA ablation): one pair, magnitude fixed at 1, trained through every task.

SD-LoRA's model, head and current-classes loss, so the comparison isolates the decoupling.
"""

from __future__ import annotations

from avalanche_sdlora import SDLoRA, sdlora_vit

from ..peers import lora_baseline
from .recipe import RECIPE_OPTIONS, make_optimizer, overridable, shared_recipe, strategy_kwargs
from .registry import get_method, register_method
from .sdlora import head_columns


@register_method("seq-lora", summary="one LoRA pair (alpha fixed at 1) trained on through all tasks, SD-LoRA's head "
                 "and loss", stored_params=lora_baseline.stored_params, recipe=overridable("seq-lora", shared_recipe),
                 checkpointable=True, train_amp=True, options=RECIPE_OPTIONS, extra_columns=head_columns)
def build(cfg, num_classes, evaluator, plugins):
    model = sdlora_vit(cfg.model, checkpoint=cfg.checkpoint, img_size=cfg.img_size, options=cfg.sdlora)
    return SDLoRA(model=model, optimizer=make_optimizer(get_method("seq-lora").recipe(cfg), model.parameters()),
                  growth=lora_baseline.SingleLoRAPlugin(cfg.sdlora.rank), autocast_dtype=cfg.train_autocast_dtype,
                  **strategy_kwargs(cfg, evaluator, plugins))
