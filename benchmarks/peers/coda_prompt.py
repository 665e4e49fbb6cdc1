"""CODA-Prompt (Smith et al., CVPR 2023): an Avalanche strategy on any timm ViT, prefix-tuned (benchmarks.peers.prefix_vit).

Mechanism, from GT-RIPL/CODA-Prompt (``models/zoo.py`` ``CodaPrompt``, ``learners/prompt.py``), which
LAMDA-PILOT and the SD-LoRA authors' code copy unchanged (mammoth ports it too):

- Every prompted layer (0-4) has a pool of M = 100 components: prompts P_m ``[L=8, D]``, keys K_m and
  attention vectors A_m ``[d]`` (d = query width). The prompt for query q is ``sum_m alpha_m P_m`` with
  ``alpha_m = cos(q * A_m, K_m)`` (elementwise product, then cosine; ``CodaPrompt.forward``); its first L/2
  tokens are prefix keys, the last L/2 prefix values (``Ek = P_[:, :i]``, ``Ev = P_[:, i:]``, i = L/2).
- The pool is divided evenly over the tasks: task t owns components ``[t*pt, (t+1)*pt)`` with
  ``pt = int(pool / n_tasks)`` (floor: with pool % tasks != 0 the last components are never used).
  Training uses components of tasks 0..t with the old ones detached (frozen), evaluation uses all of them.
  Here each task's components are their own tensors, frozen after the task (``requires_grad=False``, out of
  the optimizer), so they stay bit-identical.
- New components are drawn from a standard normal, made orthogonal to all earlier ones and normalised
  (``gram_schmidt``, called per task by ``process_task_count``: "in the spirit of continual learning"),
  separately for P (flattened over L*D), K and A. The reference subtracts the projection on each old vector
  one at a time, which is exactly orthogonal only while the old vectors are mutually orthogonal; after
  training they are not, so here the new vectors are orthogonalised against an orthonormal basis of the old
  ones (QR in float64) - the same intent, exact to rounding.
- Orthogonality penalty ``mu * mean((X X^T - I)^2)`` on K, A and flattened P of the training-time set: weight
  0 in the current code (``experiments/*.sh``: ``--prompt_param 100 8 0.0``, "with updated code, now can be 0").
- Head: one linear layer on the prompted [CLS] pre-logits (``ViTZoo.last``); training sets old logits to -inf
  and drops later ones (``learners/prompt.py update_model``), the optimizer is re-created per task
  (``learners/default.py``, ``reset_optimizer``): old rows never move, as in
  :class:`~avalanche_sdlora.head.FrozenPastHead`. Evaluation scores seen classes (``[:, :valid_out_dim]``).
- Recipe: Adam (beta1 = momentum 0.9), lr 1e-3, no weight decay, cosine schedule per epoch
  ``lr * cos(99 pi e / (200 (K - 1)))`` (``utils/schedulers.py CosineSchedule``; at K = 1 epoch, where that
  divides by zero, the rate stays constant), ``configs/cifar-100_prompt.yaml``. ``schedule="cosine-steps"`` follows
  the same curve per iteration (:mod:`benchmarks.peers.step_schedule`), the tuned protocol's form at 3 epochs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from avalanche.training.plugins import LRSchedulerPlugin
from avalanche.training.templates import SupervisedTemplate
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from avalanche_sdlora.head import FrozenPastHead
from .prefix_vit import PrefixViT, PromptStrategy, make_optimizer, prompt_backbone
from .step_schedule import StepSchedulePlugin, coda_curve

__all__ = ["ComponentPool", "CodaPromptViT", "CODAPrompt", "coda_cosine_factor", "build_strategy", "stored_params",
           "REFERENCE_HPARAMS", "INFERENCE_FORWARD_PASSES", "OPTIONS"]

_CODA = "GT-RIPL/CODA-Prompt"
REFERENCE_HPARAMS: dict[str, tuple[object, str]] = {
    "optimizer": ("adam", _CODA + " configs/cifar-100_prompt.yaml"),
    "lr": (1e-3, _CODA + " configs/cifar-100_prompt.yaml (also imnet-r_prompt.yaml, PILOT, mammoth)"),
    "betas": ((0.9, 0.999), _CODA + " learners/prompt.py init_optimizer: betas=(momentum 0.9, 0.999)"),
    "weight_decay": (0.0, _CODA + " configs/cifar-100_prompt.yaml"),
    "schedule": ("cosine", _CODA + " utils/schedulers.py CosineSchedule, stepped per epoch"),
    "batch_size": (128, _CODA + " configs/cifar-100_prompt.yaml (the harness's own batch size is used)"),
    "epochs": (20, _CODA + " configs/cifar-100_prompt.yaml schedule (SD-LoRA authors' exps/coda_prompt.json: 10; "
               "the harness's own epochs are used)"),
    "reinit_optimizer": (True, _CODA + " learners/default.py reset_optimizer"),
    "pool_size": (100, _CODA + " experiments/cifar-100.sh --prompt_param 100 8 0.0"),
    "prompt_length": (8, _CODA + " experiments/cifar-100.sh (4 prefix keys + 4 prefix values)"),
    "layers": ((0, 1, 2, 3, 4), _CODA + " models/zoo.py CodaPrompt._init_smart e_layers"),
    "ortho_mu": (0.0, _CODA + " experiments/cifar-100.sh (third prompt_param)"),
    "components_per_task": ("floor(pool_size / n_tasks)", _CODA + " models/zoo.py pt = int(e_pool_size / n_tasks)"),
    "component_init": ("randn, Gram-Schmidt against earlier components, unit norm",
                       _CODA + " models/zoo.py gram_schmidt / process_task_count"),
    "query": ("frozen ViT [CLS] after the final norm", _CODA + " models/zoo.py ViTZoo.forward q = feat(x)[:, 0]"),
    "train_mask": (True, _CODA + " learners/prompt.py update_model: old logits -inf, later ones sliced off"),
}
INFERENCE_FORWARD_PASSES = 2  # query pass + prompted pass


@torch.no_grad()
def orthonormal_new(old: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` unit vectors ``[n, dim]`` drawn from N(0, I), orthogonal to the rows of ``old`` and to each other."""
    dim = old.shape[1]
    if old.shape[0] + n > dim:
        raise ValueError(f"cannot make {old.shape[0] + n} components orthogonal in {dim} dimensions; "
                         f"pass a smaller pool_size (at most {dim})")
    v = torch.randn(n, dim, generator=generator, dtype=torch.float64)
    if old.shape[0]:
        basis, _ = torch.linalg.qr(old.double().T.cpu())  # [dim, n_old], orthonormal columns spanning old
        v = v - (v @ basis) @ basis.T
        v = v - (v @ basis) @ basis.T  # second pass: orthogonal to rounding even for ill-conditioned old sets
    q, r = torch.linalg.qr(v.T)  # Gram-Schmidt among the new ones; sign fixed so q_i follows v_i
    sign = torch.sign(torch.diagonal(r))
    q = q * torch.where(sign == 0, torch.ones_like(sign), sign)
    return q.T.to(old.dtype)


