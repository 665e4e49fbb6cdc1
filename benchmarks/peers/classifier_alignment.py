"""Classifier alignment from stored class Gaussians: CaRE's, MOS's (and SLCA's) refit of a head without old images.

After a task, each of its classes keeps the mean and covariance of its features (``"variance"``: the diagonal only);
the head is then refitted on features drawn from every seen class's Gaussian. Reference: LMMMEng/CaRE@d90800a
``models/care.py`` ``_compute_mean`` (lines 311-342: ``torch.cov(features.T) + 1e-4 I``, float32) and
``classifer_align`` (lines 345-430: per epoch ``per_class`` draws of ``MultivariateNormal(mean, cov)`` class by class,
one shuffle, one SGD step per class-sized chunk on ``CE(scale * head(x))``, SGD(momentum 0.9, weight decay 5e-4),
``CosineAnnealingLR(T_max=5)`` stepped per epoch). The draws use torch's global generator, as the reference's.
MOS (sun-hailong/AAAI25-MOS ``models/mos.py:247-333``) runs the same loop with its own optimizer, schedule and logits
(the seen classes' head rows, no scale): :func:`fit_on_gaussians` is that loop, once; each method builds its optimizer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import MultivariateNormal

__all__ = ["ClassGaussians", "align_classifier", "fit_on_gaussians", "sample_gaussians", "STATISTICS_RIDGE"]

STATISTICS_RIDGE = 1e-4  # models/care.py:335-336


class ClassGaussians(nn.Module):
    """Mean and covariance (or variance) of each learned class's features, in learned order."""

    def __init__(self, dim: int, kind: str = "covariance") -> None:
        super().__init__()
        if kind not in ("covariance", "variance"):
            raise ValueError(f"class_statistics must be 'covariance' or 'variance', got {kind!r}")
        self.kind = kind
        self.register_buffer("means", torch.zeros(0, dim))
        self.register_buffer("covs", torch.zeros((0, dim, dim) if kind == "covariance" else (0, dim)))

    @torch.no_grad()
    def absorb(self, features: Tensor, labels: Tensor, class_ids: Tensor) -> None:
        """Set the statistics of each class in ``labels`` (its row in ``class_ids``; later rows append)."""
        means, covs = list(self.means), list(self.covs)
        for c in labels.unique().tolist():
            f = features[labels == c].float()
            if f.shape[0] < 2:
                raise ValueError(f"class {c} has {f.shape[0]} training image; CaRE's class covariance needs at least "
                                 "2 images per class")
            cov = torch.cov(f.T) + STATISTICS_RIDGE * torch.eye(f.shape[1], device=f.device)
            row = int((class_ids == c).nonzero()[0])
            stat = cov if self.kind == "covariance" else cov.diagonal().clone()
            if row < len(means):
                means[row], covs[row] = f.mean(0), stat
            elif row == len(means):
                means.append(f.mean(0))
                covs.append(stat)
            else:
                raise ValueError(f"class {c} comes before the statistics of earlier classes were set")
        self.means = torch.stack(means).to(self.means)
        self.covs = torch.stack(covs).to(self.covs)

    def grow(self, n_classes: int) -> None:
        """Zero placeholder statistics for ``n_classes`` classes on an empty instance: the shapes a checkpoint's
        tensors fill when a run resumes (:mod:`benchmarks.peer_checkpoint`)."""
        if self.means.shape[0]:
            raise RuntimeError(f"ClassGaussians.grow needs empty statistics; these hold {self.means.shape[0]} classes")
        if n_classes < 0:
            raise ValueError(f"n_classes must be >= 0, got {n_classes}")
        self.means = self.means.new_zeros(n_classes, self.means.shape[1])
        self.covs = self.covs.new_zeros(n_classes, *self.covs.shape[1:])

    def sample(self, per_class: int) -> tuple[Tensor, Tensor]:
        """``per_class`` draws of each class's Gaussian, class by class (the reference's order); labels = rows."""
        covs = self.covs if self.kind == "covariance" else torch.diag_embed(self.covs)
        return sample_gaussians(self.means, covs, per_class)


def sample_gaussians(means: Tensor, covs: Tensor, per_class: int) -> tuple[Tensor, Tensor]:
    """``per_class`` draws of each ``MultivariateNormal(means[i], covs[i])`` (float32), class by class as both
    references draw them (so the global generator advances as theirs); labels are the rows ``0..n-1``."""
    xs = [MultivariateNormal(mean.float(), cov.float()).sample((per_class,)) for mean, cov in zip(means, covs)]
    labels = torch.arange(len(xs), device=means.device).repeat_interleave(per_class)
    return torch.cat(xs), labels


def fit_on_gaussians(logits: Callable[[Tensor], Tensor], means: Tensor, covs: Tensor, opt: torch.optim.Optimizer,
                     sched: torch.optim.lr_scheduler.LRScheduler, *, epochs: int, per_class: int) -> list[float]:
    """The alignment loop both references run: each epoch draws ``per_class`` features of every class's Gaussian,
    shuffles them once and takes one step of ``CE(logits(x), row)`` per class-sized chunk (as many steps as
    classes), then steps ``sched``. ``logits`` maps features to one score per statistics row. Returns each epoch's
    mean loss."""
    n_classes, losses = means.shape[0], []
    for _ in range(epochs):
        x, y = sample_gaussians(means, covs, per_class)
        perm = torch.randperm(x.shape[0])
        x, y = x[perm], y[perm.to(y.device)]
        total = 0.0
        for i in range(n_classes):
            chunk = slice(i * per_class, (i + 1) * per_class)
            loss = F.cross_entropy(logits(x[chunk]), y[chunk])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        sched.step()
        losses.append(total / max(n_classes, 1))
    return losses


def align_classifier(head: nn.Module, stats: ClassGaussians, *, epochs: int = 30, lr: float = 0.005,
                     momentum: float = 0.9, weight_decay: float = 5e-4, per_class: int = 320, scale: float = 20.0,
                     t_max: int = 5) -> list[float]:
    """Refit every row of ``head`` on features drawn from the class Gaussians (CaRE's recipe); returns each epoch's
    mean loss."""
    params = list(head.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t_max)
    covs = stats.covs if stats.kind == "covariance" else torch.diag_embed(stats.covs)
    return fit_on_gaussians(lambda x: scale * head(x), stats.means, covs, opt, sched, epochs=epochs,
                            per_class=per_class)
