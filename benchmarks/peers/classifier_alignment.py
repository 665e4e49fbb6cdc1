"""Classifier alignment from stored class Gaussians: CaRE's (and SLCA's) refit of a head without old images.

After a task, each of its classes keeps the mean and covariance of its features (``"variance"``: the diagonal only);
the head is then refitted on features drawn from every seen class's Gaussian. Reference: LMMMEng/CaRE@d90800a
``models/care.py`` ``_compute_mean`` (lines 311-342: ``torch.cov(features.T) + 1e-4 I``, float32) and
``classifer_align`` (lines 345-430: per epoch ``per_class`` draws of ``MultivariateNormal(mean, cov)`` class by class,
one shuffle, one SGD step per class-sized chunk on ``CE(scale * head(x))``, SGD(momentum 0.9, weight decay 5e-4),
``CosineAnnealingLR(T_max=5)`` stepped per epoch). The draws use torch's global generator, as the reference's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import MultivariateNormal

__all__ = ["ClassGaussians", "align_classifier", "STATISTICS_RIDGE"]

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
        xs = []
        for mean, cov in zip(self.means, self.covs):
            cov = cov if self.kind == "covariance" else torch.diag(cov)
            xs.append(MultivariateNormal(mean.float(), cov.float()).sample((per_class,)))
        labels = torch.arange(len(xs), device=self.means.device).repeat_interleave(per_class)
        return torch.cat(xs), labels


def align_classifier(head: nn.Module, stats: ClassGaussians, *, epochs: int = 30, lr: float = 0.005,
                     momentum: float = 0.9, weight_decay: float = 5e-4, per_class: int = 320, scale: float = 20.0,
                     t_max: int = 5) -> list[float]:
    """Refit every row of ``head`` on features drawn from the class Gaussians; returns each epoch's mean loss."""
    params = list(head.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t_max)
    n_classes, losses = stats.means.shape[0], []
    for _ in range(epochs):
        x, y = stats.sample(per_class)
        perm = torch.randperm(x.shape[0])
        x, y = x[perm], y[perm.to(y.device)]
        total = 0.0
        for i in range(n_classes):  # the reference's chunks: n_classes steps of per_class draws
            chunk = slice(i * per_class, (i + 1) * per_class)
            loss = F.cross_entropy(scale * head(x[chunk]), y[chunk])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        sched.step()
        losses.append(total / n_classes)
    return losses
