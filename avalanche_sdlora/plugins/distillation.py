"""SD-LoRA-KD: fold a new direction into the old magnitudes when the old directions already span it.

Rule (this implementation is the reference: the authors' repository has none). After task t >= 2
has been frozen, flatten and concatenate the stored (normalised) q and v directions of every adapted layer
into one vector per task, solve min_c ||D_t - sum_k c_k D_k||^2 by least squares, and if
||r||^2 / ||D_t||^2 <= threshold set alpha_k += alpha_t * c_k and drop D_t and alpha_t.
"""

from __future__ import annotations

from avalanche.core import SupervisedPlugin


class DistillationPlugin(SupervisedPlugin):
    """Runs after the growth plugin's ``after_training_exp`` (it must come later in the plugin list)."""

    def __init__(self, threshold: float = 9e-4) -> None:
        super().__init__()
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")
        self.threshold = threshold
        self.history: list[dict] = []

    def after_training_exp(self, strategy, **kwargs) -> None:
        task = strategy.experience.current_experience
        model = strategy.model
        if model.num_directions < 2:
            return
        coef, rel = model.fit_last_direction()
        absorbed = rel <= self.threshold
        if absorbed:
            model.absorb_last_direction(coef)
        self.history.append({"task": int(task), "relative_residual": rel,
                             "absorbed": absorbed, "coefficients": coef.tolist()})
