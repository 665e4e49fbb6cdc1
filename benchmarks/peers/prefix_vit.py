"""Prefix-tuning on any timm VisionTransformer, and the strategy shell DualPrompt and CODA-Prompt share.

Both prompt methods (``benchmarks.peers.dualprompt``, ``benchmarks.peers.coda_prompt``) run the same frozen timm ViT
twice per image: a query pass without prompts gives the feature that chooses or weights the prompts,
then a prompted pass gives the feature the head classifies. Facts from the reference code:

- Prompts enter as prefix keys and values of the chosen blocks' self-attention ("prefix-tuning"): they are
  concatenated in front of the keys and values after the qkv projection; queries come from the image
  tokens only, so the sequence length and the token the head reads do not change. A prefix token is an
  ``attn_dim``-wide vector split over heads like a projected key (reshape to ``[heads, head_dim]``):
  GT-RIPL/CODA-Prompt ``models/vit.py`` ``Attention.forward``; JH-LEE-KR/dualprompt-pytorch
  ``attention.py`` ``PreT_Attention`` (prompt shape ``[2, length, heads, head_dim]``).
- The query is the [CLS] token after the final norm of the same pretrained ViT without prompts, computed
  without gradient: CODA-Prompt ``models/zoo.py`` ``ViTZoo.forward`` (``self.feat(x)[:, 0]``, ``feat`` ends
  in ``self.norm``); dualprompt-pytorch ``engine.py`` (``original_model(input)['pre_logits']``, head_type
  'token'). Here it is timm's own pre-logits (``forward_head(pre_logits=True)``), which for class-token
  ViTs is exactly that token; a ViT that pools otherwise gives its own pooled feature. The head reads the
  prompted pass's pre-logits the same way.
- The backbone is frozen and, here, kept in eval mode (the references train with drop and drop-path 0,
  where train and eval mode compute the same).

:class:`PrefixAttention` wraps timm's ``Attention`` and uses its own weights (``qkv``, ``q_norm``/``k_norm``,
``attn_drop``, ``norm``, ``gate``, ``proj``); with no prefix it calls timm's forward unchanged. ``k_norm``
(absent in the references) is applied to prefix keys too, so they live on the model's key scale.
:class:`PromptStrategy` is the Avalanche side both methods share: cross-entropy on the current
experience's classes (older and unseen logits masked, as every reference does), the method's own extra
loss, and an optimizer rebuilt over exactly the trainable tensors with fresh state at each experience
(the references re-create theirs per task).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from timm.layers import Attention
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from avalanche_sdlora.model import create_backbone

from .class_incremental import ClassIncrementalTemplate

__all__ = ["PrefixAttention", "PrefixViT", "PromptTaskPlugin", "PromptStrategy", "make_optimizer", "prompt_backbone"]

Prefix = tuple[Tensor, Tensor]  # (keys [B, Lk, attn_dim], values [B, Lv, attn_dim])


class PrefixAttention(nn.Module):
    """timm's ``Attention`` with optional prefix keys/values, set only for the duration of one forward."""

    def __init__(self, attn: Attention) -> None:
        super().__init__()
        self.attn = attn
        self.prefix: Prefix | None = None

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        if self.prefix is None:
            if attn_mask is None and not is_causal:
                return self.attn(x)
            return self.attn(x, attn_mask=attn_mask, is_causal=is_causal)
        if attn_mask is not None or is_causal:
            raise ValueError("prefix-tuning takes no attention mask; call the backbone without attn_mask/is_causal")
        a = self.attn
        B, N, _ = x.shape
        H, hd = a.num_heads, a.head_dim
        gate = a.gate(x).sigmoid() if getattr(a, "gate", None) is not None else None
        q, k, v = a.qkv(x).reshape(B, N, 3, H, hd).permute(2, 0, 3, 1, 4).unbind(0)
        pk, pv = self.prefix
        pk = pk.reshape(B, pk.shape[1], H, hd).transpose(1, 2)
        pv = pv.reshape(B, pv.shape[1], H, hd).transpose(1, 2)
        q, k = a.q_norm(q), a.k_norm(torch.cat([pk, k], dim=2))
        v = torch.cat([pv, v], dim=2)
        if a.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=a.attn_drop.p if self.training else 0.0)
        else:
            attn = (q * a.scale) @ k.transpose(-2, -1)
            x = a.attn_drop(attn.softmax(dim=-1)) @ v
        x = x.transpose(1, 2).reshape(B, N, H * hd)
        x = getattr(a, "norm", nn.Identity())(x)
        if gate is not None:
            x = x * gate
        return a.proj_drop(a.proj(x))


