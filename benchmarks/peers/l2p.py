"""Avalanche's own ``LearningToPrompt`` (L2P) made usable with timm 1.x, any timm ViT and local weights.

Avalanche 0.6.0's L2P cannot be used as shipped here. Every defect is worked around from this module;
nothing in site-packages is edited:

1. ``timm_vit._create_vision_transformer`` indexes ``pretrained_cfg["url"]``, but timm 1.x returns a
   ``PretrainedCfg`` dataclass ("'PretrainedCfg' object is not subscriptable") -> we never call it; we
   build ``avalanche.models.timm_vit.ViTWithPrompt`` directly and hand it to the strategy.
2. ``vit.create_model`` only knows six hard-wired architectures (looked up in ``globals()``; no DeiT,
   no ViT-S/16) -> the architecture (width, depth, heads, patch, MLP ratio, ...) is read off the timm
   model built by name, and checked block-for-block and key-for-key against the result.
3. ``pretrained=True`` downloads weights (no local file possible; offline it fails) -> weights come
   from a local ``checkpoint`` (safetensors / ``weights_only`` torch) via ``create_backbone``; the
   strategy's ``pretrained`` flag is ignored (passing it to ``build_l2p`` is an error).
4. Avalanche's ``checkpoint_filter_fn``/``resize_pos_embed`` only add the prompt positions when the
   grid is unchanged (at 128 px it returns 65 positions for a 90-position model) -> timm resamples the
   grid, then we prepend ``prompt_length*top_k`` copies of the class-token position (as L2P does).
5. ``LearningToPrompt.__init__`` always builds its models itself and offers no way to pass one in ->
   its module-level ``create_model`` is swapped for our factory only for the duration of
   ``super().__init__`` (try/finally restored; not thread-safe, construction is single-threaded).
6. ``model.head = nn.Linear(768, num_classes)`` is hard-coded (any non-768 ViT crashes at the first
   forward) -> after ``super().__init__`` the head is rebuilt as ``Linear(embed_dim, num_classes)`` and
   the Adam optimizer (Avalanche's betas, ``lr``) is recreated so it holds the right head.
7. The frozen query ViT (``original_vit``, source of the ``cls_features`` used to pick prompts) would
   be built with ``drop_rate``/``drop_path_rate`` and is never put in eval mode -> ours is built
   without dropout, frozen and set to ``eval()`` (it is not part of ``strategy.model``).
8. ``ViTWithPrompt`` ignores ``norm_pre`` and misplaces positions for ``no_embed_class`` / class-token
   free models, and has no register tokens -> such timm models are rejected with a clear error.
9. The strategy defaults ``num_classes=10`` and its ``use_mask`` masks ``arange(num_classes)``
   -> ``build_l2p`` always passes ``num_classes`` (default 100).

Also noted, unused with the defaults: ``Prompt(prompt_pool=False)`` re-creates its parameter on every
forward, and ``ViTWithPrompt.forward_head`` raises ``AttributeError`` (``self.classifier``) on an
unknown ``head_type``. L2P's ``_before_training_exp`` replaces the optimizer with a fresh Adam each
experience, so plugins holding the optimizer (e.g. ``LRSchedulerPlugin``) do not affect it.

Checkpoints (``benchmarks.peer_checkpoint``): nothing grows per task (one prompt pool, one head over all classes) and
the optimizer starts afresh each experience, so the prompted model's state dict is the whole trained state. The
frozen query ViT is not stored: it is rebuilt from the same backbone, and a restore checks that its weights are the
frozen ones of the stored prompted model.
"""

from __future__ import annotations

import inspect
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from timm.layers import LayerScale
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

import avalanche.training.supervised.l2p as _avl_l2p
from avalanche.training import LearningToPrompt

with warnings.catch_warnings():  # timm_vit imports from timm's deprecated `timm.models.layers` path
    warnings.simplefilter("ignore", FutureWarning)
    from avalanche.models.timm_vit import ViTWithPrompt

from avalanche_sdlora.model import create_backbone

from .exact_load import load_exactly

