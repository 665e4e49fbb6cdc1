"""What the library accepts from its user, checked cheaply and said in one sentence naming the argument and the fix.

Without these checks a wrong input fails deep inside timm or torch (a convolution's channel count, an assertion on
the image height, an index error in the loss) or, worse, trains: weights holding NaN fail only at the first step, an
input size that is not a multiple of the patch size silently drops the last pixel rows, a benchmark with task labels
trains as if they were absent. Each check here costs attribute reads, or one host read per experience (labels).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def check_img_size(img_size: int | Sequence[int], patch_size: int | Sequence[int], model_name: str) -> None:
    """``img_size`` must be a whole number of patches: timm's patch embedding drops the remainder silently."""
    (h, w), (ph, pw) = _pair(img_size), _pair(patch_size)
    if h % ph or w % pw:
        near = sorted({max(ph, h // ph * ph), (h // ph + 1) * ph})
        fit = " or ".join(map(str, near)) if h == w and ph == pw else "a multiple of it"
        patch = ph if ph == pw else (ph, pw)
        raise ValueError(f"img_size={img_size!r} is not a multiple of '{model_name}''s patch size {patch}"
                         f" (the last pixel rows and columns would be ignored); pass img_size={fit}")


def check_finite_weights(state: Mapping[str, Tensor], where: str, fix: str) -> None:
    """Refuse weights holding NaN or inf (they would fail only at the first training step, or give NaN logits)."""
    for name, t in state.items():
        if isinstance(t, Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            n = int((~torch.isfinite(t)).sum())
            raise ValueError(f"NaN or inf in {where} ({n} value(s) of '{name}'); {fix}")


def check_images(x: object, backbone: nn.Module, who: str = "the images given to the model") -> None:
    """Images must be a float (batch, channels, height, width) tensor with the backbone's channels and size."""
    pe = backbone.patch_embed
    channels = pe.proj.in_channels
    if isinstance(x, torch.fx.Proxy):  # symbolic tracing (Avalanche's RAR traces the model): no values to check
        return
    if not isinstance(x, Tensor):
        raise TypeError(f"{who} are a {type(x).__name__}, not a tensor; pass images as a float tensor "
                        f"(batch, {channels}, height, width), e.g. through torchvision's v2.ToImage() and v2.ToDtype")
    shape = tuple(x.shape)
    if x.dim() != 4:
        raise ValueError(f"{who} have shape {shape}; pass a batch of images (batch, {channels}, height, width)"
                         + (" (add the batch dimension with x.unsqueeze(0))" if x.dim() == 3 else ""))
    if not x.is_floating_point():
        raise TypeError(f"{who} are a {x.dtype} tensor; the model takes float images: convert them as the model was "
                        "trained (e.g. x.float() / 255, then the backbone's normalisation)")
    if shape[1] != channels:
        if shape[-1] == channels:
            raise ValueError(f"{who} have shape {shape}, channels last (batch, height, width, {channels}); the model "
                             "takes channels first: pass x.permute(0, 3, 1, 2)")
        fix = {1: "grayscale: repeat the channel, x.expand(-1, 3, -1, -1), or convert the images to RGB",
               4: "RGBA: drop the alpha channel, x[:, :3], or convert the images to RGB"}.get(
            shape[1], f"convert the images to {channels} channels")
        raise ValueError(f"{who} have {shape[1]} channel(s) (shape {shape}) but the model takes {channels}; {fix}")
    if getattr(pe, "strict_img_size", False) and not getattr(pe, "dynamic_img_pad", False) and \
            getattr(pe, "img_size", None) is not None and tuple(shape[2:]) != tuple(pe.img_size):
        h, w = pe.img_size
        raise ValueError(f"{who} are {shape[2]}x{shape[3]} px but the model was built for {h}x{w} px; resize the "
                         f"images (e.g. v2.Resize({h if h == w else (h, w)})) or build the model with "
                         f"sdlora_vit(..., img_size={shape[2] if shape[2] == shape[3] else (shape[2], shape[3])})")


def check_labels(y: Tensor | Sequence[int], num_classes: int | float, who: str) -> None:
    """Labels must be integer class ids in [0, num_classes): one host read (call it once per experience)."""
    if not isinstance(y, Tensor):
        y = torch.as_tensor(y)
    if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
        raise TypeError(f"{who} are {y.dtype} values; pass integer class ids (a torch.long tensor, e.g. "
                        "targets.long())")
    if y.numel() == 0:
        return
    low, high = (int(v) for v in torch.stack([y.min(), y.max()]).cpu())
    if low < 0:
        raise ValueError(f"{who} hold the negative class id {low}; class ids are 0, 1, 2, ...: renumber the classes "
                         "from 0 (e.g. with a dict from your class names)")
    if high >= num_classes:
        raise ValueError(f"{who} hold class id {high} but the head has {num_classes} output(s) for this experience "
                         f"(classes 0..{num_classes - 1}); the dataset's targets must list the labels its samples "
                         "carry (build it with targets= the same labels)")


def task_label_note(task_labels: Iterable[int], experience: int) -> str | None:
    """A note when an experience carries task labels other than 0: SD-LoRA is class-incremental and ignores them."""
    labels = sorted({int(t) for t in task_labels})
    if labels and labels != [0]:
        return (f"experience {experience} carries task label(s) {labels[:5]}: SD-LoRA is class-incremental and "
                "ignores task labels (one head over every class, no task id at test time); build the benchmark "
                "without them (e.g. nc_benchmark(..., task_labels=False)) to silence this note")
    return None


def warn_task_labels(task_labels: Iterable[int], experience: int) -> None:
    """:func:`task_label_note` as a ``UserWarning`` (SD-LoRA trains on, ignoring the task labels)."""
    note = task_label_note(task_labels, experience)
    if note is not None:
        warnings.warn(note, UserWarning, stacklevel=3)
