"""APER (a.k.a. ADAM; Zhou et al., IJCV 2024) and SimpleCIL as Avalanche strategies for any timm ViT.

SimpleCIL: the frozen pretrained ViT; each class is the mean of its training features (un-augmented), and an image
goes to the class of highest cosine similarity. APER: first-session adaptation of the same ViT (AdaptFormer adapter,
:mod:`benchmarks.peers.first_session`), then SimpleCIL on the concatenation ``[f_pretrained(x), f_adapted(x)]`` for every
class, the first experience's included. APER costs two backbone passes per image (adapters off, adapters on: one
copy of the weights serves both), SimpleCIL one.

Reference: LAMDA-PILOT ``models/adam_adapter.py`` (APER's adapter variant, renamed ``aper_adapter`` in
``exps/aper_aperpter.json``), ``models/simplecil.py``, ``utils/inc_net.py`` (``SimpleVitNet``,
``MultiBranchCosineIncrementalNet``), ``backbone/linears.py`` (``CosineLinear``); the same code as
zhoudw-zdw/RevisitingCIL. Facts checked there:

- prototype = ``embedding.mean(0)`` of the *raw* features (no normalisation before averaging) of the class's training
  images loaded with ``mode="test"``; only the current experience's classes are written;
- APER's features are ``torch.cat([pretrained(x), adapted(x)], 1)`` (pretrained branch first) and are not normalised
  per branch: ``CosineLinear`` normalises the whole concatenated vector and each prototype; its ``sigma`` (init 1) is
  never trained after the first session, so logits are plain cosines;
- of APER's PETL variants (adapter, SSF, VPT shallow/deep, finetune) we implement the adapter: it is the variant of
  PILOT's CIFAR config, the module RanPAC's CIFAR config uses too (one implementation serves both), and it fits any
  timm ViT through ``block.mlp`` without rewriting attention or patch embedding (SSF and VPT would).

``normalize_features=True`` averages L2-normalised features instead (and normalises the mean), as the harness's
``ncm`` method does through Avalanche's ``NCMClassifier`` (:mod:`benchmarks.peers.ncm`); the references average raw
features, and so does the ``simplecil`` method.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from avalanche.training.templates import SupervisedTemplate
from torch import Tensor, nn

from avalanche_sdlora import create_backbone

from .adaptformer import ADAPTER_DEFAULTS, adapters_disabled, add_adapters, adapters_of
from .first_session import (FirstSessionModel, FirstSessionStrategy, first_session_optimizer, first_session_plugins,
                            place_logits)

__all__ = ["PrototypeHead", "APERModel", "APER", "SimpleCIL", "build_strategy", "build_simplecil_strategy",
           "stored_params", "REFERENCE_HPARAMS", "INFERENCE_FORWARD_PASSES", "SIMPLECIL_REFERENCE_HPARAMS",
           "SIMPLECIL_INFERENCE_FORWARD_PASSES"]

_APER_CFG = "LAMDA-PILOT exps/aper_aperpter.json (= exps/adam_adapter.json)"
_PROTO = ("mean of raw features of the class's un-augmented training images",
          "LAMDA-PILOT models/simplecil.py and models/adam_adapter.py replace_fc: embedding.mean(0), loader mode='test'")
_COSINE = ("cosine similarity to each prototype (features and prototypes L2-normalised; sigma 1)",
           "LAMDA-PILOT backbone/linears.py CosineLinear")

REFERENCE_HPARAMS: dict[str, tuple[object, str]] = {
    "peft": ("adapter", _APER_CFG + " backbone_type pretrained_vit_b16_224_adapter"),
    "adapter_bottleneck": (64, _APER_CFG + " ffn_num"),
    "adapter_scale": (0.1, "LAMDA-PILOT utils/inc_net.py get_backbone ffn_adapter_scalar='0.1'"),
    "adapter_dropout": (0.1, "LAMDA-PILOT backbone/vit_adapter.py Block: Adapter(dropout=0.1)"),
    "optimizer": ("sgd", _APER_CFG + " optimizer; models/adam_adapter.py: SGD(momentum=0.9) over all parameters"),
    "lr": (0.01, _APER_CFG + " init_lr"),
    "momentum": (0.9, "LAMDA-PILOT models/adam_adapter.py _train"),
    "weight_decay": (5e-4, _APER_CFG + " weight_decay"),
    "schedule": ("cosine annealing per epoch to min_lr",
                 "LAMDA-PILOT models/adam_adapter.py CosineAnnealingLR(T_max=tuned_epoch, eta_min=min_lr)"),
    "min_lr": (0.0, _APER_CFG + " min_lr"),
    "epochs": (20, _APER_CFG + " tuned_epoch; first experience only (the harness's epochs are used)"),
    "batch_size": (48, _APER_CFG + " batch_size (the harness's batch size is used)"),
    "first_session_head": ("cosine, learnable sigma", "LAMDA-PILOT utils/inc_net.py SimpleVitNet + CosineLinear"),
    "features": ("concat[pretrained, adapted], unnormalised per branch",
                 "LAMDA-PILOT utils/inc_net.py MultiBranchCosineIncrementalNet.forward / construct_dual_branch_network"),
    "prototype": _PROTO,
    "classifier": _COSINE,
}
INFERENCE_FORWARD_PASSES = 2  # frozen pretrained pass + adapted pass

SIMPLECIL_REFERENCE_HPARAMS: dict[str, tuple[object, str]] = {
    "backbone": ("frozen pretrained ViT", "LAMDA-PILOT exps/simplecil.json tuned_epoch 0; models/simplecil.py"),
    "epochs": (0, "LAMDA-PILOT exps/simplecil.json tuned_epoch"),
    "prototype": _PROTO,
    "classifier": _COSINE,
}
SIMPLECIL_INFERENCE_FORWARD_PASSES = 1


class PrototypeHead(nn.Module):
    """Cosine classifier over class prototypes; ``absorb`` writes the prototypes of the classes it is shown."""

    def __init__(self, in_features: int, normalize_features: bool = False) -> None:
        super().__init__()
        self.normalize_features = normalize_features
        self.register_buffer("prototypes", torch.zeros(0, in_features))
        self.register_buffer("class_ids", torch.zeros(0, dtype=torch.long))

    @torch.no_grad()
    def absorb(self, features: Tensor, labels: Tensor) -> None:
        if self.normalize_features:
            features = F.normalize(features, dim=1)
        protos = dict(zip(self.class_ids.tolist(), self.prototypes))
        for c in labels.unique().tolist():
            mean = features[labels == c].mean(0)
            protos[int(c)] = F.normalize(mean, dim=0) if self.normalize_features else mean
        ids = sorted(protos)
        self.class_ids = torch.tensor(ids, dtype=torch.long, device=self.class_ids.device)
        self.prototypes = torch.stack([protos[c] for c in ids]).to(self.prototypes)

    def checkpoint_structure(self) -> dict:
        """How many classes it holds: the rows a fresh head needs before its buffers load."""
        return {"classes": int(self.class_ids.numel())}

    def restore_structure(self, structure: dict) -> None:
        """Grow a fresh head to ``structure``'s number of classes (ids and prototypes come with the tensors)."""
        if set(structure) != {"classes"}:
            raise ValueError(f"PrototypeHead: checkpoint structure {sorted(structure)} is not a prototype head's "
                             "(['classes']); it was written by another method")
        n = int(structure["classes"])
        self.class_ids = self.class_ids.new_zeros(n)
        self.prototypes = self.prototypes.new_zeros(n, self.prototypes.shape[1])

    def forward(self, f: Tensor) -> Tensor:
        with torch.autocast(f.device.type, enabled=False):  # cosines in float32 even under an evaluation autocast
            cos = F.normalize(f.float(), dim=1) @ F.normalize(self.prototypes, dim=1).T
        return place_logits(cos, self.class_ids)