__all__ = ["L2PStrategy", "L2PInference", "build_l2p", "build_l2p_model", "prompted_vit", "avalanche_defaults"]

# Arguments LearningToPrompt forwards to create_model for the prompted model (defaults read from it).
_PROMPT_ARGS = ("prompt_pool", "pool_size", "prompt_length", "top_k", "prompt_key", "drop_rate",
                "drop_path_rate", "embedding_key", "prompt_init", "batchwise_prompt", "head_type",
                "use_prompt_mask")


def avalanche_defaults() -> dict[str, Any]:
    """LearningToPrompt's own defaults of the prompt arguments (pool 20, length 5, top-k 5, ...)."""
    params = inspect.signature(LearningToPrompt.__init__).parameters
    return {k: params[k].default for k in _PROMPT_ARGS}


def _vit_arch(backbone: VisionTransformer, name: str) -> dict[str, Any]:
    """ViTWithPrompt constructor arguments that reproduce ``backbone``'s architecture."""
    if not isinstance(backbone, VisionTransformer):
        raise TypeError(f"L2P needs a timm VisionTransformer, '{name}' is {type(backbone).__name__}")
    problems = []
    if backbone.cls_token is None:
        problems.append("it has no class token")
    if getattr(backbone, "no_embed_class", False):
        problems.append("its position embedding excludes the class token (no_embed_class)")
    if getattr(backbone, "num_reg_tokens", 0):
        problems.append("it has register tokens")
    if not isinstance(getattr(backbone, "norm_pre", nn.Identity()), nn.Identity):
        problems.append("it uses a pre-norm (norm_pre), which ViTWithPrompt skips")
    if getattr(backbone, "dynamic_img_size", False):
        problems.append("it uses dynamic image size")
    if problems:
        raise ValueError(f"'{name}' cannot be run by Avalanche's ViTWithPrompt: {'; '.join(problems)}. "
                         "Use a plain ViT/DeiT such as 'vit_tiny_patch16_224' or 'deit_tiny_patch16_224'.")
    b0 = backbone.blocks[0]
    ls = getattr(b0, "ls1", None)
    return dict(
        img_size=tuple(backbone.patch_embed.img_size),
        patch_size=tuple(backbone.patch_embed.patch_size),
        embed_dim=backbone.embed_dim,
        depth=len(backbone.blocks),
        num_heads=b0.attn.num_heads,
        mlp_ratio=b0.mlp.fc1.out_features / backbone.embed_dim,
        qkv_bias=b0.attn.qkv.bias is not None,
        init_values=float(ls.gamma.flatten()[0]) if isinstance(ls, LayerScale) else None,
        class_token=True,
        no_embed_class=False,
        fc_norm=not isinstance(backbone.fc_norm, nn.Identity),
        global_pool=backbone.global_pool,
    )


