"""RanPAC (McDonnell et al., NeurIPS 2023) as an Avalanche strategy for any timm ViT.

First-session adaptation (AdaptFormer adapter, :mod:`benchmarks.peers.first_session`), then a fixed Gaussian random
projection of the features to ``M`` dimensions with ReLU, ``h = relu(f W_rand)``; after every experience
``G += h^T h`` and ``Q += h^T Y`` over its un-augmented training images, a ridge ``lambda`` is chosen, and the head is
``W = (G + lambda I)^-1 Q``. Logits are ``h W^T``; one backbone pass per image.

Reference: RanPAC/RanPAC ``RanPAC.py`` (``setup_RP``, ``replace_fc``, ``optimise_ridge_parameter``), ``inc_net.py``,
``args/cifar224_publish.csv`` (row 7: adapter + RP, M 10000); LAMDA-PILOT ``models/ranpac.py``, ``exps/ranpac.json``
(same numbers). Facts checked there:

- ``W_rand = torch.randn(in_features, M)``: standard normal entries, no scaling, drawn once after the first session;
- ``Y`` is one-hot over all classes of the benchmark (``target2onehot(labels, total_classnum)``);
- ``lambda`` from ``10.0 ** np.arange(-8, 9)`` (17 values), chosen on the *current experience's* features only: the
  first 80% (``int(N * 0.8)``) of a shuffled loader fit ``(G_fit + lambda I)^-1 Q_fit``, the last 20% score it by MSE
  against one-hot targets over all class columns; argmin (first on ties); then the accumulated ``G`` is solved with it.

Two implementation choices, both exact: the 17 candidate fits are computed from one eigendecomposition of the
smaller Gram matrix (``H H^T`` when the fit slice has fewer rows than ``M``, else ``H^T H``) instead of 17 M x M
solves (same predictions up to rounding; ``tests/test_analytic_peers.py`` checks them against direct solves), and
``G``, ``Q`` and the solve are float64 (the reference's float32 solve is unreliable at lambda near 1e-8).
The projection comes from a seeded ``torch.Generator``, so one integer could regenerate it bit-identically;
:func:`stored_params` counts it anyway, and counts ``G`` (M x M), which the method needs to learn further tasks.

Cost of the M x M solve on the project's 2-core CPU, one thread (``torch.linalg.solve``, ``(G + lambda I) W = Q`` with
100 classes; peak resident memory of the process): M 4000: float32 0.51 s, float64 0.83 s; M 6000: 1.56 s / 2.66 s,
1.0 / 1.4 GB; M 10000: float32 7.0 s, 1.7 GB, float64 12.2 s, 2.8 GB (``G`` alone 0.38 / 0.76 GB). A whole update
after a 1000-image experience (``G``/``Q`` accumulation, lambda selection, solve) took 24-27 s and 3.3 GB at M 10000
in float64 (15-18 s, 2.1 GB in float32; 5.6 s, 1.6 GB at M 5000) with the machine shared (load ~5). One solve per
experience, so the reference's M = 10000 stays the default: about 250 s over ten experiences, against 434-504 s for
a whole ``ncm`` (SimpleCIL) run per seed on the CPU protocol (``results/cifar100-tiny128/cpu-3seeds``).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from avalanche.training.templates import SupervisedTemplate
from torch import Tensor, nn

from avalanche_sdlora import create_backbone

from .adaptformer import ADAPTER_DEFAULTS, add_adapters, adapters_of
from .first_session import (FirstSessionModel, FirstSessionStrategy, first_session_optimizer, first_session_plugins,
                            place_logits)

__all__ = ["RandomProjectionRidge", "RanPAC", "ridge_path_losses", "select_ridge", "build_strategy",
           "stored_params", "stored_breakdown", "REFERENCE_HPARAMS", "INFERENCE_FORWARD_PASSES", "RIDGE_GRID"]

_RP = "RanPAC/RanPAC RanPAC.py"
_CSV = "RanPAC/RanPAC args/cifar224_publish.csv row 7 (= LAMDA-PILOT exps/ranpac.json)"
RIDGE_GRID: tuple[float, ...] = tuple(10.0 ** k for k in range(-8, 9))

REFERENCE_HPARAMS: dict[str, tuple[object, str]] = {
    "peft": ("adapter", _CSV + " convnet_type pretrained_vit_b16_224_in21k_adapter (AdaptFormer, parallel)"),
    "adapter_bottleneck": (64, "RanPAC/RanPAC inc_net.py get_convnet ffn_num=64"),
    "adapter_scale": (0.1, "RanPAC/RanPAC inc_net.py ffn_adapter_scalar='0.1'"),
    "adapter_dropout": (0.1, "LAMDA-PILOT backbone/vit_adapter.py Block: Adapter(dropout=0.1)"),
    "optimizer": ("sgd", _RP + " _train: optim.SGD(momentum=0.9) over all parameters"),
    "lr": (0.01, _CSV + " body_lr"),
    "momentum": (0.9, _RP + " _train"),
    "weight_decay": (5e-4, _CSV + " weight_decay"),
    "schedule": ("cosine annealing per epoch to min_lr", _RP + " _train: CosineAnnealingLR(T_max=tuned_epoch, eta_min=min_lr)"),
    "min_lr": (0.0, _CSV + " min_lr"),
    "epochs": (20, _CSV + " tuned_epoch; first experience only, later ones train nothing (the harness's epochs are used)"),
    "batch_size": (48, _CSV + " batch_size (the harness's batch size is used)"),
    "first_session_head": ("cosine, learnable sigma", "RanPAC/RanPAC inc_net.py CosineLinear, SimpleVitNet.update_fc"),
    "M": (10000, _CSV + " M"),
    "projection": ("N(0, 1) entries, then ReLU", _RP + " setup_RP: torch.randn(in_features, M); replace_fc: relu(f @ W_rand)"),
    "targets": ("one-hot over all classes", _RP + " replace_fc: target2onehot(label_list, total_classnum)"),
    "ridge_grid": (RIDGE_GRID, _RP + " optimise_ridge_parameter: 10.0 ** np.arange(-8, 9)"),
    "ridge_fit_fraction": (0.8, _RP + " optimise_ridge_parameter: first int(N * 0.8) of the current experience fit, "
                                      "the rest validate (MSE); the loader is shuffled"),
    "statistics_images": ("training images, un-augmented", _RP + " incremental_train: train_loader_for_CPs mode='test'"),
}
INFERENCE_FORWARD_PASSES = 1  # one backbone pass; the projection and head are two small matrix products


def ridge_path_losses(H_fit: Tensor, Y_fit: Tensor, H_val: Tensor, Y_val: Tensor,
                      lambdas: Sequence[float]) -> Tensor:
    """Validation MSE of the ridge fit ``(H^T H + l I)^-1 H^T Y`` for every ``l``, from one eigendecomposition.

    With fewer fit rows than features the push-through identity ``(H^T H + l I)^-1 H^T = H^T (H H^T + l I)^-1``
    lets the n x n kernel stand in for the M x M Gram matrix; both give the same predictions.
    """
    if H_fit.shape[0] < H_fit.shape[1]:
        s, U = torch.linalg.eigh(H_fit @ H_fit.T)
        left, right = (H_val @ H_fit.T) @ U, U.T @ Y_fit
    else:
        s, V = torch.linalg.eigh(H_fit.T @ H_fit)
        left, right = H_val @ V, V.T @ (H_fit.T @ Y_fit)
    s = s.clamp_min(0)  # a Gram matrix is PSD; rounding can leave tiny negative eigenvalues
    losses = torch.stack([((left / (s + lam)) @ right - Y_val).pow(2).mean() for lam in lambdas])
    return torch.where(torch.isfinite(losses), losses, torch.full_like(losses, float("inf")))


def select_ridge(H: Tensor, Y: Tensor, lambdas: Sequence[float] = RIDGE_GRID, fit_fraction: float = 0.8,
                 generator: torch.Generator | None = None) -> float:
    """The reference's lambda: fit on a shuffled ``fit_fraction`` of one experience's rows, score on the rest."""
    n = H.shape[0]
    n_fit = int(n * fit_fraction)
    if n_fit < 1 or n_fit >= n:
        raise ValueError(f"ridge selection needs rows on both sides of the split; {n} training images with "
                         f"fit_fraction={fit_fraction} leave {n_fit} to fit and {n - n_fit} to validate")
    perm = torch.randperm(n, generator=generator).to(H.device)
    fit, val = perm[:n_fit], perm[n_fit:]
    losses = ridge_path_losses(H[fit], Y[fit], H[val], Y[val], lambdas)
    return float(lambdas[int(torch.argmin(losses))])  # argmin returns the first minimum, as np.argmin


class RandomProjectionRidge(nn.Module):
    """``h = relu(f W_rand)``; streaming ``G``, ``Q``; head ``W = (G + lambda I)^-1 Q`` refitted after each experience."""

    def __init__(self, in_features: int, num_classes: int, dim: int = 10000, seed: int = 0,
                 lambdas: Sequence[float] = RIDGE_GRID, fit_fraction: float = 0.8,
                 dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        if dim <= 0:
            raise ValueError(f"the random projection needs a positive dimension, got M={dim}")
        self.num_classes, self.dim, self.seed = int(num_classes), int(dim), int(seed)
        self.lambdas, self.fit_fraction, self.dtype = tuple(lambdas), float(fit_fraction), dtype
        g = torch.Generator().manual_seed(self.seed)
        self.register_buffer("projection", torch.randn(in_features, self.dim, generator=g))
        self.register_buffer("G", torch.zeros(self.dim, self.dim, dtype=dtype))
        self.register_buffer("Q", torch.zeros(self.dim, self.num_classes, dtype=dtype))
        self.register_buffer("weight", torch.zeros(0, self.dim))
        self.register_buffer("class_ids", torch.zeros(0, dtype=torch.long))
        self.ridge: float | None = None
        self.ridges: list[float] = []  # lambda chosen after each experience, for reports

    def expand(self, f: Tensor) -> Tensor:
        return F.relu(f.to(self.projection.dtype) @ self.projection)

    def accumulate(self, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Add one batch of statistics; returns its ``(H, Y)`` in the solve's dtype."""
        if labels.numel() and int(labels.max()) >= self.num_classes:
            raise ValueError(f"label {int(labels.max())} is not below num_classes={self.num_classes}; pass "
                             "build_strategy(num_classes=...) covering every class of the benchmark")
        H = self.expand(features).to(self.dtype)
        Y = F.one_hot(labels.long(), self.num_classes).to(self.dtype)
        self.G += H.T @ H
        self.Q += H.T @ Y
        return H, Y

    def solve(self, ridge: float) -> Tensor:
        """``(G + ridge I)^-1 Q`` transposed: one row per class of the benchmark."""
        A = self.G.clone()
        A.diagonal().add_(ridge)
        return torch.linalg.solve(A, self.Q).T

    @torch.no_grad()
    def absorb(self, features: Tensor, labels: Tensor) -> None:
        H, Y = self.accumulate(features, labels)
        g = torch.Generator().manual_seed(self.seed + 1 + len(self.ridges))  # the split of this experience
        self.ridge = select_ridge(H, Y, self.lambdas, self.fit_fraction, generator=g)
        self.ridges.append(self.ridge)
        self.class_ids = torch.unique(torch.cat([self.class_ids, labels.long().to(self.class_ids.device)]))
        self.weight = self.solve(self.ridge)[self.class_ids].to(self.projection.dtype)

    def checkpoint_structure(self) -> dict:
        """The classes held, the lambdas chosen so far (the next experience's split is seeded by their count) and the
        projection's seed (that split's base)."""
        return {"classes": int(self.class_ids.numel()), "ridges": list(self.ridges), "seed": self.seed}

    def restore_structure(self, structure: dict) -> None:
        """Grow a fresh head to ``structure``: head rows for its classes, its lambdas and seed (``G``, ``Q``, the
        projection, the ids and the head come with the tensors)."""
        if set(structure) != {"classes", "ridges", "seed"}:
            raise ValueError(f"RandomProjectionRidge: checkpoint structure {sorted(structure)} is not RanPAC's "
                             "(['classes', 'ridges', 'seed']); it was written by another method")
        n = int(structure["classes"])
        self.class_ids = self.class_ids.new_zeros(n)
        self.weight = self.weight.new_zeros(n, self.dim)
        self.ridges = [float(r) for r in structure["ridges"]]
        self.ridge = self.ridges[-1] if self.ridges else None
        self.seed = int(structure["seed"])

    def forward(self, f: Tensor) -> Tensor:
        # float32 even under an evaluation autocast: the head sums M products, too many for bfloat16
        with torch.autocast(f.device.type, enabled=False):
            return place_logits(self.expand(f.float()) @ self.weight.T, self.class_ids)


