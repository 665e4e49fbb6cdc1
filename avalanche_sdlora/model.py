"""Any timm ViT with SD-LoRA adapters on every block's qkv and a growing linear head.

``sdlora_vit(name)`` builds the backbone by any name ``timm.create_model`` takes (an architecture, with a
pretrained tag, or an ``hf-hub:`` id), loads its weights, freezes it, and injects
:class:`~avalanche_sdlora.adapter.SDLoRAQKV` by walking ``model.blocks``: nothing here depends on width or depth.
The adapters travel as PEFT's do: ``model.save_pretrained(folder)``, ``SDLoRAViT.from_pretrained(folder)``, and
``model.merge_and_unload()`` / ``model.to_timm()`` give a plain timm ``VisionTransformer``.
"""

from __future__ import annotations

import copy
import difflib
import warnings
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_file
from timm.models import get_pretrained_cfg, split_model_name_tag
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import Tensor, nn

from .adapter import Magnitudes, SDLoRAQKV
from .adapter_format import TENSORS_FILE, load_adapter_state, read_adapters, saved_options, save_adapters
from .assets import default_asset, require_file
from .head import FrozenPastHead
from .input_checks import check_finite_weights, check_images, check_img_size
from .options import DEFAULTS, SDLoRAOptions, check_options
from .variants import PAIR_STARTS, SingleComponent


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


def _check_name(model_name: str) -> None:
    """One sentence for a name timm does not know (``hf-hub:`` and ``local-dir:`` names are timm's to resolve)."""
    if not isinstance(model_name, str) or not model_name:
        raise ValueError(f"model_name must be a timm model name such as 'vit_tiny_patch16_224', got {model_name!r}")
    if model_name.startswith(("hf-hub:", "local-dir:")) or timm.is_model(model_name):
        return
    arch = split_model_name_tag(model_name)[0]
    close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
    raise ValueError(f"unknown timm model '{model_name}'; try one of {close or ['vit_tiny_patch16_224']}")


def _local_weights(model_name: str) -> Path | None:
    """``<model_name>.safetensors`` in the assets folder (for the architecture's default tag also ``<arch>...``)."""
    if any(c in model_name for c in ":/"):
        return None
    arch, tag = split_model_name_tag(model_name)
    default = get_pretrained_cfg(arch)
    names = [model_name] + ([arch] if tag and default is not None and default.tag == tag else [])
    return next((p for p in (default_asset(f"{n}.safetensors") for n in names) if p is not None), None)


def create_backbone(model_name: str, *, checkpoint: str | Path | None = None, img_size: int | None = None,
                    pretrained: bool = False) -> VisionTransformer:
    """A frozen-ready timm ViT without classifier (``num_classes=0``: forward returns pre-logits features).

    ``model_name`` is anything ``timm.create_model`` takes: ``vit_base_patch16_224``, a pretrained tag
    (``vit_base_patch16_224.augreg_in21k``) or an ``hf-hub:`` id. Weights: ``checkpoint`` (a local file);
    else, with ``pretrained=True``, ``<model_name>.safetensors`` in the assets folder, else timm's own loading
    (its Hugging Face cache, or a download when online), refused in one sentence when that fails. Without either
    the backbone is random, and a warning says so. Position embeddings are resampled by timm's own
    ``checkpoint_filter_fn`` when ``img_size`` differs.
    """
    _check_name(model_name)
    kwargs: dict[str, Any] = {"num_classes": 0}
    if img_size is not None:
        kwargs["img_size"] = img_size
    if checkpoint is None and pretrained:
        checkpoint = _local_weights(model_name)
    from_timm = pretrained and checkpoint is None
    try:
        model = timm.create_model(model_name, pretrained=from_timm, **kwargs)
    except TypeError as exc:
        raise TypeError(f"timm model '{model_name}' is not a VisionTransformer ({exc}); SD-LoRA needs a timm ViT") from exc
    except Exception as exc:  # timm's and huggingface_hub's own errors: no weights in the cache and no connection
        if from_timm:
            raise FileNotFoundError(f"no local weights for '{model_name}' and timm could not load them ({exc}); pass "
                                    "checkpoint=PATH (sdlora_vit or create_backbone) or set $SDLORA_ASSETS") from exc
        raise ValueError(f"timm cannot build '{model_name}' ({exc}); pass a name timm.create_model accepts") from exc
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
    elif not pretrained:
        warnings.warn(f"the backbone '{model_name}' has random weights (pretrained=False and no checkpoint=); pass "
                      "pretrained=True or checkpoint=PATH for a pretrained ViT", UserWarning, stacklevel=3)
    return model