@torch.no_grad()
def prompted_vit(backbone: VisionTransformer, name: str = "backbone", **vit_kwargs: Any) -> ViTWithPrompt:
    """Avalanche's ``ViTWithPrompt`` with ``backbone``'s architecture and weights.

    ``vit_kwargs`` are the prompt/head arguments ``LearningToPrompt`` passes to ``create_model``
    (none: the plain frozen query ViT). Prompt positions are copies of the class-token position.
    """
    model = ViTWithPrompt(**_vit_arch(backbone, name), **vit_kwargs)
    for part in ("patch_embed", "norm"):
        if str(getattr(model, part)) != str(getattr(backbone, part)):
            raise ValueError(f"'{name}': ViTWithPrompt cannot reproduce its {part}")
    if str(model.blocks[0]) != str(backbone.blocks[0]):
        raise ValueError(f"'{name}': ViTWithPrompt cannot reproduce its blocks:\n{backbone.blocks[0]}")
    sd = {k: v for k, v in backbone.state_dict().items() if not k.startswith("head.")}
    pos = sd["pos_embed"]  # [1, 1 + grid, D], already resampled to img_size by timm
    extra = model.pos_embed.shape[1] - pos.shape[1]  # prompt_length * top_k (0 without prompts)
    if extra < 0:
        raise ValueError(f"'{name}': position embedding has {pos.shape[1]} tokens, model {model.pos_embed.shape[1]}")
    sd["pos_embed"] = torch.cat([pos[:, :1], pos[:, :1].expand(-1, extra, -1), pos[:, 1:]], dim=1)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.startswith(("prompt.", "head."))]
    if missing or unexpected:
        raise ValueError(f"'{name}': weights do not map onto ViTWithPrompt (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
    return model


def _factory(backbone: VisionTransformer, model_name: str) -> Callable[..., ViTWithPrompt]:
    """Drop-in for ``avalanche.models.vit.create_model`` serving ``backbone``'s architecture and weights."""

    def create_model(model_name: str = model_name, pretrained: bool = False, num_classes: int = 1000,
                     **kwargs: Any) -> ViTWithPrompt:
        if kwargs.get("prompt_pool") and kwargs.get("pool_size") is not None:
            return prompted_vit(backbone, model_name, num_classes=num_classes, **kwargs)
        # The frozen query ViT: deterministic (no dropout), in eval mode for good.
        kwargs = {k: v for k, v in kwargs.items() if k not in ("drop_rate", "drop_path_rate")}
        return prompted_vit(backbone, model_name, num_classes=num_classes, **kwargs).eval()

    return create_model


@contextmanager
def _avalanche_model_factory(factory: Callable[..., nn.Module]) -> Iterator[None]:
    """Scoped swap of the ``create_model`` name inside ``avalanche.training.supervised.l2p``."""
    original = _avl_l2p.create_model
    _avl_l2p.create_model = factory
    try:
        yield
    finally:
        _avl_l2p.create_model = original


class L2PInference(nn.Module):
    """L2P at test time: frozen query ViT picks prompts, prompted ViT classifies; ``forward(x) -> logits``."""

    def __init__(self, prompt_model: ViTWithPrompt, query_model: ViTWithPrompt) -> None:
        super().__init__()
        self.prompt_model = prompt_model
        self.query_model = query_model

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            cls_features = self.query_model(x)["pre_logits"]
        return self.prompt_model(x=x, cls_features=cls_features)["logits"]


class L2PStrategy(LearningToPrompt):
    """Avalanche's ``LearningToPrompt`` on a given timm ViT (any width), without touching site-packages."""

    def __init__(self, *, backbone: VisionTransformer, model_name: str, optimizer: str = "adam", **kwargs: Any) -> None:
        if kwargs.pop("pretrained", None):
            raise ValueError("L2PStrategy takes its weights from `backbone`; load a checkpoint instead of pretrained=True")
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' (Avalanche's and l2p-pytorch's) or 'sgd' (momentum 0.9, the "
                             f"protocol's), got {optimizer!r}")
        self.optimizer_name = optimizer
        with _avalanche_model_factory(_factory(backbone, model_name)):
            super().__init__(model_name=model_name, **kwargs)
        embed_dim = self.model.embed_dim
        if self.model.head.in_features != embed_dim:  # Avalanche hard-codes Linear(768, num_classes)
            self.model.head = nn.Linear(embed_dim, self.num_classes).to(self.device)
        self.optimizer = self._new_optimizer()
        if self.use_cls_features:
            self.original_vit.eval()

    def _new_optimizer(self) -> torch.optim.Optimizer:
        """Avalanche's Adam (betas 0.9, 0.999) over every parameter, or SGD with momentum 0.9 at the same lr (issue 30:
        every method is tuned over both optimizers)."""
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(self.model.parameters(), lr=self.lr, momentum=0.9)
        return torch.optim.Adam(self.model.parameters(), betas=(0.9, 0.999), lr=self.lr)

    def _before_training_exp(self, **kwargs):
        super()._before_training_exp(**kwargs)  # LearningToPrompt's: a fresh Adam each experience
        if self.optimizer_name != "adam":
            self.optimizer = self._new_optimizer()

    # Frozen by LearningToPrompt.__init__ (the same prefixes); the query ViT holds the same weights.
    _FROZEN = ("blocks", "patch_embed", "cls_token", "norm", "pos_embed")

    def checkpoint_tensors(self) -> dict[str, Tensor]:
        """The prompted model's state dict: prompt pool and keys, head, and its frozen ViT."""
        return dict(self.model.state_dict())

    def checkpoint_structure(self) -> dict:
        """Nothing grows per task; the tensors' names and shapes are the whole structure."""
        return {}

    def restore_checkpoint(self, tensors: dict[str, Tensor], structure: dict) -> None:
        """Load ``tensors`` strictly, after checking that the query ViT built here has the stored frozen weights (a
        checkpoint from other backbone weights would pick prompts with different features)."""
        if structure:
            raise ValueError(f"L2PStrategy: checkpoint structure {structure} is not L2P's (empty); it was written by "
                             "another method")
        if self.use_cls_features:
            query = self.original_vit.state_dict()
            for k, v in query.items():
                stored = tensors.get(k)
                if k == "pos_embed" and stored is not None and stored.shape[1] >= v.shape[1]:
                    stored = torch.cat([stored[:, :1], stored[:, stored.shape[1] - v.shape[1] + 1:]], dim=1)
                if k.startswith(self._FROZEN) and (stored is None or not torch.equal(stored.to(v.device), v)):
                    raise ValueError(f"L2PStrategy: the checkpoint's frozen '{k}' differs from the weights this "
                                     "strategy was built from; resume with the same --model and --checkpoint")
        load_exactly(self.model, tensors, "L2PStrategy")

    def inference_model(self) -> L2PInference:
        """The trained model as a plain ``forward(x) -> logits`` module (shares parameters)."""
        if not self.use_cls_features:
            raise ValueError("inference_model() needs use_cls_features=True")
        return L2PInference(self.model, self.original_vit)


