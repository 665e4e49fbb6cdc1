"""The adapter folder's format: which tensors are the adapters, its config, its checks, reading and writing.

A folder (PEFT's ``save_pretrained`` layout) is ``adapter_model.safetensors`` (stored directions, the current pair,
the magnitudes and the head chunks: every tensor that is not the frozen timm backbone) and, written last,
``adapter_config.json`` (timm model name and tag, image size, depth, width, the model's ``SDLoRAOptions`` as a dict,
whether the model was merged, which tensors were trainable, a fingerprint of the base weights and the sha256 of the
tensor file). Loading checks a base of another model, width, depth, image size, options or weights and refuses it
with one sentence. The backbone is what makes a full state dict big (23 MB for ViT-Tiny, ~340 MB for ViT-B) and it
never changes, so it is rebuilt from its weights file. Nothing is pickled: loading runs no code from the files.

This module works on any module holding SD-LoRA adapters and imports no model: ``SDLoRAViT.save_pretrained``,
``SDLoRAViT.from_pretrained`` and :mod:`avalanche_sdlora.checkpoint` call it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from timm.models import get_pretrained_cfg
from torch import Tensor

from .adapter import Magnitudes, SDLoRAQKV
from .atomic import write_bytes
from .input_checks import check_finite_weights
from .options import DEFAULTS, MODEL_FIELDS, SDLoRAOptions

FORMAT = "avalanche-sdlora-adapters/1"
TENSORS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
# The options a config written before it held the options dict recorded (top-level keys); read, never written.
LEGACY_OPTION_KEYS = ("rank", "direction_norm", "normalize_current", "head_init")
UNVERIFIED = "allow_unverified=True"  # the keyword that accepts a file whose hashes were removed (named in refusals)


def sha256_hex(data: bytes) -> str:
    """The hex sha256 recorded for a tensor file."""
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------- what belongs to the adapters
def _adapter_prefixes(model: torch.nn.Module) -> list[str]:
    return [f"{name}." for name, m in model.named_modules() if isinstance(m, SDLoRAQKV)]


def _is_adapter_key(key: str, prefixes: list[str]) -> bool:
    """Everything outside the backbone (head, magnitudes) and each adapter's own tensors (not its base layer)."""
    if not key.startswith("backbone."):
        return True
    for p in prefixes:
        if key.startswith(p):
            return not key.startswith(f"{p}base_layer.")
    return False


def _is_flag(key: str) -> bool:
    # A merged flag in the state dict would describe the base weight, which is not saved: the flag travels in
    # the JSON instead and the loaded model is merged again.
    return key.rsplit(".", 1)[-1] == "merged"


def adapter_state_dict(model: torch.nn.Module) -> dict[str, Tensor]:
    """The entries of ``model.state_dict()`` that are not the frozen backbone (CPU copies)."""
    prefixes = _adapter_prefixes(model)
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()
            if _is_adapter_key(k, prefixes) and not _is_flag(k)}


def base_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over the frozen backbone's tensors (names, dtypes, shapes, bytes).

    The weights of the adapted qkv layers are left out because ``merge()`` changes them in place; every
    other backbone tensor (patch embedding, position embedding, norms, MLPs, projections) identifies the base.
    """
    prefixes = _adapter_prefixes(model)
    skip = {f"{p}base_layer.weight" for p in prefixes}
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        if _is_adapter_key(key, prefixes) or key in skip:
            continue
        hash_tensor(h, value, f"{key}|")
    return h.hexdigest()


def hash_tensor(h: "hashlib._Hash", tensor: torch.Tensor, label: str = "") -> None:
    """Feed ``label``, a tensor's dtype and shape, then its bytes (no copy on the CPU) into the hash ``h``: the one
    encoding of a tensor this package hashes (base fingerprints, checkpoint digests)."""
    t = tensor.detach().cpu().contiguous().reshape(-1)
    h.update(f"{label}{t.dtype}|{tuple(tensor.shape)}|".encode())
    h.update(memoryview(t.view(torch.uint8).numpy()))


def timm_name(backbone: torch.nn.Module) -> str | None:
    """The timm name the backbone was built from: its architecture, with its pretrained tag when that is not the
    architecture's default (``vit_base_patch16_224.augreg_in21k``)."""
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    arch, tag = cfg.get("architecture"), cfg.get("tag")
    default = get_pretrained_cfg(arch) if arch else None
    return f"{arch}.{tag}" if arch and tag and (default is None or default.tag != tag) else arch


