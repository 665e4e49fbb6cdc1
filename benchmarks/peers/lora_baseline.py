"""One live LoRA pair on a frozen ViT: the budget the sequential-LoRA and Avalanche baselines train.

``seq-lora`` (the paper's vanilla-LoRA ablation) is SD-LoRA's model with a single pair whose magnitude is fixed at
1, trained on through every task (:class:`SingleLoRAPlugin`); Avalanche's naive, LwF, EWC and joint training get
the same pair and an ``IncrementalClassifier`` (:func:`lora_classifier`). Full fine-tuning of the backbone at the
protocol's lr 0.01 collapsed to 15.7% on the first task, hence this budget.
"""

from __future__ import annotations

from avalanche.core import SupervisedPlugin
from avalanche.models import IncrementalClassifier
from avalanche.training.templates import SupervisedTemplate
from torch import nn

from avalanche_sdlora import sdlora_vit
from avalanche_sdlora.model import SDLoRAViT


def add_plain_lora_pair(model: SDLoRAViT, rank: int) -> None:
    """One trainable LoRA pair whose magnitude is fixed at 1: plain LoRA inside an SDLoRAViT."""
    model.add_task(rank=rank, alpha_init=1.0)
    model.magnitudes.alpha.requires_grad_(False)


class SingleLoRAPlugin(SupervisedPlugin, supports_distributed=True):
    """The paper's vanilla-LoRA ablation: one pair (alpha fixed at 1) trained on through every task."""

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def before_training_exp(self, strategy, **kwargs) -> None:
        if len(strategy.model.magnitudes) == 0:
            add_plain_lora_pair(strategy.model, self.rank)
        # Every experience, not only when the pair is made: a model restored from a checkpoint has its magnitude
        # re-created by load_state_dict as a new, trainable parameter.
        strategy.model.magnitudes.alpha.requires_grad_(False)
        strategy.make_optimizer(reset_optimizer_state=True)


def lora_classifier(model_name: str, *, checkpoint: str | None, img_size: int, rank: int) -> SDLoRAViT:
    """Frozen backbone + one trainable rank-r LoRA pair on q and v (alpha fixed at 1) + IncrementalClassifier."""
    model = sdlora_vit(model_name, checkpoint=checkpoint, img_size=img_size, rank=rank)
    add_plain_lora_pair(model, rank)
    model.head = IncrementalClassifier(model.backbone.num_features, initial_out_features=2)
    return model


def stored_params(strategy: SupervisedTemplate) -> int:
    """The head and the one live pair (what seq-lora and the Avalanche baselines keep beyond the backbone)."""
    model: nn.Module = strategy.model
    pair = sum(a.lora_A.numel() + a.lora_B.numel() for a in model.adapters if a.lora_A is not None)
    return sum(p.numel() for p in model.head.parameters()) + pair
