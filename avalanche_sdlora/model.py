"""Any timm ViT with SD-LoRA adapters on every block's qkv and a growing linear head.

``sdlora_vit(name)`` builds the backbone by its timm name, loads local weights, freezes it, and
injects :class:`~avalanche_sdlora.adapter.SDLoRAQKV` by walking ``model.blocks``: nothing here
depends on width or depth.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import Tensor, nn

from .adapter import Magnitudes, SDLoRAQKV
from .assets import default_asset, require_file
from .head import FrozenPastHead
from .input_checks import check_finite_weights, check_images, check_img_size
from .options import DEFAULTS, SDLoRAOptions, takes_options


def _check_vit(model: nn.Module, name: str) -> None:
    blocks = getattr(model, "blocks", None)
    ok = isinstance(model, VisionTransformer) and blocks is not None and len(blocks) > 0 and all(
        isinstance(getattr(getattr(b, "attn", None), "qkv", None), nn.Linear) for b in blocks)
    if not ok:
        raise TypeError(f"model '{name}' has no .blocks[*].attn.qkv nn.Linear; SD-LoRA needs a timm "
                        "VisionTransformer such as 'vit_tiny_patch16_224', 'vit_base_patch16_224' or 'deit_tiny_patch16_224'")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read weights without executing code: safetensors, or a torch file loaded with weights_only=True."""
    p = require_file(path, "model weights", "sdlora_vit(checkpoint=PATH)")
    try:
        if p.suffix == ".safetensors":
            sd = load_file(str(p))
        else:
            sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file
        raise ValueError(f"could not read weights from '{p}' ({exc}); pass checkpoint= a safetensors file or a "
                         "torch state dict saved with torch.save(model.state_dict(), path)") from exc
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise ValueError(f"'{p}' does not hold a flat state dict of tensors")
    return sd


def create_backbone(model_name: str, *, checkpoint: str | Path | None = None, img_size: int | None = None,
                    pretrained: bool = False) -> VisionTransformer:
    """A frozen-ready timm ViT without classifier (``num_classes=0``: forward returns pre-logits features).

    ``checkpoint`` is a local weights file; ``pretrained=True`` without one looks for
    ``<model_name>.safetensors`` in the assets folder and falls back to timm's download (online only).
    Position embeddings are resampled by timm's own ``checkpoint_filter_fn`` when ``img_size`` differs.
    """
    if model_name not in timm.list_models():
        close = difflib.get_close_matches(model_name, timm.list_models(), n=5, cutoff=0.6)
        raise ValueError(f"unknown timm model '{model_name}'; try one of {close or ['vit_tiny_patch16_224']}")
    kwargs = {"num_classes": 0}
    if img_size is not None:
        kwargs["img_size"] = img_size
    if checkpoint is None and pretrained:
        checkpoint = default_asset(f"{model_name}.safetensors")
        if checkpoint is None:  # only works online; offline machines must pass checkpoint=
            try:
                return timm.create_model(model_name, pretrained=True, **kwargs)
            except Exception as exc:
                raise FileNotFoundError(f"no local weights for '{model_name}' and the download failed ({exc}); "
                                        "pass checkpoint=PATH (sdlora_vit or create_backbone) or set $SDLORA_ASSETS") from exc
    try:
        model = timm.create_model(model_name, pretrained=False, **kwargs)
    except TypeError as exc:
        raise TypeError(f"timm model '{model_name}' is not a VisionTransformer ({exc}); SD-LoRA needs a timm ViT") from exc
    _check_vit(model, model_name)
    if img_size is not None:
        check_img_size(img_size, model.patch_embed.patch_size, model_name)
    if checkpoint is not None:
        sd = {k: v for k, v in read_state_dict(checkpoint).items() if not k.startswith("head")}
        check_finite_weights(sd, f"the weights file '{checkpoint}'", "pass checkpoint= an undamaged weights file "
                             "(these would make every logit NaN)")
        try:
            sd = checkpoint_filter_fn(sd, model)
            model.load_state_dict(sd, strict=True)
        except (RuntimeError, KeyError, ValueError) as exc:
            raise ValueError(f"weights in '{checkpoint}' do not fit '{model_name}' (another architecture or width?): "
                             f"{' '.join(str(exc).split())[:300]}. Pass the model_name= that matches checkpoint= "
                             "(or another checkpoint=).") from exc
    return model