def build_l2p(*, model_name: str, checkpoint: str | None, img_size: int, optimizer_lr: float, train_mb_size: int,
              train_epochs: int, eval_mb_size: int, device: str, evaluator, plugins=None, num_classes: int = 100,
              optimizer: str = "adam", **l2p_kwargs: Any) -> L2PStrategy:
    """Avalanche's L2P strategy on any timm ViT at ``img_size`` with local weights.

    Stock ``LearningToPrompt`` fails with timm 1.x, knows only six ViTs, downloads weights and
    hard-codes a 768-wide head (see the module docstring); this builds the models itself and hands
    them to the strategy. Avalanche's defaults apply (pool 20, length 5, top-k 5, Adam) with
    ``lr=optimizer_lr``; ``l2p_kwargs`` go to ``LearningToPrompt`` (e.g. ``pool_size``, ``use_mask``).
    """
    backbone = create_backbone(model_name, checkpoint=checkpoint, img_size=img_size)
    return L2PStrategy(backbone=backbone, model_name=model_name, lr=optimizer_lr, optimizer=optimizer,
                       num_classes=num_classes,
                       train_mb_size=train_mb_size, train_epochs=train_epochs, eval_mb_size=eval_mb_size,
                       device=device, evaluator=evaluator, plugins=plugins, **l2p_kwargs)


def build_l2p_model(model_name: str, checkpoint: str | None, img_size: int, num_classes: int,
                    **prompt_kwargs: Any) -> L2PInference:
    """The L2P network alone (``forward(x) -> logits``), e.g. for inference-speed measurements.

    Same architecture and prompt defaults as ``build_l2p`` (Avalanche's), in eval mode.
    """
    unknown = set(prompt_kwargs) - set(_PROMPT_ARGS)
    if unknown:
        raise TypeError(f"unknown L2P model arguments {sorted(unknown)}; allowed: {list(_PROMPT_ARGS)}")
    backbone = create_backbone(model_name, checkpoint=checkpoint, img_size=img_size)
    create = _factory(backbone, model_name)
    prompt_model = create(model_name, num_classes=num_classes, **{**avalanche_defaults(), **prompt_kwargs})
    query_model = create(model_name, num_classes=num_classes)
    query_model.reset_classifier(0)
    for p in query_model.parameters():
        p.requires_grad_(False)
    return L2PInference(prompt_model, query_model).eval()
