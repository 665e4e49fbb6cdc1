"""bf16 autocast of the training forward for any Avalanche strategy (issue 30): ``--train-amp bf16`` for every method.

The SD-LoRA strategies take ``autocast_dtype`` themselves (:class:`avalanche_sdlora.SDLoRA`); every other method gets
this plugin from the runner. Avalanche's training loop calls ``before_forward``, ``forward`` and ``after_forward`` in
that order for each minibatch, so entering ``torch.autocast`` in the first hook and leaving it in the last puts
exactly the strategy's own forward under autocast; the loss, the backward pass, the optimizer step and everything a
method computes outside its forward (prototypes, ridge fits, projections) stay in float32, as in the library. Torch's
autocast has no hook of its own in Avalanche, hence this plugin.
"""

from __future__ import annotations

import torch
from avalanche.core import SupervisedPlugin
from torch import Tensor


class TrainingAutocastPlugin(SupervisedPlugin):
    """Run the training forward under ``torch.autocast(dtype)`` and hand float32 logits to the loss."""

    def __init__(self, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        if dtype is not torch.bfloat16:
            raise ValueError(f"dtype must be torch.bfloat16 (float16 needs loss scaling, which no strategy here does), "
                             f"got {dtype!r}")
        self.dtype = dtype
        self._context = None

    def before_forward(self, strategy, **kwargs) -> None:
        if strategy.is_training and self._context is None:
            self._context = torch.autocast(strategy.device.type, dtype=self.dtype)
            self._context.__enter__()

    def after_forward(self, strategy, **kwargs) -> None:
        if self._context is None:
            return
        self._context.__exit__(None, None, None)
        self._context = None
        if isinstance(strategy.mb_output, Tensor) and strategy.mb_output.is_floating_point():
            strategy.mb_output = strategy.mb_output.float()

    def after_training_iteration(self, strategy, **kwargs) -> None:
        if self._context is not None:  # a forward that raised: never leave autocast switched on
            self._context.__exit__(None, None, None)
            self._context = None
