"""What a method's builder takes from a RunConfig: the strategies' shared arguments and the training recipe.

Every method shares the benchmark, backbone, epochs, batch sizes, device and evaluator. The sequential-LoRA
baseline and Avalanche's baselines train with the protocol's shared recipe (SGD, momentum 0.9, ``--lr``); the SD-LoRA
family too, unless ``--preset``, ``--sdlora-optimizer`` or ``--sdlora-lr`` say otherwise (``sdlora_recipe``); the peer
methods with their references' recipe unless ``--peer-recipe shared`` or a ``--method-option``
says otherwise (their builders take ``lr``/``optimizer``; None means the reference's).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from avalanche_sdlora.plugins import FiniteLossPlugin

from .. import distributed
from ..config import RunConfig
from ..peers.lora_baseline import lora_classifier
from .registry import Recipe, get_method, register_method

# Keywords every peer module's build_strategy takes; the rest of its keywords are the method's options.
PEER_ARGUMENTS = ("model_name", "checkpoint", "img_size", "num_classes", "n_experiences", "epochs", "batch_size",
                  "eval_batch_size", "device", "evaluator", "plugins")


def strategy_kwargs(cfg: RunConfig, evaluator, plugins: Sequence) -> dict[str, Any]:
    """The SupervisedTemplate arguments every method shares (under torchrun: this rank's share of the batch, this
    rank's device)."""
    return dict(train_mb_size=distributed.train_batch(cfg), train_epochs=cfg.epochs, eval_mb_size=cfg.eval_batch_size,
                device=distributed.device(cfg), evaluator=evaluator, plugins=list(plugins))


def shared_sgd(cfg: RunConfig, params) -> torch.optim.Optimizer:
    """The protocol's optimizer: SGD, momentum 0.9, no weight decay, at ``--lr``."""
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9)


def shared_recipe(cfg: RunConfig) -> Recipe:
    return Recipe("sgd", cfg.lr, "protocol")


def sdlora_recipe(cfg: RunConfig) -> Recipe:
    """The SD-LoRA family's optimizer and lr: the shared recipe unless a preset or its own flags change them."""
    if cfg.sdlora_optimizer == "sgd" and cfg.sdlora_lr is None:
        return shared_recipe(cfg)
    lr = cfg.lr if cfg.sdlora_lr is None else cfg.sdlora_lr
    source = f"--preset {cfg.preset}" if cfg.preset else "--sdlora-optimizer/--sdlora-lr"
    return Recipe(cfg.sdlora_optimizer, lr, source)


def no_training(cfg: RunConfig) -> Recipe:
    return Recipe(None, None, "none")


# issue 30: the options through which any method that trains by gradient takes another recipe (benchmarks.tune's
# candidates and chosen recipes are --method-option NAME.optimizer=... NAME.lr=...).
RECIPE_OPTIONS = ("optimizer", "lr")


def given_recipe(cfg: RunConfig, name: str, base: Recipe) -> Recipe:
    """``base`` with the optimizer and lr ``--method-option`` gives ``name`` (source "--method-option"; compare
    records "tuned" for the recipes it took from ``--tuned``)."""
    given = cfg.options_for(name)
    if "optimizer" not in given and "lr" not in given:
        return base
    return Recipe(given.get("optimizer", base.optimizer), float(given.get("lr", base.lr)), "--method-option")


def overridable(name: str, recipe: Callable[[RunConfig], Recipe]) -> Callable[[RunConfig], Recipe]:
    """The recipe trait of a method whose optimizer and lr ``--method-option NAME.optimizer/lr`` may replace."""
    return lambda cfg: given_recipe(cfg, name, recipe(cfg))


def make_optimizer(recipe: Recipe, params) -> torch.optim.Optimizer:
    """A recipe's optimizer: SGD with momentum 0.9 (the shared recipe's) or Adam (torch's betas and eps); no weight
    decay either way."""
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=0.9)
    raise ValueError(f"optimizer must be 'sgd' or 'adam', got {recipe.optimizer!r} (--method-option NAME.optimizer)")