def adapter_config(model: torch.nn.Module) -> dict:
    """The facts a base must match to take these adapters, and the options that rebuild the model."""
    require_sdlora(model, "adapter_config")
    backbone = model.backbone
    return {"format": FORMAT, "model_name": (getattr(backbone, "pretrained_cfg", None) or {}).get("architecture"),
            "timm_name": timm_name(backbone), "img_size": [int(s) for s in backbone.patch_embed.img_size],
            "depth": len(backbone.blocks), "width": int(backbone.embed_dim), "options": model.options.to_dict(),
            "merged": bool(model.adapters[0].merged), "base_sha256": base_fingerprint(model),
            "requires_grad": sorted(n for n, p in model.named_parameters() if p.requires_grad)}


def saved_options(cfg: dict) -> SDLoRAOptions:
    """The model's options a config records (a config written before the options dict: its four top-level keys)."""
    if "options" in cfg:
        return SDLoRAOptions.from_dict(cfg["options"])
    return DEFAULTS.replace(**{k: cfg[k] for k in LEGACY_OPTION_KEYS if k in cfg})


def _compared_options(cfg: dict) -> tuple[str, ...]:
    """The model-scope options a config records (every one, or those among the legacy keys)."""
    return MODEL_FIELDS if "options" in cfg else tuple(k for k in MODEL_FIELDS if k in cfg)


def require_sdlora(model, caller: str) -> None:
    """Adapters exist only on an ``SDLoRAViT``; anything else gets a TypeError naming ``caller``."""
    ok = isinstance(getattr(model, "magnitudes", None), Magnitudes) and isinstance(
        getattr(model, "options", None), SDLoRAOptions) and any(isinstance(m, SDLoRAQKV) for m in model.modules())
    if not ok:
        raise TypeError(f"{caller} needs a model built by sdlora_vit(...), got {type(model).__name__}")


def _describe(cfg: dict) -> str:
    h, w = cfg["img_size"]
    size = f"{h} px" if h == w else f"{h}x{w} px"
    return f"'{cfg['model_name']}' at {size} ({cfg['depth']} blocks, width {cfg['width']})"


def build_hint(cfg: dict) -> str:
    """How to build the base a saved config describes (named in every refusal)."""
    h, w = cfg["img_size"]
    size = h if h == w else (h, w)
    defaults = DEFAULTS.to_dict()
    opts = "".join(f", {k}={v!r}" for k, v in saved_options(cfg).to_dict().items() if v != defaults[k])
    name = cfg.get("timm_name") or cfg["model_name"]
    return f"sdlora_vit('{name}', img_size={size}{opts}, checkpoint=<the same weights file>)"


def check_saved_config(saved: dict, where: str) -> None:
    """The fields of a saved ``adapter_config`` that loading reads, each of the type ``save_adapters`` writes."""
    size = saved.get("img_size")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                                                for v in size)):
        raise ValueError(f"the adapter config of '{where}' has img_size={size!r}; it must be the pair [height, width] "
                         "of the base's input size that save_adapters writes: save the adapters again")
    for key, kind in (("depth", int), ("width", int), ("model_name", str)):
        value = saved.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise ValueError(f"the adapter config of '{where}' has {key}={value!r}, not a {kind.__name__}; save the "
                             "adapters again")


