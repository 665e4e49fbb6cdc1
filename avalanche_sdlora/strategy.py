"""SD-LoRA strategies: thin ``SupervisedTemplate`` subclasses; behaviour comes from plugins."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

import torch
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins.evaluation import default_evaluator
from avalanche.training.templates import SupervisedTemplate
from torch import nn
from torch.optim import Optimizer

from .model import SDLoRAViT
from .plugins import AdapterGrowthPlugin, DistillationPlugin, FiniteLossPlugin, RankReductionPlugin


class SDLoRA(SupervisedTemplate):
    """Scalable Decoupled LoRA (Wu et al., ICLR 2025), used exactly like ``avalanche.training.Naive``.

    Pass ``model.parameters()`` (or any parameters) as the optimizer's: at each experience the
    optimizer is re-pointed at exactly the trainable set (current pair, magnitudes, new head rows),
    with ``alpha_lr`` for the magnitudes when given. The loss is cross-entropy over the current
    experience's classes only (``current_classes_only``), as in the paper.
    """

    def __init__(self, *, model: SDLoRAViT, optimizer: Optimizer, criterion: nn.Module | None = None,
                 train_mb_size: int = 1, train_epochs: int = 1, eval_mb_size: int | None = None,
                 device: str | torch.device = "cpu", plugins: Sequence[SupervisedPlugin] | None = None,
                 evaluator=default_evaluator, eval_every: int = -1, rank: int | None = None,
                 alpha_init: float = 0.8, reset_alphas: bool = True, alpha_lr: float | None = None,
                 current_classes_only: bool = True, growth: SupervisedPlugin | None = None,
                 **base_kwargs) -> None:
        if not isinstance(model, SDLoRAViT):
            raise TypeError(f"SDLoRA needs a model built by sdlora_vit(...), got {type(model).__name__}")
        for name, value in (("train_mb_size", train_mb_size), ("train_epochs", train_epochs)):
            if int(value) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        self.alpha_lr = alpha_lr
        self.current_classes_only = current_classes_only
        # ``growth`` replaces the adapter-growth plugin (the benchmarks' sequential-LoRA baseline uses it).
        own = [growth or AdapterGrowthPlugin(rank=rank, alpha_init=alpha_init, reset_alphas=reset_alphas),
               FiniteLossPlugin()]
        self._seen_classes: set[int] = set()
        user = list(plugins or [])
        super().__init__(model=model, optimizer=optimizer, criterion=criterion or nn.CrossEntropyLoss(),
                         train_mb_size=train_mb_size, train_epochs=train_epochs, eval_mb_size=eval_mb_size,
                         device=device, plugins=own + self._extra_plugins() + user, evaluator=evaluator,
                         eval_every=eval_every, **base_kwargs)

    def _extra_plugins(self) -> list[SupervisedPlugin]:
        return []

    def _before_training_exp(self, **kwargs) -> None:
        # Class-incremental input is checked before anything changes in the model.
        exp = self.experience
        if len(exp.dataset) == 0:
            raise ValueError(f"experience {exp.current_experience} has no samples; every experience needs training data")
        classes = {int(c) for c in exp.classes_in_this_experience}
        shared = sorted(classes & self._seen_classes)
        if shared:
            raise ValueError(f"experience {exp.current_experience} shares classes {shared[:10]} with earlier experiences; "
                             "SD-LoRA is class-incremental: build the benchmark with nc_benchmark (disjoint classes)")
        super()._before_training_exp(**kwargs)

    def _after_training_exp(self, **kwargs) -> None:
        self._seen_classes |= {int(c) for c in self.experience.classes_in_this_experience}
        super()._after_training_exp(**kwargs)

    def make_optimizer(self, reset_optimizer_state: bool = True, **kwargs) -> None:
        """Point the optimizer at exactly the trainable parameters, with fresh state."""
        alphas = [self.model.magnitudes.alpha] if self.model.magnitudes.alpha.requires_grad else []
        alpha_ids = {id(p) for p in alphas}
        others = [p for p in self.model.parameters() if p.requires_grad and id(p) not in alpha_ids]
        self.optimizer.state = defaultdict(dict)
        self.optimizer.param_groups.clear()
        self.optimizer.add_param_group({"params": others})
        if alphas:
            group = {"params": alphas}
            if self.alpha_lr is not None:
                group["lr"] = self.alpha_lr
            self.optimizer.add_param_group(group)
        self.optimized_param_id = {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def criterion(self):
        out = self.mb_output
        if self.is_training and self.current_classes_only and self.experience is not None:
            keep = torch.zeros(out.shape[1], dtype=torch.bool, device=out.device)
            keep[list(self.experience.classes_in_this_experience)] = True
            out = out.masked_fill(~keep, float("-inf"))
        return self._criterion(out, self.mb_y)


class SDLoRARR(SDLoRA):
    """SD-LoRA-RR: SD-LoRA whose later tasks get lower-rank pairs (``rank_schedule``)."""

    def __init__(self, *, rank_schedule: Mapping[int, int] | None = None, **kwargs) -> None:
        self._rank_schedule = rank_schedule
        super().__init__(**kwargs)

    def _extra_plugins(self) -> list[SupervisedPlugin]:
        return [RankReductionPlugin(self._rank_schedule)]


class SDLoRAKD(SDLoRA):
    """SD-LoRA-KD: a new direction the old ones already span is folded into their magnitudes."""

    def __init__(self, *, kd_threshold: float = 9e-4, **kwargs) -> None:
        self._kd_threshold = kd_threshold
        super().__init__(**kwargs)

    def _extra_plugins(self) -> list[SupervisedPlugin]:
        return [DistillationPlugin(self._kd_threshold)]