class PrefixViT(nn.Module):
    """A frozen timm ViT whose ``layers`` accept prefix keys/values; ``query(x)`` is the prompt-free pass."""

    def __init__(self, backbone: VisionTransformer, layers: Sequence[int], name: str = "backbone") -> None:
        super().__init__()
        if not isinstance(backbone, VisionTransformer):
            raise TypeError(f"prefix-tuning needs a timm VisionTransformer, '{name}' is {type(backbone).__name__}")
        depth = len(backbone.blocks)
        layers = tuple(sorted({int(i) for i in layers}))
        if not layers or layers[0] < 0 or layers[-1] >= depth:
            raise ValueError(f"prompt layers {list(layers)} must be non-empty block indices in 0..{depth - 1} "
                             f"of '{name}'")
        dims = set()
        for i in layers:
            attn = getattr(backbone.blocks[i], "attn", None)
            if type(attn) is not Attention:  # subclasses (rotary, differential, ...) compute attention otherwise
                what = "no separate .attn module" if attn is None else f"{type(attn).__name__} attention"
                raise ValueError(f"block {i} of '{name}' has {what}; prefix-tuning needs "
                                 "timm's plain Attention (e.g. 'vit_tiny_patch16_224', 'vit_base_patch16_224', "
                                 "'deit_small_patch16_224')")
            dims.add(attn.num_heads * attn.head_dim)
        if len(dims) != 1:
            raise ValueError(f"prompt layers {list(layers)} of '{name}' have different attention widths {sorted(dims)}")
        for p in backbone.parameters():
            p.requires_grad_(False)
        self.backbone = backbone.eval()
        self.layers = layers
        self.prefix_dim = dims.pop()  # width of one prefix token (= embed_dim in every standard ViT)
        self.query_dim = backbone.num_features  # width of the query and of the head's input
        for i in layers:
            backbone.blocks[i].attn = PrefixAttention(backbone.blocks[i].attn)

    def train(self, mode: bool = True) -> "PrefixViT":
        super().train(mode)
        self.backbone.eval()  # frozen: no dropout / drop-path even while prompts train
        return self

    def _features(self, x: Tensor) -> Tensor:
        b = self.backbone
        return b.forward_head(b.forward_features(x), pre_logits=True)

    @torch.no_grad()
    def query(self, x: Tensor) -> Tensor:
        """Pre-logits of the plain pretrained ViT (no prompt anywhere), without gradient."""
        for i in self.layers:
            self.backbone.blocks[i].attn.prefix = None
        return self._features(x)

    def forward(self, x: Tensor, prefixes: Mapping[int, Prefix]) -> Tensor:
        """Pre-logits with ``prefixes[layer] = (keys, values)``, each ``[B, length, prefix_dim]``."""
        unknown = sorted(set(prefixes) - set(self.layers))
        if unknown:
            raise ValueError(f"layers {unknown} were not made prompt layers; PrefixViT(layers=...) has "
                             f"{list(self.layers)}")
        try:
            for i, (k, v) in prefixes.items():
                if k.shape[0] != x.shape[0] or v.shape[0] != x.shape[0] or k.shape[1] != v.shape[1]:
                    raise ValueError(f"layer {i}: prefix keys {tuple(k.shape)} / values {tuple(v.shape)} do not fit "
                                     f"a batch of {x.shape[0]} (need [B, length, {self.prefix_dim}], same length)")
                self.backbone.blocks[i].attn.prefix = (k, v)
            return self._features(x)
        finally:
            for i in self.layers:
                self.backbone.blocks[i].attn.prefix = None


