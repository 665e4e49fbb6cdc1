"""First-session adaptation, then a training-free classifier: the skeleton RanPAC, APER and SimpleCIL share.

On the first experience only, a parameter-efficient module (here the AdaptFormer adapter) is trained with a cosine
head by cross-entropy over that experience's classes; then it is frozen and the head is thrown away. After every
experience (the first included), one no-grad pass over the experience's *un-augmented* training images gives the
features from which the method's classifier is fitted (RanPAC: random-projection ridge statistics; APER/SimpleCIL:
class prototypes). Later experiences train nothing.

Reference facts (RanPAC/RanPAC ``RanPAC.py`` ``Learner._train``/``_init_train``/``replace_fc``/``setup_RP`` and
``inc_net.py``; LAMDA-PILOT ``models/adam_adapter.py`` (APER's adapter variant), ``models/simplecil.py``,
``models/ranpac.py``, ``utils/inc_net.py``, ``backbone/linears.py``):

- first-session head: ``CosineLinear``: ``sigma * cos(f, w_c)``, ``w`` U(-1/sqrt d, 1/sqrt d), ``sigma`` learnable, init 1,
  on the adapted backbone's features, one row per first-experience class; the loss is plain cross-entropy over it;
- optimiser ``SGD(all parameters, lr 0.01, momentum 0.9, weight_decay 5e-4)`` with ``CosineAnnealingLR(T_max=
  tuned_epoch, eta_min=min_lr=0)`` stepped per epoch, 20 epochs, batch 48, network in ``train()`` mode (CIFAR configs:
  RanPAC ``args/cifar224_publish.csv``; PILOT ``exps/aper_aperpter.json``, ``exps/ranpac.json``); PILOT's
  ``optimizer="adam"`` option is ``AdamW(lr, weight_decay)``;
- the classifier's pass uses the training split in test mode (``mode="test"``: no augmentation), model in ``eval()``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import LRSchedulerPlugin
from torch import Tensor, nn

from .adaptformer import adapters_of
from .class_incremental import ClassIncrementalTemplate
from .exact_load import load_exactly
from .feature_cache import FrozenFeatureCache

__all__ = ["place_logits", "CosineHead", "FirstSessionModel", "FirstSessionStrategy", "first_session_optimizer",
           "first_session_plugins", "OPTIMIZERS"]

OPTIMIZERS = ("sgd", "adam", "adamw")


def place_logits(logits: Tensor, class_ids: Tensor) -> Tensor:
    """Scores for ``class_ids`` placed in a row as wide as the largest id; classes not held get -inf."""
    width = int(class_ids.max()) + 1 if class_ids.numel() else 0
    out = logits.new_full((logits.shape[0], width), float("-inf"))
    return out.index_copy(1, class_ids, logits)


class CosineHead(nn.Module):
    """The references' first-session ``CosineLinear``: ``sigma * cos(f, w_c)`` for the given classes."""

    def __init__(self, in_features: int, classes: Sequence[int], device: torch.device | str = "cpu") -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(len(classes), in_features, device=device).uniform_(-bound, bound))
        self.sigma = nn.Parameter(torch.ones(1, device=device))
        self.register_buffer("class_ids", torch.tensor(sorted(int(c) for c in classes), dtype=torch.long,
                                                       device=device))

    def forward(self, f: Tensor) -> Tensor:
        cos = nn.functional.normalize(f, dim=1) @ nn.functional.normalize(self.weight, dim=1).T
        return place_logits(self.sigma * cos, self.class_ids)


