"""CaRE's routing (Lou et al., ICML 2026): the adapters and the bi-level routed mixture of task experts in each block.

:mod:`benchmarks.peers.care` builds the model, trains and predicts with these; this module holds what one block
computes, so the routing can be read and tested on its own. Reference: LMMMEng/CaRE@d90800a ``backbone/vit_brmoe.py``
(``vb``), ``models/care.py`` (``mc``), ``utils/inc_net.py``, ``exps/cifar100/care_cifar_inc10.json`` (``cfg``).
Facts checked there:

- placement: every block (``vb:525`` ``adapter_idx = range(depth)``), parallel (``utils/inc_net.py:16``): the module
  reads the residual stream after attention and its output is added beside the MLP's (``vb:472-486``);
- adapter (``vb:13-69``): ``scale * up(dropout_0.1(relu(down(LayerNorm(x)))))`` (layer norm "in" is the default,
  ``vb:19,51``); ``scale`` a learnable per-channel vector initialised to zero (``vb:37``: a fresh adapter is a no-op);
  down and up weights Kaiming-uniform (a = sqrt 5), biases zero (``vb:41-46``); shared bottleneck 64, expert
  bottleneck 16 (``vb:89,98``; ``cfg`` ``adapter_dim``/``expert_dim``);
- per task (``vb:118-144``): a new expert, initialised from the parameter mean of the experts *before the newest
  existing one* (``vb:101-113``: ``range(len(self.adapter) - 1)``, so expert 1 is fresh and expert t >= 2 averages
  experts 0..t-2; kept as written); a router ``Linear(dim, t + 1)`` (trunc-normal 0.02, bias 0, ``vb:122-124``); a
  latent head ``Sequential(LayerNorm, Linear(dim, classes of the task))`` whose *LayerNorm* weight is trunc-normal
  0.02 and bias 0 (``vb:132-140``; kept as written); everything earlier frozen, the shared adapter, the new expert,
  router and latent head trainable (``vb:126-144``);
- known task ``i`` (training, class statistics, inference's per-task passes; ``vb:186-299``): experts 0..i run on the
  block input; router ``j`` scores experts 0..j from expert j's CLS token, padded with -inf to i + 1 (``vb:204-208``);
  task 0 returns expert 0 (``vb:212-213``); else router i plus the ``topk_routers - 1`` routers among 0..i-1 whose
  latent heads have the lowest softmax entropy for the sample (``vb:255-286``; entropy ``-sum p log(p + 1e-10)``);
  each picked router's scores outside its top ``topk_experts`` become -100 (``vb:288-292``), softmax over experts, and
  the experts' outputs are summed with the weights of all picked routers (``vb:294-297``: a sum over routers, not a
  mean); the block's latent logits are latent head i on expert i's CLS token (``vb:232``);
- unknown task (inference's last pass; ``vb:302-385``): all experts, the ``topk_routers`` routers of lowest
  latent entropy among all tasks' (all of them when there are no more), the same expert top-k and sum; one expert:
  itself (``vb:306-308``); the shared adapter's output is added in both cases (``vb:388-406``);
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


__all__ = ["ScaledAdapter", "BiLevelMoE", "entropy", "lowest_entropy", "expert_weights", "ENTROPY_EPS",
           "ANCHOR_DECAY", "MASKED_SCORE"]

ENTROPY_EPS = 1e-10  # vb:259, mc:483
ANCHOR_DECAY = 0.999  # vb:166
MASKED_SCORE = -100.0  # vb:245,292: scores outside a router's top-k experts


def entropy(logits: Tensor) -> Tensor:
    """The reference's ``-sum p log(p + 1e-10)`` of ``softmax(logits)`` over the last dimension."""
    p = torch.softmax(logits, dim=-1)
    return -(p * torch.log(p + ENTROPY_EPS)).sum(-1)


def lowest_entropy(entropies: Tensor, k: int) -> Tensor:
    """Indices ``(k', B)`` of the ``k`` rows of ``entropies`` (R, B) lowest per sample; all R rows when ``k >= R``."""
    R, B = entropies.shape
    if k <= 0:
        return entropies.new_zeros(0, B, dtype=torch.long)
    if k == 1:  # argmin (first minimum), as the reference's topk_routers == 1 branches
        return entropies.argmin(0, keepdim=True)
    if k < R:
        return entropies.topk(k, dim=0, largest=False).indices
    return torch.arange(R, device=entropies.device)[:, None].expand(R, B)


def expert_weights(scores: Tensor, topk: int) -> Tensor:
    """Per-sample expert weights ``(B, E)`` from the picked routers' scores ``(R, B, E)``: top-k, softmax, summed."""
    if topk < scores.shape[-1]:
        keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, scores.topk(topk, dim=-1).indices, True)
        scores = scores.masked_fill(~keep, MASKED_SCORE)
    return torch.softmax(scores, dim=-1).sum(0)