# From this M on, a head refit takes seconds (5.6 s at M 5000, 24-27 s at M 10000 on the 2-core CPU: module
# docstring), so each one says so when it starts and how long it took.
ANNOUNCED_M = 4000


class RanPAC(FirstSessionStrategy):
    """First-session adapter, then a random-projection ridge head refitted after every experience.

    ``n_experiences`` (the stream's length) lets the first refit warn when ``M`` exceeds the stream's training
    images and the solves take seconds (``ANNOUNCED_M``): ``G = H^T H`` then has rank at most their number, so the
    extra features cost M x M time and memory for nothing (a tiny run at the reference M = 10000 spent 232 of its
    395 s in these solves).
    """

    def __init__(self, *, n_experiences: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.n_experiences = n_experiences

    def _after_training_exp(self, **kwargs) -> None:
        head: RandomProjectionRidge = self.model.classifier
        images = len(self.experience.dataset)
        if (not head.ridges and self.n_experiences and head.dim >= ANNOUNCED_M
                and head.dim > images * self.n_experiences):
            warnings.warn(f"RanPAC: M = {head.dim} random features for about {images * self.n_experiences} training "
                          f"images ({images} in the first of {self.n_experiences} experiences): G has rank at most "
                          "that, so the M x M solves cost their time for nothing; for a quick run pass a smaller M "
                          f"(--method-option ranpac.M={max(64, images * self.n_experiences)})", stacklevel=2)
        start = time.perf_counter()
        if head.dim >= ANNOUNCED_M:
            print(f"RanPAC: refitting the ridge head after experience {self.experience.current_experience} "
                  f"({head.dim} x {head.dim} solve)...", flush=True)
        super()._after_training_exp(**kwargs)
        if head.dim >= ANNOUNCED_M:
            print(f"RanPAC: head refitted in {time.perf_counter() - start:.1f} s (lambda {head.ridge:g})", flush=True)

    def _before_training_exp(self, **kwargs) -> None:
        n = self.model.classifier.num_classes
        beyond = sorted(int(c) for c in self.experience.classes_in_this_experience if int(c) >= n)
        if beyond:  # checked before any training: the one-hot targets have num_classes columns
            raise ValueError(f"experience {self.experience.current_experience} has classes {beyond[:10]} not below "
                             f"num_classes={n}; pass build_strategy(num_classes=...) covering every class of the benchmark")
        super()._before_training_exp(**kwargs)


def build_strategy(*, model_name: str, checkpoint: str | None, img_size: int, num_classes: int, n_experiences: int,
                   epochs: int, batch_size: int, eval_batch_size: int, device: str, evaluator, plugins: list,
                   lr: float | None = None, optimizer: str | None = None, M: int = 10000,
                   projection_seed: int | None = None, weight_decay: float = 5e-4, min_lr: float = 0.0,
                   adapter_bottleneck: int = ADAPTER_DEFAULTS["bottleneck"],
                   adapter_scale: float = ADAPTER_DEFAULTS["scale"], adapter_dropout: float = ADAPTER_DEFAULTS["dropout"],
                   ridge_fit_fraction: float = 0.8, solve_dtype: str = "float64") -> SupervisedTemplate:
    """RanPAC with the reference recipe (``lr``/``optimizer`` None) or the given overrides.

    ``projection_seed`` None draws the seed from torch's global generator (deterministic under the harness's seed);
    ``solve_dtype`` "float32" halves ``G``'s memory at the reference's precision.
    """
    if solve_dtype not in ("float32", "float64"):
        raise ValueError(f"solve_dtype must be 'float32' or 'float64', got {solve_dtype!r}")
    backbone = create_backbone(model_name, checkpoint=checkpoint, img_size=img_size)
    add_adapters(backbone, bottleneck=adapter_bottleneck, scale=adapter_scale, dropout=adapter_dropout)
    if projection_seed is None:
        projection_seed = int(torch.randint(0, 2**31 - 1, ()).item())
    head = RandomProjectionRidge(backbone.num_features, num_classes, dim=M, seed=projection_seed,
                                 fit_fraction=ridge_fit_fraction, dtype=getattr(torch, solve_dtype))
    model = FirstSessionModel(backbone, head)
    opt = first_session_optimizer(optimizer or "sgd", [p for p in model.parameters() if p.requires_grad],
                                  lr=0.01 if lr is None else lr, weight_decay=weight_decay)
    return RanPAC(model=model, optimizer=opt, train_mb_size=batch_size, train_epochs=epochs,
                  eval_mb_size=eval_batch_size, device=device, evaluator=evaluator,
                  plugins=list(plugins) + first_session_plugins(opt, epochs, min_lr), n_experiences=n_experiences)


def stored_breakdown(strategy: SupervisedTemplate) -> dict[str, int]:
    """Numbers RanPAC holds beyond the frozen backbone, by part (the projection is regenerable from its seed)."""
    model = strategy.model
    head: RandomProjectionRidge = model.classifier
    return {"adapter": sum(p.numel() for a in adapters_of(model.backbone) for p in a.parameters()),
            "projection": head.projection.numel(), "G": head.G.numel(), "Q": head.Q.numel(),
            "head": head.weight.numel()}


def stored_params(strategy: SupervisedTemplate) -> int:
    """Adapter + projection + ``G`` + ``Q`` + ridge head: what RanPAC keeps to predict and to learn on."""
    return int(sum(stored_breakdown(strategy).values()))