class APERModel(FirstSessionModel):
    """Backbone with adapters; the classifier sees ``[pretrained(x), adapted(x)]`` (adapters off, then on)."""

    def features(self, x: Tensor) -> Tensor:
        with adapters_disabled(self.backbone):
            frozen = self.backbone(x)
        return torch.cat([frozen, self.backbone(x)], dim=1)


class APER(FirstSessionStrategy):
    """Adapt on the first experience, then cosine prototypes on the frozen and adapted features."""


class SimpleCIL(FirstSessionStrategy):
    """Cosine prototypes on the frozen pretrained features; nothing trains."""


def build_strategy(*, model_name: str, checkpoint: str | None, img_size: int, num_classes: int, n_experiences: int,
                   epochs: int, batch_size: int, eval_batch_size: int, device: str, evaluator, plugins: list,
                   lr: float | None = None, optimizer: str | None = None, weight_decay: float = 5e-4,
                   min_lr: float = 0.0, adapter_bottleneck: int = ADAPTER_DEFAULTS["bottleneck"],
                   adapter_scale: float = ADAPTER_DEFAULTS["scale"], adapter_dropout: float = ADAPTER_DEFAULTS["dropout"],
                   normalize_features: bool = False) -> SupervisedTemplate:
    """APER (adapter variant) with the reference recipe (``lr``/``optimizer`` None) or the given overrides."""
    backbone = create_backbone(model_name, checkpoint=checkpoint, img_size=img_size)
    add_adapters(backbone, bottleneck=adapter_bottleneck, scale=adapter_scale, dropout=adapter_dropout)
    model = APERModel(backbone, PrototypeHead(2 * backbone.num_features, normalize_features=normalize_features))
    opt = first_session_optimizer(optimizer or "sgd", [p for p in model.parameters() if p.requires_grad],
                                  lr=0.01 if lr is None else lr, weight_decay=weight_decay)
    return APER(model=model, optimizer=opt, train_mb_size=batch_size, train_epochs=epochs,
                eval_mb_size=eval_batch_size, device=device, evaluator=evaluator,
                plugins=list(plugins) + first_session_plugins(opt, epochs, min_lr))


def build_simplecil_strategy(*, model_name: str, checkpoint: str | None, img_size: int, num_classes: int,
                             n_experiences: int, epochs: int, batch_size: int, eval_batch_size: int, device: str,
                             evaluator, plugins: list, lr: float | None = None, optimizer: str | None = None,
                             normalize_features: bool = False) -> SupervisedTemplate:
    """SimpleCIL; ``lr``, ``optimizer`` and ``epochs`` belong to the common signature and are unused (nothing trains)."""
    backbone = create_backbone(model_name, checkpoint=checkpoint, img_size=img_size)
    model = FirstSessionModel(backbone, PrototypeHead(backbone.num_features, normalize_features=normalize_features))
    return SimpleCIL(model=model, train_mb_size=batch_size, train_epochs=1, eval_mb_size=eval_batch_size,
                     device=device, evaluator=evaluator, plugins=list(plugins))


def stored_params(strategy: SupervisedTemplate) -> int:
    """Adapter parameters (APER) + prototypes: what APER and SimpleCIL keep beyond the frozen backbone."""
    model = strategy.model
    adapter = sum(p.numel() for a in adapters_of(model.backbone) for p in a.parameters())
    return int(adapter + model.classifier.prototypes.numel())