class SDLoRAViT(nn.Module):
    """Frozen timm ViT + SD-LoRA adapters + a growing head; owns the shared magnitudes and its options once.

    ``options`` (:class:`~avalanche_sdlora.options.SDLoRAOptions`, default: the defaults) with ``changes`` (any of
    its fields as keywords, e.g. ``rank=4``) applied become ``self.options``, the one carrier of every option:
    :meth:`add_task` and a strategy built on this model start from it.
    """

    def __init__(self, backbone: VisionTransformer, *, options: SDLoRAOptions | None = None, **changes: Any) -> None:
        super().__init__()
        _check_vit(backbone, type(backbone).__name__)
        if backbone.num_classes:
            warnings.warn(f"the backbone has a {backbone.num_classes}-class classifier; SDLoRAViT classifies with its "
                          "own growing head, so the backbone's is reset (backbone.reset_classifier(0)); build it with "
                          "num_classes=0 to silence this", UserWarning, stacklevel=2)
            backbone.reset_classifier(0)
        options = check_options(DEFAULTS if options is None else options, "SDLoRAViT")
        self.options = options.replace(**changes) if changes else options
        self.backbone = backbone
        for p in backbone.parameters():
            p.requires_grad_(False)
        self.magnitudes = Magnitudes()
        for block in backbone.blocks:
            block.attn.qkv = SDLoRAQKV(block.attn.qkv, self.magnitudes, normalize_current=self.options.normalize_current,
                                       direction_norm=self.options.direction_norm)
        self.head = FrozenPastHead(backbone.num_features, init=self.options.head_init)

    @property
    def rank(self) -> int:
        """Rank of a new pair when ``add_task`` is given none."""
        return self.options.rank

    # ------------------------------------------------------------------ structure
    @property
    def adapters(self) -> list[SDLoRAQKV]:
        """The SD-LoRA adapter of every block, in order."""
        return [b.attn.qkv for b in self.backbone.blocks]

    @property
    def merged(self) -> bool:
        """Whether the update is folded into the base weights (:meth:`merge`)."""
        return any(a._merged for a in self.adapters)

    @property
    def num_directions(self) -> int:
        """Number of stored task directions (tasks kept after distillation)."""
        return len(self.magnitudes) - (1 if self.adapters[0].lora_A is not None else 0)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of every class seen so far (images checked against the backbone first)."""
        check_images(x, self.backbone)
        return self.head(self.backbone(x))

    # ------------------------------------------------------------------ task lifecycle
    @torch.no_grad()
    def add_task(self, rank: int | None = None, *, options: SDLoRAOptions | None = None, **changes: Any) -> None:
        """New trainable pair in every adapter and a new magnitude; the old ones reset if ``reset_alphas``.

        The task is built from one :class:`~avalanche_sdlora.options.SDLoRAOptions`: ``options`` (the model's unless
        given; the growth plugins pass their strategy's) with ``changes`` applied, e.g. ``add_task(alpha_init=1.0)``;
        ``rank`` is the pair's rank (default: the options' ``rank``; SD-LoRA-RR passes its schedule's). A merged model
        is refused: the update folded into W0 would change under it.
        """
        opts = check_options(self.options if options is None else options, "add_task")
        opts = opts.replace(**changes) if changes else opts
        if self.merged:
            raise RuntimeError("add_task() on a merged SD-LoRA model: call model.unmerge() first (the strategies' "
                               "growth plugin does it itself)")
        if opts.reset_alphas:
            self.magnitudes.fill_(opts.alpha_init)
        slot = self.magnitudes.append(opts.alpha_init)
        for a in self.adapters:
            a.add_pair(opts.rank if rank is None else rank, slot)
            PAIR_STARTS[opts.pair_init](a)

    @torch.no_grad()
    def freeze_task(self) -> None:
        """End the task: every adapter stores its pair as a frozen, normalised direction."""
        for a in self.adapters:
            a.freeze_pair()

    def normalize_task(self) -> None:
        """Former name of the single-component ablation's task end (deprecated; removed in the next version)."""
        warnings.warn("model.normalize_task() is deprecated: the single-component rule does it "
                      "(avalanche_sdlora.variants.SingleComponent().end_task(model))", DeprecationWarning, stacklevel=2)
        SingleComponent().end_task(self)

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
        """Fold the update into every qkv weight: no adapter cost at inference until :meth:`unmerge`."""
        for a in self.adapters:
            a.merge()

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update out of the qkv weights again (before training or changing tasks)."""
        for a in self.adapters:
            a.unmerge()

    @torch.no_grad()
    def _head_matrix(self) -> tuple[Tensor, Tensor]:
        """The head as one (classes, features) weight and bias; a class without rows gets bias ``mask_value``."""
        n, ref = self.head.num_classes, self.head.class_ids
        w = torch.zeros(n, self.head.in_features, device=ref.device)
        b = torch.full((n,), self.head.mask_value, device=ref.device)
        if len(self.head.rows):
            w[self.head.class_ids] = torch.cat(list(self.head.weights)).to(w)
            b[self.head.class_ids] = torch.cat(list(self.head.biases)).to(b)
        return w, b

    @torch.no_grad()
    def to_timm(self) -> VisionTransformer:
        """A plain timm ``VisionTransformer`` computing this model's logits: the update folded into each qkv weight,
        the head one ``nn.Linear`` (a class without rows: logit ``mask_value``). This model is left as it is."""
        vit = copy.deepcopy(self.backbone)
        for block, adapter in zip(vit.blocks, self.adapters):
            linear = block.attn.qkv.base_layer
            if not adapter._merged:
                linear.weight += adapter.full_delta_weight()
            block.attn.qkv = linear
        with torch.random.fork_rng(devices=[]):  # the new head's init would draw from the caller's random stream
            vit.reset_classifier(self.head.num_classes)
        w, b = self._head_matrix()
        if self.head.num_classes:
            vit.head.to(w.device).weight.copy_(w)
            vit.head.bias.copy_(b)
        return vit.requires_grad_(True).train(self.training)

    def merge_and_unload(self) -> VisionTransformer:
        """PEFT's name for :meth:`to_timm`: the timm model with every update merged (unlike PEFT, this model stays)."""
        return self.to_timm()

    @torch.no_grad()
    def export_timm_state_dict(self) -> dict[str, Tensor]:
        """A plain timm state dict (update folded into qkv) plus ``head.weight``/``head.bias`` (CPU tensors).

        Loads into ``timm.create_model(name, num_classes=head rows, img_size=...)``; :meth:`to_timm` builds that model.
        """
        return {k: v.detach().cpu().clone() for k, v in self.to_timm().state_dict().items()}

    # ------------------------------------------------------------------ accounting
    def stored_adapter_params(self) -> int:
        """Numbers kept for finished tasks: direction factors, their scales and the magnitudes."""
        return sum(a.dir_A.numel() + a.dir_B.numel() + a.dir_scale.numel() for a in self.adapters) + len(self.magnitudes)

    def trainable_params(self) -> int:
        """Number of parameters that train now (the current pair, magnitudes, new head rows)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # ------------------------------------------------------------------ adapters on disk (PEFT-style)
    def save_pretrained(self, path: str | Path) -> Path:
        """Adapters, head and options to a folder, without the backbone (:mod:`~avalanche_sdlora.adapter_format`)."""
        return save_adapters(self, path)

    def save_adapters(self, path: str | Path) -> Path:
        """Former name of :meth:`save_pretrained` (deprecated; removed in the next version)."""
        warnings.warn("model.save_adapters(path) is deprecated: use model.save_pretrained(path)", DeprecationWarning,
                      stacklevel=2)
        return self.save_pretrained(path)

    def load_adapters(self, path: str | Path, *, allow_unverified: bool = False) -> SDLoRAViT:
        """Load a :meth:`save_pretrained` folder into this (unmerged) model, strictly; returns the model.

        The folder's base (architecture, size, options, weights) must be this model's; a config without its hashes
        is refused unless ``allow_unverified=True``.
        """
        tensors, cfg = read_adapters(path, allow_unverified=allow_unverified)
        load_adapter_state(self, tensors, cfg, str(Path(path) / TENSORS_FILE), allow_unverified=allow_unverified)
        return self

    @classmethod
    def from_pretrained(cls, path: str | Path, *, checkpoint: str | Path | None = None, pretrained: bool = False,
                        allow_unverified: bool = False) -> SDLoRAViT:
        """The model a :meth:`save_pretrained` folder holds, like PEFT's ``PeftModel.from_pretrained``.

        The base is built by the saved timm name, image size and options (``sdlora_vit``); pass the weights it was
        trained on (``checkpoint=`` or ``pretrained=True``): other base weights are refused by fingerprint.
        """
        return sdlora_vit(None, adapters=path, checkpoint=checkpoint, pretrained=pretrained,
                          allow_unverified=allow_unverified)


def sdlora_vit(model_name: str | None, *, checkpoint: str | Path | None = None, img_size: int | None = None,
               pretrained: bool = False, adapters: str | Path | None = None, allow_unverified: bool = False,
               options: SDLoRAOptions | None = None, **changes: Any) -> SDLoRAViT:
    """Build a timm ViT by name with SD-LoRA adapters on every qkv (see :class:`SDLoRAViT`, :func:`create_backbone`).

    ``options`` (an :class:`~avalanche_sdlora.options.SDLoRAOptions`) with ``changes`` (its fields as keywords)
    applied become the model's options. The model-scope ones shape the adapters: ``normalize_current=False``
    follows the authors' code (the current pair is unnormalised while it trains), ``True`` is the paper's form;
    ``direction_norm='factors'`` (default) divides a finished pair by ||B||_F ||A||_F as the authors' code does and
    reproduces their result, ``'frobenius'`` stores the paper's unit-Frobenius directions, which re-inflate old
    updates when magnitudes are reset (13 points lower on cifar100-tiny128); ``head_init`` sets new classifier rows
    (``"linear"``: ``nn.Linear``'s default, the authors'; ``"zeros"``); ``pair_init`` a new pair's A
    (``"random"``: LoRA's; ``"span"``: inside the stored directions' input rows).

    ``adapters`` (a :meth:`SDLoRAViT.save_pretrained` folder) loads them into the built model; the name (None: the
    saved one), image size and options default to the saved ones.
    """
    saved = read_adapters(adapters, allow_unverified=allow_unverified) if adapters is not None else None
    if saved is not None:
        cfg = saved[1]
        model_name = model_name or cfg.get("timm_name") or cfg.get("model_name")
        if not model_name:
            raise ValueError(f"'{adapters}' does not record a timm model name (its backbone was not built by name); "
                             "pass sdlora_vit(model_name, adapters=...) the name of the saved model's backbone")
        if img_size is None:
            h, w = cfg["img_size"]
            img_size = h if h == w else (h, w)
        if options is None:
            options = saved_options(cfg)
    options = check_options(DEFAULTS if options is None else options, "sdlora_vit")
    options = options.replace(**changes) if changes else options  # refused by name before the backbone is built
    backbone = create_backbone(model_name, checkpoint=checkpoint, img_size=img_size, pretrained=pretrained)
    model = SDLoRAViT(backbone, options=options)
    if saved is not None:
        load_adapter_state(model, *saved, str(Path(adapters) / TENSORS_FILE), allow_unverified=allow_unverified)
    return model


def require_sdlora_model(model: nn.Module, who: str) -> SDLoRAViT:
    """``model`` if it is an :class:`SDLoRAViT`, else one sentence naming ``who`` needs one."""
    if not isinstance(model, SDLoRAViT):
        raise TypeError(f"{who} needs a model built by sdlora_vit(...) (an SDLoRAViT), got {type(model).__name__}")
    return model