class ScaledAdapter(nn.Module):
    """The reference's ``Adapter``: ``scale * up(dropout(relu(down(LayerNorm(x)))))``, ``scale`` starting at zero."""

    def __init__(self, dim: int, bottleneck: int, dropout: float = 0.1) -> None:
        super().__init__()
        if bottleneck <= 0:
            raise ValueError(f"adapter bottleneck must be a positive integer, got {bottleneck}")
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        self.scale = nn.Parameter(torch.zeros(dim))
        self.dropout = float(dropout)
        for lin in (self.down, self.up):
            nn.init.kaiming_uniform_(lin.weight, a=math.sqrt(5))
            nn.init.zeros_(lin.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = F.dropout(F.relu(self.down(self.norm(x))), p=self.dropout, training=self.training)
        return self.up(h) * self.scale


class BiLevelMoE(nn.Module):
    """One block's shared adapter plus its bi-level routed task experts (the reference's ``MoEAdapter``).

    ``route`` is the known task (an int) or None (unknown: inference's last pass); after a known-task forward
    ``latent`` holds the latent head's logits of that task for the auxiliary loss.
    """

    def __init__(self, dim: int, *, shared_bottleneck: int = 64, expert_bottleneck: int = 16, topk_routers: int = 2,
                 topk_experts: int = 3, dropout: float = 0.1) -> None:
        super().__init__()
        if topk_routers < 1 or topk_experts < 1:
            raise ValueError(f"topk_routers and topk_experts must be at least 1, got {topk_routers} and {topk_experts}")
        self.dim, self.expert_bottleneck, self.dropout = dim, expert_bottleneck, dropout
        self.topk_routers, self.topk_experts = int(topk_routers), int(topk_experts)
        self.shared = ScaledAdapter(dim, shared_bottleneck, dropout)
        self.experts = nn.ModuleList()
        self.routers = nn.ModuleList()
        self.latent_heads = nn.ModuleList()
        self.route: int | None = None
        self.latent: Tensor | None = None
        self.enabled = True  # read by ParallelAdapterMLP
        self.anchor: list[Tensor] | None = None

    @property
    def num_tasks(self) -> int:
        return len(self.experts)

    def add_task(self, n_classes: int) -> None:
        """New expert, router and latent head; everything earlier frozen, the shared adapter trainable."""
        device = self.shared.scale.device
        expert = ScaledAdapter(self.dim, self.expert_bottleneck, self.dropout).to(device)
        if self.num_tasks > 1:  # vb:101-113: the mean of all experts but the newest existing one
            with torch.no_grad():
                for name, p in expert.named_parameters():
                    p.copy_(torch.stack([e.get_parameter(name) for e in self.experts[:-1]]).mean(0))
        self.experts.append(expert)
        router = nn.Linear(self.dim, self.num_tasks).to(device)
        nn.init.trunc_normal_(router.weight, std=0.02)
        nn.init.zeros_(router.bias)
        self.routers.append(router)
        head = nn.Sequential(nn.LayerNorm(self.dim), nn.Linear(self.dim, n_classes)).to(device)
        nn.init.trunc_normal_(head[0].weight, std=0.02)  # the LayerNorm's weight, as vb:139 does
        nn.init.zeros_(head[0].bias)
        self.latent_heads.append(head)
        self.requires_grad_(False)
        for m in (self.shared, expert, router, head):
            m.requires_grad_(True)

    def anchor_shared(self) -> None:
        """Snapshot the shared adapter: each training forward then pulls it 99.9% back to this snapshot."""
        self.anchor = [p.detach().clone() for p in self.shared.parameters()]

    def release_anchor(self) -> None:
        self.anchor = None

    def _experts(self, x: Tensor, n: int) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """Outputs of experts ``0..n-1``, their latent logits and their routers' scores ``(n, B, n)`` (-inf padded)."""
        outs = [self.experts[i](x) for i in range(n)]
        cls = [o[:, 0] for o in outs]
        latents = [self.latent_heads[i](c) for i, c in enumerate(cls)]
        pad = float("-inf")
        scores = torch.stack([F.pad(self.routers[i](c), (0, n - i - 1), value=pad) for i, c in enumerate(cls)])
        return outs, latents, scores

    @staticmethod
    def _mix(outs: list[Tensor], weights: Tensor) -> Tensor:
        return torch.einsum("be,bend->bnd", weights, torch.stack(outs, dim=1))

    def known_task(self, x: Tensor, task: int) -> tuple[Tensor, Tensor]:
        """Mixture with task ``task`` known and that task's latent logits: its router + the least uncertain earlier."""
        outs, latents, scores = self._experts(x, task + 1)
        if task == 0:
            return outs[0], latents[0]
        ent = torch.stack([entropy(z) for z in latents[:task]])  # (task, B)
        picked = lowest_entropy(ent, self.topk_routers - 1)
        earlier = torch.gather(scores[:task], 0, picked[..., None].expand(-1, -1, scores.shape[-1]))
        chosen = torch.cat([earlier, scores[task:task + 1]])
        return self._mix(outs, expert_weights(chosen, self.topk_experts)), latents[task]

    def unknown_task(self, x: Tensor) -> Tensor:
        """Mixture with the task unknown: the ``topk_routers`` least uncertain routers of all tasks."""
        n = self.num_tasks
        outs, latents, scores = self._experts(x, n)
        if n == 1:
            return outs[0]
        picked = lowest_entropy(torch.stack([entropy(z) for z in latents]), self.topk_routers)
        chosen = torch.gather(scores, 0, picked[..., None].expand(-1, -1, n))
        return self._mix(outs, expert_weights(chosen, self.topk_experts))

    def forward(self, x: Tensor) -> Tensor:
        if not self.num_tasks:
            raise RuntimeError("BiLevelMoE has no task yet; call add_task before the first forward")
        if self.training and self.anchor is not None:
            with torch.no_grad():
                for p, a in zip(self.shared.parameters(), self.anchor):
                    p.copy_(ANCHOR_DECAY * a + (1 - ANCHOR_DECAY) * p)
        shared = self.shared(x)
        if self.route is None:
            self.latent = None
            return self.unknown_task(x) + shared
        mixed, self.latent = self.known_task(x, self.route)
        return mixed + shared