def prompt_backbone(model_name: str, *, checkpoint: str | None, img_size: int, method: str) -> VisionTransformer:
    """``create_backbone`` with the refusal of a non-ViT phrased for the prompt method that asked."""
    try:
        return create_backbone(model_name, checkpoint=checkpoint, img_size=img_size)
    except TypeError as exc:
        raise TypeError(f"{method} needs a timm VisionTransformer with plain Attention blocks, such as "
                        f"'vit_tiny_patch16_224' or 'vit_base_patch16_224'; '{model_name}' is not one ({exc})") from exc


# ------------------------------------------------------------------------------------ Avalanche shell
def make_optimizer(name: str, lr: float, params) -> torch.optim.Optimizer:
    """``"adam"``: Adam (betas 0.9/0.999, no weight decay) as every reference; ``"sgd"``: SGD, momentum 0.9."""
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), weight_decay=0.0)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r}; pass optimizer='adam' or optimizer='sgd'")


class PromptTaskPlugin(SupervisedPlugin):
    """Before each experience the model opens the task's prompts; after it freezes them."""

    def before_training_exp(self, strategy, **kwargs) -> None:
        strategy.model.start_task()
        # Avalanche builds the optimizer before this hook; rebuild it over the new trainable set.
        strategy.make_optimizer(reset_optimizer_state=True)

    def after_training_exp(self, strategy, **kwargs) -> None:
        strategy.model.end_task()


class PromptStrategy(ClassIncrementalTemplate):
    """Class-incremental training of a prompt model with ``forward_train(x, with_extra) -> (logits, extra | None)``.

    The loss is cross-entropy over the current experience's classes plus ``extra_loss_weight`` times the
    model's extra term (DualPrompt's pull constraint, CODA-Prompt's orthogonality penalty; not computed at
    weight 0); ``clip_grad`` clips the gradient norm before each step (dualprompt-pytorch does, at 1.0).
    """

    method_label = "DualPrompt/CODA-Prompt (PromptStrategy)"

    def __init__(self, *, model: nn.Module, optimizer: torch.optim.Optimizer, extra_loss_weight: float = 0.0,
                 clip_grad: float | None = None, plugins: Sequence[SupervisedPlugin] | None = None, **kwargs) -> None:
        if clip_grad is not None and not (isinstance(clip_grad, (int, float)) and clip_grad > 0):
            raise ValueError(f"clip_grad must be a positive number or None, got {clip_grad!r}")
        if not (isinstance(extra_loss_weight, (int, float)) and math.isfinite(extra_loss_weight)):
            raise ValueError(f"the extra loss weight must be a finite number, got {extra_loss_weight!r}")
        self.extra_loss_weight = float(extra_loss_weight)
        self.clip_grad = clip_grad
        self._extra_loss: Tensor | None = None
        super().__init__(model=model, optimizer=optimizer, criterion=nn.CrossEntropyLoss(),
                         plugins=[PromptTaskPlugin(), *(plugins or [])], **kwargs)

    def forward(self) -> Tensor:
        if self.is_training:
            logits, self._extra_loss = self.model.forward_train(self.mb_x, with_extra=self.extra_loss_weight != 0)
            return logits
        self._extra_loss = None
        return self.model(self.mb_x)

    def criterion(self) -> Tensor:
        out = self.mb_output
        if not self.is_training:
            return self._criterion(out, self.mb_y)
        loss = self._criterion(self.current_class_logits(out), self.mb_y)
        return loss if self._extra_loss is None else loss + self.extra_loss_weight * self._extra_loss

    def optimizer_step(self) -> None:
        if self.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(self.optimizer.param_groups[0]["params"], self.clip_grad)
        super().optimizer_step()
