"""SD-LoRA, SD-LoRA-RR and SD-LoRA-KD: the library's strategies, with the protocol's shared recipe or a preset's."""

from __future__ import annotations

import dataclasses

import numpy as np

from avalanche_sdlora import SDLoRA, SDLoRAKD, SDLoRARR, SDLoRAOptions, sdlora_vit
from avalanche_sdlora.plugins import DistillationPlugin

from .recipe import RECIPE_OPTIONS, make_optimizer, overridable, sdlora_recipe, strategy_kwargs
from .registry import get_method, register_method

REFERENCE_HPARAMS = {
    **{f.name: (f.default, f.metadata["source"]) for f in dataclasses.fields(SDLoRAOptions)},
    "optimizer": ("sgd", "authors' code (SGD, momentum 0.9, no weight decay); --preset paper: Adam"),
    "lr": (0.01, "the protocol's --lr (authors' code: 0.008 on CIFAR-100, 0.008-0.01 on ImageNet-R, "
                 "benchmarks.protocols.AUTHORS_LR; --preset paper: 8e-3)"),
}


def stored_params(strategy) -> int:
    """The head and the stored directions, magnitudes and current pair (``SDLoRAViT.stored_adapter_params``)."""
    model = strategy.model
    return sum(p.numel() for p in model.head.parameters()) + model.stored_adapter_params()


def head_columns(strategy, experience: int) -> dict:
    """Mean L2 norm of the head's weight rows of the past tasks' classes and of the newest task's: a head that
    favours the newest classes (their rows outgrowing the old ones) is one way a long sequence collapses, next to
    the magnitudes (``alphas``) and the update's size (``update_norm``)."""
    weights = strategy.model.head.weights
    norms = [float(w.detach().float().norm(dim=1).mean()) for w in weights]
    return {"head_row_norm_past": float(np.mean(norms[:-1])) if len(norms) > 1 else np.nan,
            "head_row_norm_newest": norms[-1] if norms else np.nan}


def kd_columns(strategy, experience: int) -> dict:
    """SD-LoRA-KD's decision for this experience (relative residual and whether it absorbed the task), and the
    head's (:func:`head_columns`)."""
    for p in strategy.plugins:
        if isinstance(p, DistillationPlugin):
            last = p.history[-1] if p.history and p.history[-1]["task"] == experience else None
            return {"kd_relative_residual": last["relative_residual"] if last else np.nan,
                    "kd_absorbed": bool(last["absorbed"]) if last else False, **head_columns(strategy, experience)}
    return head_columns(strategy, experience)


def _builder(name: str, strategy_class):
    def build(cfg, num_classes, evaluator, plugins):
        model = sdlora_vit(cfg.model, checkpoint=cfg.checkpoint, img_size=cfg.img_size, options=cfg.sdlora)
        optimizer = make_optimizer(get_method(name).recipe(cfg), model.parameters())
        return strategy_class(model=model, optimizer=optimizer, autocast_dtype=cfg.train_autocast_dtype,
                              **strategy_kwargs(cfg, evaluator, plugins))

    return build


def _traits(name: str) -> dict:
    return dict(stored_params=stored_params, recipe=overridable(name, sdlora_recipe), checkpointable=True,
                reference_hparams=REFERENCE_HPARAMS, train_amp=True, options=RECIPE_OPTIONS,
                extra_columns=kd_columns if name == "sdlora-kd" else head_columns)


register_method("sdlora", summary="SD-LoRA (avalanche_sdlora.SDLoRA)", **_traits("sdlora"))(_builder("sdlora", SDLoRA))
register_method("sdlora-rr", summary="SD-LoRA-RR: later tasks get lower ranks (--rank-schedule)",
                recipe_of="sdlora", **_traits("sdlora-rr"))(_builder("sdlora-rr", SDLoRARR))
register_method("sdlora-kd", summary="SD-LoRA-KD: a direction the old ones span is folded into their magnitudes "
                "(--kd-threshold)", recipe_of="sdlora",
                **_traits("sdlora-kd"))(_builder("sdlora-kd", SDLoRAKD))
