"""Stop at the first non-finite loss, naming where it happened, before it reaches the weights."""

from __future__ import annotations

import math

from avalanche.core import SupervisedPlugin


class FiniteLossPlugin(SupervisedPlugin):
    """Raises ``FloatingPointError`` on a NaN/inf loss; everything already written stays on disk."""

    def before_backward(self, strategy, **kwargs) -> None:
        value = float(strategy.loss.detach())
        if not math.isfinite(value):
            exp = getattr(strategy.experience, "current_experience", "?")
            raise FloatingPointError(
                f"loss is {value} at experience {exp}, epoch {strategy.clock.train_exp_epochs}, iteration "
                f"{strategy.clock.train_epoch_iterations}: training stopped. Lower the optimizer's learning rate "
                "or check the inputs and the criterion for NaNs; finished experiences' results are kept.")