class SDLoRAViT(nn.Module):
    """Frozen timm ViT + SD-LoRA adapters + a growing head; owns the shared magnitudes once.

    ``options`` (:class:`~avalanche_sdlora.options.SDLoRAOptions`) are the model's options, and the defaults of
    :meth:`add_task` and of a strategy built on this model; explicit keywords override them.
    """

    @takes_options()
    def __init__(self, backbone: VisionTransformer, *, options: SDLoRAOptions | None = None, rank: int = DEFAULTS.rank,
                 normalize_current: bool = DEFAULTS.normalize_current, direction_norm: str = DEFAULTS.direction_norm,
                 head_init: str = DEFAULTS.head_init) -> None:
        super().__init__()
        _check_vit(backbone, type(backbone).__name__)
        self.options = options
        self.backbone = backbone
        for p in backbone.parameters():
            p.requires_grad_(False)
        self.magnitudes = Magnitudes()
        for block in backbone.blocks:
            block.attn.qkv = SDLoRAQKV(block.attn.qkv, self.magnitudes, normalize_current=options.normalize_current,
                                       direction_norm=options.direction_norm)
        self.head = FrozenPastHead(backbone.num_features, init=options.head_init)

    @property
    def rank(self) -> int:
        """Rank of a new pair when ``add_task`` is given none."""
        return self.options.rank

    # ------------------------------------------------------------------ structure
    @property
    def adapters(self) -> list[SDLoRAQKV]:
        return [b.attn.qkv for b in self.backbone.blocks]

    @property
    def merged(self) -> bool:
        return any(a._merged for a in self.adapters)

    @property
    def num_directions(self) -> int:
        """Number of stored task directions (tasks kept after distillation)."""
        return len(self.magnitudes) - (1 if self.adapters[0].lora_A is not None else 0)

    def forward(self, x: Tensor) -> Tensor:
        check_images(x, self.backbone)
        return self.head(self.backbone(x))

    # ------------------------------------------------------------------ task lifecycle
    @torch.no_grad()
    def add_task(self, rank: int | None = None, alpha_init: float | None = None, reset_alphas: bool | None = None) -> None:
        """New trainable pair in every adapter and a new magnitude; optionally reset the old ones.

        Arguments left at None come from ``self.options`` (by default: rank 10, alpha 0.8, old alphas reset).
        A merged model is refused: the update folded into W0 would change under it.
        """
        opts = self.options.replace(**{k: v for k, v in (("rank", rank), ("alpha_init", alpha_init),
                                                         ("reset_alphas", reset_alphas)) if v is not None})
        if self.merged:
            raise RuntimeError("add_task() on a merged SD-LoRA model: call model.unmerge() first (the strategies' "
                               "growth plugin does it itself)")
        if opts.reset_alphas:
            self.magnitudes.fill_(opts.alpha_init)
        slot = self.magnitudes.append(opts.alpha_init)
        for a in self.adapters:
            a.add_pair(opts.rank, slot, init=opts.pair_init)

    @torch.no_grad()
    def freeze_task(self) -> None:
        for a in self.adapters:
            a.freeze_pair()

    @torch.no_grad()
    def normalize_task(self) -> None:
        """Normalise the live pair in place and keep it trainable (the single-component ablation's task end)."""
        for a in self.adapters:
            a.normalize_pair()

    def direction_residuals(self) -> list[float]:
        """KD's test statistic per stored direction; kept for callers, the algebra is in plugins/distillation.py."""
        from .plugins.distillation import direction_residuals

        return direction_residuals(self)

    @torch.no_grad()
    def absorb_last_direction(self, coef: Tensor) -> None:
        """alpha_k += alpha_t * c_k, then drop the last direction and its magnitude (the model loses a task)."""
        if self.merged:
            raise RuntimeError("absorb_last_direction() on a merged SD-LoRA model: call model.unmerge() first")
        alpha = self.magnitudes.alpha
        alpha[:-1] += alpha[-1] * coef.to(alpha)
        last = len(self.magnitudes) - 1
        for a in self.adapters:
            a.drop_slot(last)
        self.magnitudes.pop()

    # ------------------------------------------------------------------ merge and export
    @torch.no_grad()
    def merge(self) -> None:
        for a in self.adapters:
            a.merge()

    @torch.no_grad()
    def unmerge(self) -> None:
        for a in self.adapters:
            a.unmerge()

    @torch.no_grad()
    def export_timm_state_dict(self) -> dict[str, Tensor]:
        """A plain timm state dict (update folded into qkv) plus ``head.weight``/``head.bias``.

        Loads into ``timm.create_model(name, num_classes=head rows, img_size=...)``.
        """
        out = {}
        for key, value in self.backbone.state_dict().items():
            if ".qkv." in key and ".qkv.base_layer." not in key:
                continue  # adapter buffers and pairs
            out[key.replace(".qkv.base_layer.", ".qkv.")] = value.clone()
        for i, a in enumerate(self.adapters):
            if not a._merged:
                out[f"blocks.{i}.attn.qkv.weight"] += a.full_delta_weight()
        n = self.head.num_classes
        w = torch.zeros(n, self.head.in_features)
        b = torch.full((n,), self.head.mask_value)
        if n:
            w[self.head.class_ids] = torch.cat(list(self.head.weights)).cpu()
            b[self.head.class_ids] = torch.cat(list(self.head.biases)).cpu()
        out["head.weight"], out["head.bias"] = w, b
        return out

    # ------------------------------------------------------------------ accounting
    def stored_adapter_params(self) -> int:
        """Numbers kept for finished tasks: direction factors, their scales and the magnitudes."""
        return sum(a.dir_A.numel() + a.dir_B.numel() + a.dir_scale.numel() for a in self.adapters) + len(self.magnitudes)

    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # ------------------------------------------------------------------ adapters on disk (PEFT-style)
    def save_adapters(self, path: str | Path) -> Path:
        """Adapters, head and options to a folder, without the backbone (:func:`.adapter_io.save_adapters`)."""
        from .adapter_io import save_adapters

        return save_adapters(self, path)

    def load_adapters(self, path: str | Path) -> "SDLoRAViT":
        """Load a :meth:`save_adapters` folder into this (unmerged) model, strictly (:func:`.adapter_io.load_adapters`)."""
        from .adapter_io import load_adapters

        return load_adapters(path, model=self)


