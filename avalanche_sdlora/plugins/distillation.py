"""SD-LoRA-KD: fold a new direction into the old magnitudes when the old directions already span it.

Rule (this implementation is the reference: the authors' repository has none). After task t >= 2
has been frozen, flatten and concatenate the stored (normalised) q and v directions of every adapted layer
into one vector per task, solve min_c ||D_t - sum_k c_k D_k||^2 by least squares, and if
||r||^2 / ||D_t||^2 <= threshold set alpha_k += alpha_t * c_k and drop D_t and alpha_t.

The least-squares algebra lives here, beside its plugin; the model only offers the structure it works on
(``adapters[*].directions(k)``) and the structural change (``absorb_last_direction``).
"""

from __future__ import annotations

import torch
from avalanche.core import SupervisedPlugin
from torch import Tensor

from ..adapter import lowrank_inner
from ..model import SDLoRAViT, require_sdlora_model
from ..options import DEFAULTS
from ..plugin_compat import check_no_shrinking


def direction_gram(model: SDLoRAViT, known: Tensor | None = None) -> Tensor:
    """Gram matrix of the stored task directions, each flattened over all adapted weights (float64).

    ``known``: the Gram of the first m stored directions (unchanged since): only the entries of the later ones are
    computed, so KD's fit after each task costs inner products linear in the stored tasks, not quadratic (issue 32).
    Every entry is the same sum in the same order either way, so the result is bit for bit the full computation's.
    """
    n = model.num_directions
    m = 0 if known is None or known.shape[0] > n else known.shape[0]
    G = torch.zeros(n, n, dtype=torch.float64)
    if m:
        G[:m, :m] = known
    for a in model.adapters:
        dirs = [list(a.directions(k)) for k in range(n)]
        for i in range(n):
            for j in range(max(i, m), n):
                g = float(sum(lowrank_inner(*dirs[i][s], *dirs[j][s]) for s in range(2)))
                G[i, j] += g  # summed over every adapted layer: one coefficient per task for all of them
                if i != j:
                    G[j, i] += g
    return G


def fit_direction(G: Tensor, k: int) -> tuple[Tensor, float]:
    """Least squares of direction k on directions 0..k-1 from the Gram matrix G: (coefficients, relative residual)."""
    G_old, b, dd = G[:k, :k], G[:k, k], G[k, k]
    coef = torch.linalg.lstsq(G_old, b[:, None], driver="gelsd").solution[:, 0]
    residual = dd - 2 * coef @ b + coef @ G_old @ coef
    rel = float((residual / dd).clamp_min(0)) if dd > 0 else 0.0
    return coef, rel


def fit_last_direction(model: SDLoRAViT) -> tuple[Tensor, float]:
    """Coefficients of the last stored direction on the earlier ones and ||residual||^2 / ||D_t||^2.

    One coefficient per old task over all adapted weights together (alpha is shared by all layers).
    """
    n = model.num_directions
    if n < 2:
        raise ValueError("knowledge distillation needs at least two stored directions")
    return fit_direction(direction_gram(model), n - 1)


def direction_residuals(model: SDLoRAViT) -> list[float]:
    """Relative residual of each stored direction k >= 1 on the directions before it (KD's test statistic)."""
    G = direction_gram(model)
    return [fit_direction(G, k)[1] for k in range(1, model.num_directions)]


class DistillationPlugin(SupervisedPlugin, supports_distributed=True):
    """After each training experience, absorb the new direction if the old ones span it (``threshold``).

    It freezes the task itself before fitting (freezing twice is a no-op), so it may sit anywhere in the plugin
    list relative to the growth plugin.
    """

    def __init__(self, threshold: float = DEFAULTS.kd_threshold) -> None:
        super().__init__()
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")
        self.threshold = threshold
        self.history: list[dict] = []
        # The Gram of the directions stored after the last decision, and the model it belongs to: the next task adds
        # one row (direction_gram's ``known``). Not checkpointed: a resumed run rebuilds it once.
        self._gram: tuple[int, Tensor] | None = None

    def before_training(self, strategy, **kwargs) -> None:
        """Refuse plugins that cannot follow a magnitude being removed, before anything changes."""
        check_no_shrinking(strategy.plugins)  # before anything changes in the model

    def after_training_exp(self, strategy, **kwargs) -> None:
        """Freeze the task, fit its direction on the earlier ones, absorb it if spanned."""
        task = strategy.experience.current_experience
        model = require_sdlora_model(strategy.model, "DistillationPlugin")
        model.freeze_task()
        if model.num_directions < 2:
            return
        n = model.num_directions
        cached = self._gram[1] if self._gram is not None and self._gram[0] == id(model) else None
        G = direction_gram(model, cached if cached is not None and cached.shape[0] == n - 1 else None)
        coef, rel = fit_direction(G, n - 1)
        absorbed = rel <= self.threshold
        if absorbed:
            model.absorb_last_direction(coef)
            G = G[: n - 1, : n - 1]
        self._gram = (id(model), G)
        self.history.append({"task": int(task), "relative_residual": rel,
                             "absorbed": absorbed, "coefficients": coef.tolist()})

    def state_dict(self) -> dict:
        """Every decision so far (JSON-serialisable), for a resumed run's reports."""
        return {"history": [dict(h) for h in self.history]}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (a resumed run)."""
        self.history = [dict(h) for h in state["history"]]
