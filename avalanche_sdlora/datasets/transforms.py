"""The image pipeline of SD-LoRA's code (``utils/data.py::build_transform`` in WuYichen-97/SD-Lora-CL).

Train: RandomResizedCrop(size, scale=(0.05, 1.0), ratio=(3/4, 4/3)) with torchvision's default bilinear
interpolation, then a horizontal flip with p = 0.5. Test: Resize(int(256 / 224 * size), bicubic) on the shorter side,
then CenterCrop(size). At 224 px these are the authors' 224/256; other sizes keep the same 256/224 ratio (as their
code computes it; their code skips resize and crop at 32 px and below, where ours still resizes, since our folders
hold images of any size).

Normalisation: SD-LoRA's code applies none (ToTensor only, pixels in [0, 1]; its ``common_trsf`` is empty and the
CODA-Prompt variant normalises with mean 0, std 1). Here the mean/std come from the weights' timm pretrained config
(``timm.data.resolve_model_data_config``), or from explicit arguments; with neither, none is applied, as theirs.
"""

from __future__ import annotations

from collections.abc import Sequence

import timm.data
import torch
from torch import nn
from torchvision.transforms import InterpolationMode, v2

TRAIN_SCALE = (0.05, 1.0)
TRAIN_RATIO = (3.0 / 4.0, 4.0 / 3.0)


def eval_resize_size(img_size: int) -> int:
    """Shorter side before the centre crop: 256 at 224 px, the same ratio elsewhere."""
    return int((256 / 224) * img_size)


def timm_normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std of the timm module inside ``model`` (itself, or ``model.backbone`` for an SD-LoRA ViT).

    A module without ``pretrained_cfg`` would silently get timm's ImageNet defaults, so it is refused. The config
    is the one of the timm name the model was built under, not read from a checkpoint file: build with the name of
    the weights' family, or pass mean/std.
    """
    for m in (model, getattr(model, "backbone", None)):
        if m is not None and getattr(m, "pretrained_cfg", None):
            cfg = timm.data.resolve_model_data_config(m)
            return tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])
    raise ValueError(f"model {type(model).__name__} has no timm pretrained_cfg (nor has its .backbone); pass a "
                     "model built by timm or sdlora_vit, or give mean= and std= explicitly")


def resolve_normalization(model: nn.Module | None, mean: Sequence[float] | None,
                          std: Sequence[float] | None) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) from the model's timm config or the arguments; None means no normalisation."""
    if model is not None and (mean is not None or std is not None):
        raise ValueError("give model= (its timm config sets mean/std) or mean= and std=, not both")
    if (mean is None) != (std is None):
        raise ValueError(f"mean and std go together; got mean={mean} and std={std}")
    if model is not None:
        return timm_normalization(model)
    if mean is None:
        return None
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise ValueError(f"mean and std need 3 values each (RGB) with std > 0; got mean={mean}, std={std}")
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def sdlora_transforms(img_size: int = 224, normalization: tuple[Sequence[float], Sequence[float]] | None = None
                      ) -> tuple[v2.Compose, v2.Compose]:
    """(train, eval) transforms from a PIL image to a float tensor (3, img_size, img_size)."""
    if img_size <= 0:
        raise ValueError(f"img_size must be positive, got {img_size}")
    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if normalization is not None:
        tail.append(v2.Normalize(list(normalization[0]), list(normalization[1])))
    tail.append(v2.ToPureTensor())
    train = v2.Compose([v2.RandomResizedCrop(img_size, scale=TRAIN_SCALE, ratio=TRAIN_RATIO,
                                             interpolation=InterpolationMode.BILINEAR),
                        v2.RandomHorizontalFlip(p=0.5), *tail])
    test = v2.Compose([v2.Resize(eval_resize_size(img_size), interpolation=InterpolationMode.BICUBIC),
                       v2.CenterCrop(img_size), *tail])
    return train, test
