"""A growing linear head whose old class rows are frozen parameters, not just masked gradients.

Avalanche's ``IncrementalClassifier`` re-creates one ``nn.Linear`` per expansion, so the rows of
earlier classes stay in the same trainable tensor as the new ones. SD-LoRA trains only the new
rows; keeping each experience's rows in its own parameters lets the optimizer see exactly the
trainable set and leaves old rows bit-identical whatever the optimizer does. Each experience's weight and
bias sit together (``rows.k.weight``, ``rows.k.bias``), so a new experience's parameters come after every
earlier one in ``named_parameters()``: plugins that pair parameters by position (online EWC) see the old
names in the old order.

Like ``IncrementalClassifier`` the head also widens in *eval* adaptation, to every class of the
experience being evaluated, without rows for classes not trained yet: their logits are
``mask_value`` (-1000, Avalanche's), so ``strategy.eval(benchmark.test_stream)`` gets a finite loss.
"""

from __future__ import annotations

import torch
from avalanche.benchmarks.scenarios import CLExperience
from avalanche.models import DynamicModule
from torch import Tensor, nn

from .options import HEAD_INITS


class _Rows(nn.Module):
    """One experience's classifier rows: weight (classes x features) and bias."""

    def __init__(self, weight: Tensor, bias: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)


class FrozenPastHead(DynamicModule):
    """Linear classifier over pre-logits features that grows by the classes of each experience.

    Logits of classes not trained yet are ``mask_value`` so they never win the argmax. During
    training adaptation the rows of earlier experiences are frozen (``requires_grad=False``) and rows
    for the experience's classes are added; eval adaptation only widens the output (``out_features``).
    ``init`` sets the new rows: ``"linear"`` is ``nn.Linear``'s default (as in the authors' code), ``"zeros"``
    starts every new class at logit 0, so the first steps do not push features toward random rows.
    """

    HEAD_INITS = HEAD_INITS

    def __init__(self, in_features: int, mask_value: float = -1000.0, init: str = "linear") -> None:
        super().__init__()
        if init not in self.HEAD_INITS:
            raise ValueError(f"unknown head init '{init}'; choose one of {', '.join(self.HEAD_INITS)}")
        self.in_features = in_features
        self.init = init
        self.mask_value = mask_value
        self.rows = nn.ModuleList()  # one _Rows per experience, in creation order
        self.register_buffer("class_ids", torch.zeros(0, dtype=torch.long))
        self.register_buffer("out_features", torch.zeros((), dtype=torch.long))
        self._width = 0  # mirrors out_features, so forward never reads a device tensor (a GPU synchronisation)

    @property
    def weights(self) -> list[nn.Parameter]:
        """Each experience's weight rows, in creation order."""
        return [r.weight for r in self.rows]

    @property
    def biases(self) -> list[nn.Parameter]:
        """Each experience's biases, in creation order."""
        return [r.bias for r in self.rows]

    @property
    def num_classes(self) -> int:
        """Output width: 1 + the largest class id trained or evaluated so far."""
        return self._width

    @torch.no_grad()
    def widen(self, width: int) -> None:
        """Output at least ``width`` logits; columns without a trained row give ``mask_value``."""
        self._width = max(self._width, int(width))
        self.out_features.fill_(self._width)

    @torch.no_grad()
    def add_classes(self, classes: list[int]) -> None:
        """Add rows for ``classes`` not yet known; freeze every earlier row."""
        known = set(self.class_ids.tolist())
        new = sorted(int(c) for c in classes if int(c) not in known)
        if not new:
            return
        for p in self.rows.parameters():
            p.requires_grad_(False)
        device = self.class_ids.device
        layer = nn.Linear(self.in_features, len(new), device=device)  # nn.Linear's default init
        if self.init == "zeros":
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.rows.append(_Rows(layer.weight.detach().clone(), layer.bias.detach().clone()))
        self.class_ids = torch.cat([self.class_ids, torch.tensor(new, dtype=torch.long, device=device)])
        self.widen(max(new) + 1)

    def adaptation(self, experience: CLExperience) -> None:
        """Training: add rows for the experience's new classes; evaluation: widen to its classes."""
        classes = [int(c) for c in getattr(experience, "classes_in_this_experience", None) or ()]
        if self.training:
            self.add_classes(classes)
        elif classes:
            self.widen(max(classes) + 1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of every class seen so far; classes without rows get ``mask_value``."""
        n = self.num_classes
        out = x.new_full((x.shape[0], n), self.mask_value)
        if len(self.rows) == 0:
            return out
        logits = torch.cat([x @ r.weight.T + r.bias for r in self.rows], dim=1)
        return out.index_copy(1, self.class_ids, logits)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Written before weight and bias sat together (``weights.k``, ``biases.k``): the same tensors, renamed.
        for k in range(len(state_dict)):
            if f"{prefix}weights.{k}" not in state_dict:
                break
            state_dict[f"{prefix}rows.{k}.weight"] = state_dict.pop(f"{prefix}weights.{k}")
            state_dict[f"{prefix}rows.{k}.bias"] = state_dict.pop(f"{prefix}biases.{k}")
        # Re-create one chunk per experience found in the checkpoint before copying values.
        sizes = []
        while f"{prefix}rows.{len(sizes)}.weight" in state_dict:
            sizes.append(state_dict[f"{prefix}rows.{len(sizes)}.weight"].shape[0])
        if sizes and len(self.rows) == 0:
            device = self.class_ids.device
            for k, n in enumerate(sizes):
                rows = _Rows(torch.zeros(n, self.in_features, device=device), torch.zeros(n, device=device))
                rows.requires_grad_(k == len(sizes) - 1)
                self.rows.append(rows)
            self.class_ids = torch.zeros_like(state_dict[prefix + "class_ids"], device=device)
        if prefix + "out_features" not in state_dict and prefix + "class_ids" in state_dict:
            # written before the width was saved: it was 1 + the largest trained class
            ids = state_dict[prefix + "class_ids"]
            state_dict[prefix + "out_features"] = torch.tensor(int(ids.max()) + 1 if ids.numel() else 0)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if prefix + "out_features" in state_dict:  # read from the state (this module may be on 'meta')
            self._width = int(state_dict[prefix + "out_features"])