class ComponentPool(nn.Module):
    """One prompted layer's components: per task a frozen-after-training block of P, K and A."""

    def __init__(self, length: int, prompt_dim: int, key_dim: int) -> None:
        super().__init__()
        self.length, self.prompt_dim, self.key_dim = length, prompt_dim, key_dim
        self.P, self.K, self.A = nn.ParameterList(), nn.ParameterList(), nn.ParameterList()

    def add_task(self, n: int, device: torch.device | str = "cpu") -> None:
        """Freeze every existing block; add ``n`` components orthogonal to all earlier ones (P, K, A separately)."""
        for plist, width in ((self.P, self.length * self.prompt_dim), (self.K, self.key_dim), (self.A, self.key_dim)):
            old = torch.cat([p.detach().reshape(p.shape[0], -1) for p in plist]) if len(plist) else \
                torch.zeros(0, width)
            for p in plist:
                p.requires_grad_(False)
            new = orthonormal_new(old.cpu().float(), n).to(device)
            plist.append(nn.Parameter(new.reshape(n, self.length, self.prompt_dim) if plist is self.P else new))

    def freeze(self) -> None:
        for p in [*self.P, *self.K, *self.A]:
            p.requires_grad_(False)

    def prompt(self, q: Tensor) -> tuple[Tensor, Tensor]:
        """(prefix keys, prefix values) ``[B, L/2, D]`` of ``sum_m cos(q * A_m, K_m) P_m``."""
        P, K, A = torch.cat(list(self.P)), torch.cat(list(self.K)), torch.cat(list(self.A))
        alpha = (F.normalize(q[:, None, :] * A[None], dim=2) * F.normalize(K, dim=1)[None]).sum(-1)  # [B, M]
        p = torch.einsum("bm,mld->bld", alpha, P)
        half = self.length // 2
        return p[:, :half], p[:, half:]

    def ortho_penalty(self) -> Tensor:
        """CODA's ``mean((X X^T - I)^2)`` summed over K, A and flattened P (all components in use)."""
        total = 0.0
        for plist in (self.K, self.A, self.P):
            x = torch.cat([p.reshape(p.shape[0], -1) for p in plist])
            total = total + ((x @ x.T - torch.eye(x.shape[0], device=x.device)) ** 2).mean()
        return total

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A checkpoint may hold more task blocks than this fresh pool: create them (frozen) before copying.
        for name in ("P", "K", "A"):
            plist = getattr(self, name)
            while f"{prefix}{name}.{len(plist)}" in state_dict:
                src = state_dict[f"{prefix}{name}.{len(plist)}"]
                plist.append(nn.Parameter(torch.zeros_like(src), requires_grad=False))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class CodaPromptViT(nn.Module):
    """Frozen ViT + per-layer component pools + growing head; ``forward(x) -> logits``."""

    def __init__(self, backbone: VisionTransformer, *, n_tasks: int, pool_size: int = 100, prompt_length: int = 8,
                 layers: Sequence[int] = (0, 1, 2, 3, 4), name: str = "backbone") -> None:
        super().__init__()
        if not (isinstance(prompt_length, int) and prompt_length >= 2 and prompt_length % 2 == 0):
            raise ValueError(f"prompt_length must be an even integer >= 2 (half keys, half values), "
                             f"got {prompt_length!r}")
        if not (isinstance(n_tasks, int) and n_tasks >= 1):
            raise ValueError(f"n_tasks must be a positive integer, got {n_tasks!r}")
        if not (isinstance(pool_size, int) and pool_size >= n_tasks):
            raise ValueError(f"pool_size={pool_size!r} gives no component to each of {n_tasks} tasks; "
                             f"pass pool_size >= n_experiences")
        self.vit = PrefixViT(backbone, layers, name=name)
        self.n_tasks, self.pool_size = n_tasks, pool_size
        self.per_task = pool_size // n_tasks
        key_dim = self.vit.query_dim
        if pool_size > min(key_dim, prompt_length * self.vit.prefix_dim):
            raise ValueError(f"pool_size={pool_size} components cannot be orthogonal in {key_dim} key dimensions of "
                             f"'{name}'; pass pool_size <= {key_dim}")
        self.pools = nn.ModuleList(ComponentPool(prompt_length, self.vit.prefix_dim, key_dim) for _ in self.vit.layers)
        self.head = FrozenPastHead(key_dim)
        self.register_buffer("task", torch.tensor(-1))

    # ------------------------------------------------------------------ task lifecycle (PromptTaskPlugin)
    def start_task(self) -> None:
        t = int(self.task) + 1
        if t >= self.n_tasks:
            raise ValueError(f"task {t} exceeds n_tasks={self.n_tasks} the pool was divided over; build with "
                             "n_experiences equal to the benchmark's")
        device = self.task.device  # the model may already sit on an accelerator (Avalanche moves it first)
        for pool in self.pools:
            pool.add_task(self.per_task, device=device)
        self.task.fill_(t)

    def end_task(self) -> None:
        for pool in self.pools:
            pool.freeze()

    # ------------------------------------------------------------------ forward
    def _logits(self, x: Tensor) -> Tensor:
        if int(self.task) < 0:
            raise ValueError("no task started; CODA-Prompt has no components yet (train it through its strategy)")
        q = self.vit.query(x)
        prefixes = {layer: pool.prompt(q) for layer, pool in zip(self.vit.layers, self.pools)}
        return self.head(self.vit(x, prefixes))

    def forward_train(self, x: Tensor, with_extra: bool = False) -> tuple[Tensor, Tensor | None]:
        """Logits (old components frozen, current ones trainable) and the unweighted orthogonality penalty."""
        penalty = sum(pool.ortho_penalty() for pool in self.pools) if with_extra else None
        return self._logits(x), penalty

    def forward(self, x: Tensor) -> Tensor:
        return self._logits(x)