@takes_options()
def sdlora_vit(model_name: str, *, checkpoint: str | Path | None = None, img_size: int | None = None,
               pretrained: bool = False, options: SDLoRAOptions | None = None, rank: int = DEFAULTS.rank,
               normalize_current: bool = DEFAULTS.normalize_current, direction_norm: str = DEFAULTS.direction_norm,
               head_init: str = DEFAULTS.head_init, pair_init: str = DEFAULTS.pair_init) -> SDLoRAViT:
    """Build a timm ViT by name with SD-LoRA adapters on every qkv (see :class:`SDLoRAViT`).

    ``options`` (an :class:`~avalanche_sdlora.options.SDLoRAOptions`) gives every option at once; the keywords
    override it. ``normalize_current=False`` follows the authors' code (the current pair is unnormalised while it
    trains); ``True`` is the paper's form. ``direction_norm='factors'`` (default) divides a finished pair by
    ||B||_F ||A||_F as the authors' code does and reproduces their result; ``'frobenius'`` stores the paper's
    unit-Frobenius directions, which re-inflate old updates when magnitudes are reset (13 points lower on cifar100-tiny128).
    ``head_init`` sets new classifier rows (``"linear"``: ``nn.Linear``'s default, the authors'; ``"zeros"``);
    ``pair_init`` a new pair's A (``"random"``: LoRA's; ``"span"``: inside the stored directions' input rows).
    """
    backbone = create_backbone(model_name, checkpoint=checkpoint, img_size=img_size, pretrained=pretrained)
    return SDLoRAViT(backbone, options=options)


def require_sdlora_model(model: nn.Module, who: str) -> SDLoRAViT:
    """``model`` if it is an :class:`SDLoRAViT`, else one sentence naming ``who`` needs one."""
    if not isinstance(model, SDLoRAViT):
        raise TypeError(f"{who} needs a model built by sdlora_vit(...) (an SDLoRAViT), got {type(model).__name__}")
    return model
