"""Stop at the first non-finite loss, naming where it happened, before it reaches the weights."""

from __future__ import annotations

import math

import torch
from avalanche.core import SupervisedPlugin
from torch import Tensor

from ..distributed import any_rank, is_distributed

DEFAULT_CHECK_EVERY = 50  # steps between host reads of the flag on an accelerator


class FiniteLossPlugin(SupervisedPlugin, supports_distributed=True):
    """Raises ``FloatingPointError`` on a NaN/inf loss; everything already written stays on disk.

    On CPU the loss is read at every step and the error raised before that step's backward pass. On an accelerator
    that read would make the host wait for the device at every step, so the check stays on the device: the first
    non-finite loss sets a flag that puts every parameter the optimizer holds back to its value from before the step,
    at that step and at every later one, and the host reads the flag every ``check_every`` steps (default
    ``DEFAULT_CHECK_EVERY``) and at the end of each epoch, raising the same error for the first bad step. The weights
    thus never keep a value computed from a non-finite loss; the steps between that loss and the read are wasted.
    ``check_every=k`` uses the deferred check on any device (a test can run it on CPU). Under torch.distributed the
    flag is all-reduced (DDP would spread one rank's NaN gradients to every rank) and every rank raises at one step.
    """

    def __init__(self, check_every: int | None = None) -> None:
        super().__init__()
        if check_every is not None and (isinstance(check_every, bool) or not isinstance(check_every, int)
                                        or check_every <= 0):
            raise ValueError(f"check_every must be a positive integer or None (every step on CPU), got {check_every!r}")
        self.check_every = check_every
        self._reset()

    def _reset(self) -> None:
        self._pending: list[tuple[Tensor, Tensor, tuple]] = []  # (loss, flag, where) of steps not read yet
        self._stop: Tensor | None = None  # set once any rank has seen a non-finite loss (on the loss's device)
        self._saved: list[tuple[Tensor, Tensor]] = []

    def before_training_exp(self, strategy, **kwargs) -> None:
        """Start the experience with no pending checks."""
        self._reset()

    def before_backward(self, strategy, **kwargs) -> None:
        """Check the loss (on CPU at once; on a device, every ``check_every`` steps)."""
        loss = strategy.loss.detach()
        where = (getattr(strategy.experience, "current_experience", "?"), strategy.clock.train_exp_epochs,
                 strategy.clock.train_epoch_iterations)
        if self.check_every is None and loss.device.type == "cpu":
            value = float(loss)
            bad = not math.isfinite(value)
            if is_distributed():  # every rank stops at this step, not only the one that saw it
                bad = bool(any_rank(torch.tensor([float(bad)])))
            if bad:
                raise FloatingPointError(self._message(value, where))
            return
        flag = any_rank((~torch.isfinite(loss)).any().to(torch.float32).reshape(1))
        self._stop = flag if self._stop is None else torch.maximum(self._stop, flag)
        self._pending.append((loss, flag, where))
        if len(self._pending) >= (self.check_every or DEFAULT_CHECK_EVERY):
            self._read()

    def before_update(self, strategy, **kwargs) -> None:
        """Keep the parameters, so a step with a non-finite loss can be undone."""
        if self._stop is not None:
            self._saved = [(p, p.detach().clone()) for g in strategy.optimizer.param_groups for p in g["params"]]

    @torch.no_grad()
    def after_update(self, strategy, **kwargs) -> None:
        """Undo the step if any rank saw a non-finite loss."""
        if self._stop is not None and self._saved:
            stop = self._stop.reshape(()).bool()
            for p, before in self._saved:
                p.copy_(torch.where(stop, before, p))
        self._saved = []

    def after_training_epoch(self, strategy, **kwargs) -> None:
        """Read the pending checks at the end of every epoch."""
        self._read()

    def _read(self) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        flags = torch.cat([flag for _, flag, _ in pending]).cpu()  # the one wait for the device
        if not bool(flags.any()):
            return
        loss, _, where = pending[int(torch.nonzero(flags)[0])]
        raise FloatingPointError(self._message(float(loss), where))

    @staticmethod
    def _message(value: float, where: tuple) -> str:
        what = f"loss is {value}" if not math.isfinite(value) else "loss is not finite on another rank"
        exp, epoch, iteration = where
        return (f"{what} at experience {exp}, epoch {epoch}, iteration {iteration}: training stopped. Lower the "
                "optimizer's learning rate or check the inputs and the criterion for NaNs; finished experiences' "
                "results are kept.")