class FirstSessionModel(nn.Module):
    """A frozen timm ViT (with adapters when the method adapts), a training head while adapting, a fitted classifier.

    ``classifier`` is any module with ``absorb(features, labels)`` (fit from one experience's features),
    ``forward(features) -> logits`` and, for checkpoints, ``checkpoint_structure()`` (JSON: how far it has grown) and
    ``restore_structure(structure)`` (grow a fresh one to it, so its tensors load strictly). ``features`` is what the
    classifier sees (APER overrides it to concatenate the frozen and the adapted model); the training head always sees
    the adapted backbone, as in the references. Once adapted, evaluation features are memoised
    (:mod:`.feature_cache`; ``cache_features=False`` turns it off): the numbers are the same, the passes fewer.
    """

    def __init__(self, backbone: nn.Module, classifier: nn.Module, cache_features: bool = True) -> None:
        super().__init__()
        self.feature_cache = FrozenFeatureCache() if cache_features else None
        self.backbone = backbone
        self.classifier = classifier
        self.head: CosineHead | None = None
        self.adapted = not adapters_of(backbone)  # nothing to adapt: SimpleCIL
        for p in backbone.parameters():
            p.requires_grad_(False)
        for a in adapters_of(backbone):
            a.requires_grad_(True)

    def features(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def forward(self, x: Tensor) -> Tensor:
        if self.head is not None:
            return self.head(self.backbone(x))
        if self.feature_cache is not None and self.adapted:
            return self.classifier(self.feature_cache(self.features, x, self.backbone))
        return self.classifier(self.features(x))

    def start_adaptation(self, classes: Sequence[int]) -> None:
        device = next(self.backbone.parameters()).device
        self.head = CosineHead(self.backbone.num_features, classes, device=device)

    def end_adaptation(self) -> None:
        """Freeze the adapters for good and drop the training head (the references discard it)."""
        for a in adapters_of(self.backbone):
            a.requires_grad_(False)
        self.head = None
        self.adapted = True


class FirstSessionStrategy(ClassIncrementalTemplate):
    """Adapts on the first experience only, then fits ``model.classifier`` from each experience's features."""

    method_label = "SimpleCIL/APER/RanPAC (FirstSessionStrategy)"

    def __init__(self, *, model: FirstSessionModel, optimizer: torch.optim.Optimizer | None = None,
                 criterion: nn.Module | None = None, **kwargs) -> None:
        if not isinstance(model, FirstSessionModel):
            raise TypeError(f"FirstSessionStrategy needs a FirstSessionModel, got {type(model).__name__}")
        if optimizer is None:  # nothing ever trains (SimpleCIL); the template still wants an optimizer object
            optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.0)
        super().__init__(model=model, optimizer=optimizer, criterion=criterion or nn.CrossEntropyLoss(), **kwargs)

    def model_adaptation(self, model=None):
        model = self.model if model is None else model
        if self.is_training and not model.adapted and model.head is None:
            model.start_adaptation(list(self.experience.classes_in_this_experience))
        return super().model_adaptation(model)

    def _train_exp(self, experience, eval_streams=None, **kwargs) -> None:
        if self.model.head is None:  # adapted already (or nothing to adapt): no epoch in this experience
            return
        super()._train_exp(experience, eval_streams, **kwargs)

    def _after_training_exp(self, **kwargs) -> None:
        if self.model.head is not None:
            self.model.end_adaptation()
            self.make_optimizer()
        features, labels = self.feature_pass(**kwargs)
        self.model.classifier.absorb(features, labels)
        super()._after_training_exp(**kwargs)

    # Checkpoints (benchmarks.peer_checkpoint): the model's state dict (backbone, adapters, classifier buffers) plus the
    # JSON that grows a fresh model to it: adaptation ended or not, and the classifier's own growth.
    def checkpoint_structure(self) -> dict:
        """Whether the first session is over and how far the classifier has grown (taken between experiences)."""
        if self.model.head is not None:
            raise RuntimeError("a FirstSessionStrategy is checkpointed between experiences, not while it adapts")
        return {"adapted": self.model.adapted, "classifier": self.model.classifier.checkpoint_structure()}

    def restore_checkpoint(self, tensors: dict[str, Tensor], structure: dict) -> None:
        """End the adaptation where the checkpoint had (adapters frozen for good), grow the classifier, load
        strictly."""
        model = self.model
        if set(structure) != {"adapted", "classifier"}:
            raise ValueError(f"{type(self).__name__}: checkpoint structure {structure} is not a first-session one "
                             "(keys 'adapted', 'classifier'); it was written by another method")
        if structure["adapted"] != model.adapted:
            if not structure["adapted"]:
                raise ValueError(f"{type(self).__name__}: the checkpoint's model still had its first session to "
                                 "adapt, this one has no adapters; it was written by another method")
            model.end_adaptation()
            self.make_optimizer()  # as after the first experience: nothing trains any more
        model.classifier.restore_structure(structure["classifier"])
        load_exactly(model, tensors, type(self).__name__)

    @torch.no_grad()
    def feature_pass(self, num_workers: int = 0, **kwargs) -> tuple[Tensor, Tensor]:
        """Classifier features and labels of the experience's training images, un-augmented, model in eval mode."""
        return self.experience_features(self.model.features, num_workers)


def first_session_optimizer(name: str, params, *, lr: float, weight_decay: float, momentum: float = 0.9
                            ) -> torch.optim.Optimizer:
    """The references' optimisers: SGD with momentum (default) or PILOT's ``adam`` (AdamW); plain Adam on request."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer '{name}'; choose one of {', '.join(OPTIMIZERS)}")


def first_session_plugins(optimizer: torch.optim.Optimizer, epochs: int, min_lr: float) -> list[SupervisedPlugin]:
    """Cosine annealing to ``min_lr`` over the first experience's epochs, stepped per epoch (the references')."""
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(int(epochs), 1), eta_min=min_lr)
    return [LRSchedulerPlugin(sched, first_exp_only=True)]

