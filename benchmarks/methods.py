"""Every compared method as a ready Avalanche strategy, built from one shared configuration.

All methods get the same benchmark, backbone, epochs, batch size, optimizer family and evaluator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from avalanche.core import SupervisedPlugin
from avalanche.models import IncrementalClassifier, NCMClassifier
from avalanche.training import JointTraining, LwF, Naive
from avalanche.training.templates import SupervisedTemplate
from torch import nn

from avalanche_sdlora import SDLoRA, SDLoRAKD, SDLoRARR, create_backbone, sdlora_vit
from avalanche_sdlora.plugins import FiniteLossPlugin

from .ewc import TrainableEWCPlugin

METHODS = ("sdlora", "sdlora-rr", "sdlora-kd", "seq-lora", "ncm", "l2p", "naive", "lwf", "ewc", "joint")
SDLORA_FAMILY = ("sdlora", "sdlora-rr", "sdlora-kd", "seq-lora")  # SDLoRAViT + FrozenPastHead: checkpointable
LORA_BASELINES = ("naive", "lwf", "ewc", "joint")  # Avalanche built-ins on one live LoRA pair


@dataclass
class MethodConfig:
    model: str
    checkpoint: str | None
    img_size: int
    epochs: int
    batch_size: int
    lr: float
    eval_batch_size: int
    device: str
    rank: int = 10
    num_classes: int = 100
    sdlora_kwargs: dict | None = None
    ewc_lambda: float = 100.0
    num_workers: int = 0  # DataLoader worker processes for training and evaluation (0: in the training process)


def add_plain_lora_pair(model, rank: int) -> None:
    """One trainable LoRA pair whose magnitude is fixed at 1: plain LoRA inside an SDLoRAViT."""
    model.add_task(rank=rank, alpha_init=1.0)
    model.magnitudes.alpha.requires_grad_(False)


class SingleLoRAPlugin(SupervisedPlugin):
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


def lora_classifier(cfg: MethodConfig) -> nn.Module:
    """Frozen backbone + one trainable rank-r LoRA pair on q and v (alpha fixed at 1) + IncrementalClassifier."""
    model = sdlora_vit(cfg.model, checkpoint=cfg.checkpoint, img_size=cfg.img_size, rank=cfg.rank)
    add_plain_lora_pair(model, cfg.rank)
    model.head = IncrementalClassifier(model.backbone.num_features, initial_out_features=2)
    return model


class NCMStrategy(SupervisedTemplate):
    """Frozen backbone + cosine nearest-class-mean (Avalanche's NCMClassifier, normalize=True).

    Avalanche has no strategy for a training-free prototype classifier, so training is one
    no-grad pass that averages L2-normalised features per class.
    """

    def __init__(self, *, backbone: nn.Module, **kwargs) -> None:
        model = nn.Sequential(backbone, NCMClassifier(normalize=True))
        for p in model.parameters():
            p.requires_grad_(False)
        super().__init__(model=model, optimizer=torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.0),
                         criterion=nn.CrossEntropyLoss(), **kwargs)

    def make_optimizer(self, **kwargs) -> None:  # nothing to optimise
        pass

    @torch.no_grad()
    def training_epoch(self, **kwargs) -> None:
        backbone, ncm = self.model[0], self.model[1]
        sums: dict[int, torch.Tensor] = {}
        counts: dict[int, int] = {}
        for self.mbatch in self.dataloader:
            self._unpack_minibatch()
            f = nn.functional.normalize(backbone(self.mb_x), dim=1)
            for c in self.mb_y.unique().tolist():
                sel = f[self.mb_y == c]
                sums[c] = sums.get(c, 0) + sel.sum(0)
                counts[c] = counts.get(c, 0) + len(sel)
        # Unit-norm prototypes: Euclidean distance on unit vectors ranks classes as cosine similarity.
        ncm.update_class_means_dict({c: nn.functional.normalize(sums[c] / counts[c], dim=0) for c in sums},
                                    momentum=1.0)

    def train_dataset_adaptation(self, **kwargs) -> None:
        super().train_dataset_adaptation(**kwargs)
        self.adapted_dataset = self.adapted_dataset.eval()  # prototypes from un-augmented images

    def criterion(self):
        return torch.zeros((), device=self.device)


def build_strategy(method: str, cfg: MethodConfig, evaluator, plugins=None):
    """The strategy for ``method`` with the shared configuration ``cfg``."""
    common = dict(train_mb_size=cfg.batch_size, train_epochs=cfg.epochs, eval_mb_size=cfg.eval_batch_size,
                  device=cfg.device, evaluator=evaluator, plugins=list(plugins or []))
    if method in SDLORA_FAMILY:
        kw = dict(cfg.sdlora_kwargs or {})
        model_kw = {k: kw.pop(k) for k in ("normalize_current", "direction_norm", "head_init") if k in kw}
        model = sdlora_vit(cfg.model, checkpoint=cfg.checkpoint, img_size=cfg.img_size, rank=cfg.rank, **model_kw)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9)
        if method == "seq-lora":
            return SDLoRA(model=model, optimizer=opt, growth=SingleLoRAPlugin(cfg.rank), **common)
        cls = {"sdlora": SDLoRA, "sdlora-rr": SDLoRARR, "sdlora-kd": SDLoRAKD}[method]
        if method != "sdlora-kd":
            kw.pop("kd_threshold", None)
        return cls(model=model, optimizer=opt, **kw, **common)
    if method == "l2p":
        from .l2p import build_l2p

        common["plugins"].append(FiniteLossPlugin())
        return build_l2p(model_name=cfg.model, checkpoint=cfg.checkpoint, img_size=cfg.img_size, optimizer_lr=cfg.lr,
                         train_mb_size=cfg.batch_size, train_epochs=cfg.epochs, eval_mb_size=cfg.eval_batch_size,
                         device=cfg.device, evaluator=evaluator, plugins=common["plugins"], num_classes=cfg.num_classes)
    if method == "ncm":
        backbone = create_backbone(cfg.model, checkpoint=cfg.checkpoint, img_size=cfg.img_size)
        return NCMStrategy(backbone=backbone, **{**common, "train_epochs": 1})  # one pass is exact
    # Avalanche's built-ins train the same budget as seq-lora: one rank-r LoRA on q and v (no decoupling)
    # and an IncrementalClassifier, with their own losses over all seen classes. (Full fine-tuning of the
    # backbone at the protocol's lr 0.01 collapsed to 15.7% on the first task: see the issue notes.)
    common["plugins"].append(FiniteLossPlugin())
    model = lora_classifier(cfg)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, momentum=0.9)
    loss = nn.CrossEntropyLoss()
    if method == "naive":
        return Naive(model=model, optimizer=opt, criterion=loss, **common)
    if method == "lwf":
        return LwF(model=model, optimizer=opt, criterion=loss, alpha=1.0, temperature=2.0, **common)
    if method == "ewc":
        # Avalanche's EWC strategy is Naive + EWCPlugin; ours skips the frozen backbone's zero penalty terms.
        # lambda 1000 made SGD (lr 0.01, momentum 0.9) diverge on the penalty itself in experience 3 of
        # cifar100-cpu (penalty 0.1 -> 1e27 in 60 steps, cross-entropy ~1 meanwhile), hence 100 by default.
        common["plugins"].append(TrainableEWCPlugin(ewc_lambda=cfg.ewc_lambda))
        return Naive(model=model, optimizer=opt, criterion=loss, **common)
    if method == "joint":
        return JointTraining(model=model, optimizer=opt, criterion=loss, **common)
    raise ValueError(f"unknown method '{method}'; choose from {', '.join(METHODS)}")