def peer_recipe(name: str, reference: Mapping[str, tuple[Any, str]]) -> Callable[[RunConfig], Recipe]:
    """The recipe trait of a peer method: its reference's optimizer and lr, the shared ones, or the options'."""

    def recipe(cfg: RunConfig) -> Recipe:
        if cfg.peer_recipe == "shared":
            out = Recipe("sgd", cfg.lr, "protocol")
        else:
            out = Recipe(reference["optimizer"][0], reference["lr"][0], "reference")
        return given_recipe(cfg, name, out)

    return recipe


def builder_options(build_strategy: Callable, declared: Sequence[str] = ()) -> tuple[str, ...]:
    """The keywords of a peer builder that ``--method-option`` may set: its own beside the common signature."""
    params = inspect.signature(build_strategy).parameters
    return tuple(n for n, p in params.items() if p.kind is p.KEYWORD_ONLY and n not in PEER_ARGUMENTS) + tuple(declared)


def peer_arguments(cfg: RunConfig, name: str, num_classes: int, evaluator, plugins: Sequence) -> dict[str, Any]:
    """The keywords of a peer module's ``build_strategy``: the common ones, the recipe, the method's options."""
    recipe = get_method(name).recipe(cfg)
    return dict(model_name=cfg.model, checkpoint=cfg.checkpoint, img_size=cfg.img_size, num_classes=num_classes,
                n_experiences=cfg.n_experiences, epochs=cfg.epochs, batch_size=distributed.train_batch(cfg),
                eval_batch_size=cfg.eval_batch_size, device=distributed.device(cfg), evaluator=evaluator,
                plugins=list(plugins),
                **{**cfg.options_for(name), "lr": recipe.lr, "optimizer": recipe.optimizer})


def lora_baseline_arguments(cfg: RunConfig, evaluator, plugins: Sequence, *own_plugins) -> dict[str, Any]:
    """Model, optimizer, loss and shared arguments of an Avalanche baseline on one LoRA pair (the seq-lora budget).

    Their losses cover all seen classes, with their own criterion; ``FiniteLossPlugin`` stops a diverging one.
    """
    model = lora_classifier(cfg.model, checkpoint=cfg.checkpoint, img_size=cfg.img_size, rank=cfg.sdlora.rank)
    optimizer = shared_sgd(cfg, [p for p in model.parameters() if p.requires_grad])
    return dict(model=model, optimizer=optimizer, criterion=nn.CrossEntropyLoss(),
                **strategy_kwargs(cfg, evaluator, [*plugins, FiniteLossPlugin(), *own_plugins]))


def register_peer(name: str, peer, *, summary: str, single_process_only: str | None = None,
                  checkpointable: bool = False) -> None:
    """Register a peer mechanism module as method ``name``: its ``build_strategy`` (common signature, reference
    recipe unless ``lr``/``optimizer`` are given), ``stored_params``, ``REFERENCE_HPARAMS`` (with the optimizer and
    lr), ``INFERENCE_FORWARD_PASSES`` (and ``inference_backbones``, where the blocks per image differ), ``extra_columns`` if it has per-experience
    columns of its own, and, for a builder taking ``**options``, their names in ``OPTIONS``;
    ``single_process_only``: why it cannot run under torchrun (the Method trait); ``checkpointable``: its strategy
    saves and restores its whole state (:mod:`benchmarks.peer_checkpoint`), checked by tests/test_methods.py's
    resume test."""

    def build(cfg: RunConfig, num_classes: int, evaluator, plugins):
        return peer.build_strategy(**peer_arguments(cfg, name, num_classes, evaluator, plugins))

    register_method(name, summary=summary, stored_params=peer.stored_params,
                    recipe=peer_recipe(name, peer.REFERENCE_HPARAMS),
                    inference_forward_passes=peer.INFERENCE_FORWARD_PASSES, reference_hparams=peer.REFERENCE_HPARAMS,
                    inference_backbones=getattr(peer, "inference_backbones", None),
                    extra_columns=getattr(peer, "extra_columns", None),
                    options=builder_options(peer.build_strategy, getattr(peer, "OPTIONS", ())),
                    single_process_only=single_process_only, checkpointable=checkpointable)(build)
