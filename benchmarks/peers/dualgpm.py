"""DualGPM (Lin et al., ICLR 2022; as InfLoRA's ``update_DualGPM`` runs it): the input subspace kept for past tasks.

InfLoRA (:mod:`benchmarks.peers.inflora`) sets each task's frozen input matrix from the layer covariance with this
subspace projected out, then grows the subspace by the task's own covariance. Kept in its own module because it is
bookkeeping of its own (tested directly in tests/test_analytic_peers.py), independent of the ViT branches.

Reference: liangyanshuo/InfLoRA@e08b00e ``methods/inflora.py`` ``update_DualGPM``. Facts checked there: it runs
on the covariance matrices themselves (its "energy" is the sum of squared singular values of ``C``); the threshold
is ``(lame - lamb) * t / total_sessions + lamb`` with ``t`` the 0-based task just trained, so it never reaches
``lame``; the first task keeps ``r = #{cumulative energy ratio < threshold}`` directions (at least one); the kept
space is stored as its own basis ('remove') while that has fewer than half the dimensions, else as the basis of
its complement ('retain'); later tasks add (remove) or take away (retain) the top directions of the projected
covariance until the threshold holds. One deliberate difference: when the first task's kept rank is at least half
the dimension the reference stores the kept basis labelled 'retain' and then fails its own assertion; we store the
complement, as its later 'remove' -> 'retain' switch does.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["DualGPM", "threshold_schedule"]


def threshold_schedule(task: int, n_tasks: int, start: float = 0.95, end: float = 1.0) -> float:
    """The reference's DualGPM energy threshold after 0-based ``task`` of ``n_tasks`` (capped at ``end``)."""
    return min((end - start) * task / n_tasks + start, end)



class DualGPM:
    """Per layer, the input subspace kept for earlier tasks, stored on whichever side is smaller.

    ``kinds[i] == 'remove'``: ``bases[i]`` spans the kept space; ``'retain'``: it spans the complement. All float64.
    """

    def __init__(self) -> None:
        self.bases: list[Tensor] = []
        self.kinds: list[str] = []

    def __len__(self) -> int:
        return len(self.bases)

    def numel(self) -> int:
        return sum(b.numel() for b in self.bases)

    def project(self, layer: int, act: Tensor) -> Tensor:
        """``act`` with the kept space's directions taken out (identity before the first update)."""
        if not self.bases:
            return act
        M = self.bases[layer].to(act)
        return act - M @ (M.T @ act) if self.kinds[layer] == "remove" else M @ (M.T @ act)

    def kept_basis(self, layer: int) -> Tensor:
        """An orthonormal basis of the kept space, whichever side is stored."""
        M = self.bases[layer]
        if self.kinds[layer] == "remove":
            return M
        return torch.linalg.svd(M, full_matrices=True).U[:, M.shape[1]:]

    @torch.no_grad()
    def update(self, acts: list[Tensor], threshold: float) -> None:
        acts = [a.double() for a in acts]
        if not self.bases:
            for act in acts:
                U, S, _ = torch.linalg.svd(act)
                ratio = S**2 / (S**2).sum()
                r = int((torch.cumsum(ratio, 0) < threshold).sum())
                k = max(r, 1)
                if r < act.shape[0] / 2:
                    self.bases.append(U[:, :k]); self.kinds.append("remove")
                else:  # the reference stores U[:, :k] here and then fails its retain assertion; keep the complement
                    self.bases.append(U[:, k:]); self.kinds.append("retain")
        else:
            for i, act in enumerate(acts):
                self._update_layer(i, act, threshold)
        for i, (M, kind) in enumerate(zip(self.bases, self.kinds)):
            if kind == "remove" and M.shape[1] > M.shape[0] / 2:  # store the smaller side
                self.bases[i] = torch.linalg.svd(M, full_matrices=True).U[:, M.shape[1]:]
                self.kinds[i] = "retain"

    def _update_layer(self, i: int, act: Tensor, threshold: float) -> None:
        M, total = self.bases[i], (torch.linalg.svdvals(act) ** 2).sum()
        if self.kinds[i] == "remove":
            U, S, _ = torch.linalg.svd(act - M @ (M.T @ act))
            ratio = S**2 / total
            acc, r = float(((total - (S**2).sum()) / total)), 0
            while r < len(ratio) and acc < threshold:  # add directions until the kept energy reaches the threshold
                acc += float(ratio[r]); r += 1
            if r:
                self.bases[i] = torch.cat([M, U[:, :r]], dim=1)[:, : M.shape[0]]
        else:
            U, S, _ = torch.linalg.svd(M @ (M.T @ act))
            ratio = S**2 / total
            acc, r = float((S**2).sum() / total), 0
            while r < len(ratio) and acc >= 1 - threshold:  # take directions out of the free side until it is small
                acc -= float(ratio[r]); r += 1
            if r:
                rest = M - U[:, :r] @ (U[:, :r].T @ M)
                self.bases[i] = torch.linalg.svd(rest, full_matrices=True).U[:, : M.shape[1] - r]
