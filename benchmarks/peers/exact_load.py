"""Loading a peer's checkpoint tensors only into a model of exactly the checkpoint's shape.

Why: ``load_state_dict(strict=True)`` refuses a missing or extra key and a differing shape, but copies a float32
tensor into a float64 buffer (RanPAC's ``G``) without a word, and says "Error(s) in loading state_dict" without
naming what to do. A peer whose structure was rebuilt from the checkpoint's JSON must then hold every tensor with
the same name, shape and dtype; anything else means the checkpoint comes from another configuration.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["load_exactly"]


def load_exactly(module: nn.Module, tensors: dict[str, Tensor], owner: str) -> None:
    """Load ``tensors`` into ``module`` when names, shapes and dtypes all match ``module.state_dict()``; otherwise a
    ``ValueError`` naming ``owner`` and the first differences, with ``module`` left unchanged."""
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    differing = [f"{k} {tuple(t.shape)} {t.dtype} (model {tuple(v.shape)} {v.dtype})"
                 for k, v in own.items()
                 if (t := tensors.get(k)) is not None and (t.shape, t.dtype) != (v.shape, v.dtype)]
    if missing or unexpected or differing:
        parts = [f"{label} {names[:3]}{' ...' if len(names) > 3 else ''}" for label, names in
                 (("missing", missing), ("unexpected", unexpected), ("differing", differing)) if names]
        raise ValueError(f"{owner}: the checkpoint does not fit the model rebuilt from its structure "
                         f"({'; '.join(parts)}); it was written with other settings: resume with the same settings or "
                         "start a new run")
    module.load_state_dict(tensors, strict=True)