# ---------------------------------------------------------------------- loading onto a built model
def load_adapter_state(model: torch.nn.Module, tensors: dict[str, Tensor], saved: dict, where: str, *,
                       allow_unverified: bool = False) -> None:
    """Check ``model`` against the saved ``adapter_config`` and load ``tensors`` into it strictly.

    Architecture, options and base weights are checked before the model is touched; ``where`` (a file) is
    named in every error. A config without the base's fingerprint is refused (deleting the field must not switch
    the check off) unless ``allow_unverified``; adapters holding NaN or inf are always refused.
    """
    require_sdlora(model, "loading adapters")
    check_saved_config(saved, where)
    if saved.get("base_sha256") is None and not allow_unverified:
        raise ValueError(f"the adapter config of '{where}' records no base_sha256, so the base weights they were "
                         "trained on cannot be checked; save the adapters again, or pass "
                         f"{UNVERIFIED} to load adapters you trust onto this base")
    check_finite_weights(tensors, f"the adapters in '{where}'", "they were saved from a diverged model; load "
                         "adapters saved before it diverged")
    current = adapter_config(model)
    if current["merged"]:
        raise ValueError(f"the model is merged, so its qkv weights hold an update; call model.unmerge() before "
                         f"loading the adapters of '{where}'")
    arch = ("model_name", "img_size", "depth", "width")
    if any(saved.get(k) != current[k] for k in arch if saved.get(k) is not None and current[k] is not None):
        raise ValueError(f"the adapters in '{where}' were saved on {_describe(saved)} but this model is "
                         f"{_describe(current)}; build the base with {build_hint(saved)}")
    ours, theirs = model.options, saved_options(saved)
    diff = {k: (getattr(theirs, k), getattr(ours, k)) for k in _compared_options(saved)
            if getattr(theirs, k) != getattr(ours, k)}
    if diff:
        raise ValueError(f"the adapters in '{where}' were saved with other options {diff} (saved, this model); "
                         f"build the model with {build_hint(saved)}")
    if saved.get("base_sha256") not in (None, current["base_sha256"]):
        raise ValueError(f"the base weights of this model differ from those the adapters in '{where}' were trained "
                         f"on (fingerprint {current['base_sha256'][:12]} vs {saved['base_sha256'][:12]}); build the base "
                         f"from the same weights file: {build_hint(saved)}")
    device = next(model.parameters()).device
    state = {k: v.to(device) for k, v in tensors.items()}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise ValueError(f"the adapters in '{where}' do not fit this model ({' '.join(str(exc).split())[:300]}); "
                         f"build the model with {build_hint(saved)}") from exc
    prefixes = _adapter_prefixes(model)
    missing = sorted(k for k in result.missing_keys if _is_adapter_key(k, prefixes) and not _is_flag(k))
    if result.unexpected_keys or missing:
        raise ValueError(f"the adapters in '{where}' do not fit this model (unexpected {result.unexpected_keys[:5]}, "
                         f"missing {missing[:5]}); load them into a model built with {build_hint(saved)}")
    if "requires_grad" in saved:
        trainable = set(saved["requires_grad"])
        for name, p in model.named_parameters():
            if name in state:
                p.requires_grad_(name in trainable)
    if saved.get("merged"):
        model.merge()


# ---------------------------------------------------------------------- PEFT-style folder
def save_adapters(model: torch.nn.Module, path: str | Path) -> Path:
    """Write the adapters of ``model`` (not its backbone) to the folder ``path``; returns the folder.

    A merged model is saved as it is: the adapters do not change when merged, the JSON records ``merged`` and
    :func:`load_adapters` merges the loaded model again, so it computes what the saved one computed.
    """
    require_sdlora(model, "save_adapters")
    state = adapter_state_dict(model)
    check_finite_weights(state, "the model's adapters", "nothing was saved: the model diverged (a lower learning "
                         "rate, or the weights of an earlier experience, gives finite ones)")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    data = save_bytes(state)
    cfg = {**adapter_config(model), "sha256": sha256_hex(data)}
    write_bytes(folder / TENSORS_FILE, data)
    write_bytes(folder / CONFIG_FILE, json.dumps(cfg, indent=1).encode())  # last: marks a complete save
    return folder


def read_adapters(path: str | Path, *, allow_unverified: bool = False) -> tuple[dict[str, Tensor], dict]:
    """Tensors and config of a :func:`save_adapters` folder, with the file's checksum verified.

    A config without the checksum is refused unless ``allow_unverified`` (an edit of the file it protects must not
    switch the check off).
    """
    folder = Path(path)
    cfg_path, tensor_path = folder / CONFIG_FILE, folder / TENSORS_FILE
    if not cfg_path.is_file():
        raise FileNotFoundError(f"'{folder}' has no {CONFIG_FILE}: pass SDLoRAViT.from_pretrained a folder written by "
                                "save_pretrained (a save that was interrupted has none)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"'{cfg_path}' is damaged ({exc}); save the adapters again") from exc
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise ValueError(f"'{cfg_path}' is not an avalanche-sdlora adapter config (format "
                         f"{cfg.get('format') if isinstance(cfg, dict) else None!r}, expected {FORMAT!r})")
    if cfg.get("sha256") is None and not allow_unverified:
        raise ValueError(f"'{cfg_path}' records no sha256 of {TENSORS_FILE}, so damage to it cannot be detected; save "
                         f"the adapters again, or pass load_adapters(..., {UNVERIFIED}) to load a file you trust")
    check_saved_config(cfg, str(cfg_path))
    return read_checked_tensors(tensor_path, cfg.get("sha256"), "save the adapters again"), cfg


def read_checked_tensors(path: Path, sha256: str | None, fix: str) -> dict[str, Tensor]:
    """Read a safetensors file whose sha256 was recorded (None: an old file without one)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read '{path}' ({exc}); {fix}") from exc
    if sha256 is not None and sha256_hex(data) != sha256:
        raise ValueError(f"'{path}' is damaged (its sha256 differs from the one recorded when it was written); {fix}")
    try:
        return load_bytes(data)
    except Exception as exc:  # safetensors raises its own error types for a bad header
        raise ValueError(f"'{path}' is not a readable safetensors file ({exc}); {fix}") from exc