class CODAPrompt(PromptStrategy):
    """CODA-Prompt: attention-weighted sums of prompt components; each task adds orthogonal ones."""

    def __init__(self, *, model: CodaPromptViT, ortho_mu: float = 0.0, **kwargs) -> None:
        if not isinstance(model, CodaPromptViT):
            raise TypeError(f"CODAPrompt needs a CodaPromptViT, got {type(model).__name__}")
        super().__init__(model=model, extra_loss_weight=ortho_mu, **kwargs)


def coda_cosine_factor(epochs: int):
    """CODA's per-epoch learning-rate factor ``cos(99 pi e / (200 (K - 1)))`` (1 throughout when K = 1)."""
    if epochs <= 1:
        return lambda e: 1.0
    return lambda e: math.cos(99 * math.pi * e / (200 * (epochs - 1)))


_MODEL_OPTIONS = ("pool_size", "prompt_length", "layers")
_STRATEGY_OPTIONS = ("ortho_mu", "schedule", "clip_grad")
OPTIONS = _MODEL_OPTIONS + _STRATEGY_OPTIONS  # the keywords build_strategy takes beside the common ones


def build_strategy(*, model_name: str, checkpoint: str | None, img_size: int, num_classes: int, n_experiences: int,
                   epochs: int, batch_size: int, eval_batch_size: int, device: str, evaluator, plugins: list,
                   lr: float | None = None, optimizer: str | None = None, **options) -> SupervisedTemplate:
    """CODA-Prompt on ``model_name``: the reference recipe (``REFERENCE_HPARAMS``) unless ``lr``/``optimizer`` given.

    ``options``: model ``pool_size, prompt_length, layers``; strategy ``ortho_mu``, ``schedule`` ('cosine' per
    epoch, 'cosine-steps': the same curve per iteration, or 'constant'), ``clip_grad``. The pool is divided over ``n_experiences`` tasks; the head grows.
    """
    unknown = sorted(set(options) - set(_MODEL_OPTIONS) - set(_STRATEGY_OPTIONS))
    if unknown:
        raise TypeError(f"unknown CODA-Prompt options {unknown}; allowed: {list(_MODEL_OPTIONS + _STRATEGY_OPTIONS)}")
    schedule = options.get("schedule", REFERENCE_HPARAMS["schedule"][0])
    if schedule not in ("cosine", "cosine-steps", "constant"):
        raise ValueError(f"schedule must be 'cosine' (CODA-Prompt's, per epoch), 'cosine-steps' (its curve per "
                         f"iteration) or 'constant', got {schedule!r}")
    if num_classes <= 0:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    backbone = prompt_backbone(model_name, checkpoint=checkpoint, img_size=img_size, method="CODA-Prompt")
    model = CodaPromptViT(backbone, n_tasks=n_experiences, name=model_name,
                          **{k: options[k] for k in _MODEL_OPTIONS if k in options})
    ref = {k: v for k, (v, _) in REFERENCE_HPARAMS.items()}
    opt = make_optimizer(optimizer or ref["optimizer"], ref["lr"] if lr is None else lr, model.parameters())
    own = []
    if schedule == "cosine":
        own.append(LRSchedulerPlugin(torch.optim.lr_scheduler.LambdaLR(opt, coda_cosine_factor(epochs)),
                                     reset_scheduler=True, reset_lr=True, step_granularity="epoch"))
    elif schedule == "cosine-steps":  # the same curve per iteration: its shape kept at a few epochs (issue 30)
        own.append(StepSchedulePlugin(coda_curve, endpoint=True))
    return CODAPrompt(model=model, optimizer=opt, ortho_mu=options.get("ortho_mu", ref["ortho_mu"]),
                      clip_grad=options.get("clip_grad"), train_mb_size=batch_size, train_epochs=epochs,
                      eval_mb_size=eval_batch_size, device=device, evaluator=evaluator,
                      plugins=own + list(plugins or []))


def stored_params(strategy: SupervisedTemplate) -> int:
    """Numbers kept beyond the frozen backbone: every component created so far (P, K, A per layer) and the head."""
    m = strategy.model
    return sum(p.numel() for n, p in m.named_parameters() if not n.startswith("vit."))
