"""CaRE (Lou et al., ICML 2026): bi-level routing over per-task adapters, classifier aligned from class Gaussians.

Every block of a frozen timm ViT gets, beside its MLP (AdaptFormer's parallel placement), a *shared* adapter trained in
every task and a bi-level routed mixture of *task experts*: each task adds an expert adapter, a router over all
experts so far and a latent head over the task's classes, all read from that expert's output CLS token. Level 1 picks
routers: those whose latent heads are the least uncertain (lowest entropy) about the sample; level 2 lets each picked
router keep its top-k experts; the mixture is the experts' outputs weighted by the picked routers' softmaxes, summed.
The classifier is one cosine head per task over the final CLS feature. After a task, every class of the task stores
the mean and covariance of its features; from the second task on, the whole head is refitted on features sampled from
every seen class's Gaussian (classifier alignment, :mod:`benchmarks.peers.classifier_alignment`). Inference with
``T >= 2`` tasks runs ``T + 1`` backbone passes.

Reference: LMMMEng/CaRE@d90800a (built on LAMDA-PILOT); ``backbone/vit_brmoe.py`` (``vb``), ``models/care.py``
(``mc``), ``utils/inc_net.py``, ``backbone/linears.py`` ``TunaLinear``, ``exps/cifar100/care_cifar_inc10.json``
(``cfg``). Facts checked there:

- routing, adapters and the shared adapter's anchor: :mod:`benchmarks.peers.care_routing` (each fact there with
  its line);
- training of task t (``mc:145-180``): task 0: ``tuned_epoch`` epochs, cosine lr to ``min_lr``; later tasks: two
  phases of ``tuned_epoch // 2`` epochs, the first annealing from ``init_lr`` to ``init_lr / 2``, then class
  statistics and classifier alignment, then a fresh optimizer from the lr reached annealing to ``min_lr``, statistics
  and alignment again (``mc:167-180``); optimiser SGD(momentum 0.9, weight decay 5e-4) over the trainable adapter
  parameters and the whole classifier (``mc:183-210``), cosine schedule stepped per epoch (``mc:221,296-297``);
- shared adapter in tasks t >= 1: at the start of each phase its weights are snapshot (``vb:152-163``,
  ``mc:152,174``) and every training forward first sets ``p = 0.999 * snapshot + 0.001 * p`` (``vb:166-174``): an
  anchor that keeps it near the previous tasks' version; the snapshot is never updated and is dropped at evaluation;
- loss (``mc:248-280``): ``CE(20 * cos)`` over the current task's classes (``AngularPenaltySMLoss`` cosface with
  ``m = 0``, ``mc:21-55``, ``cfg`` scale 20, m 0) plus the mean over blocks of ``(CE(20 * latent) + KL(latent / T ||
  cos / T) * T^2) / 2``, the teacher the detached unscaled cosines, ``T = 1`` for blocks 0-5 and 2 from block 6
  (``mc:260-279``);
- classifier (``backbone/linears.py:258-308``): one bias-free ``Linear`` per task, trunc-normal 0.02, cosine of the
  normalised feature and rows, unscaled; all tasks' rows stay trainable (``utils/inc_net.py:124``
  ``freeze_old=False``);
- class statistics (``mc:311-342``; kept by :class:`~benchmarks.peers.classifier_alignment.ClassGaussians`): per
  class of the task, the un-augmented training images (``mode="test"``) through the model in eval mode with the task
  known; ``mean`` and ``torch.cov(features.T) + 1e-4 I`` (``"variance"`` keeps the diagonal); earlier classes keep
  theirs;
- classifier alignment (``mc:345-430``): 30 epochs (``crct_epochs``); each draws ``5 * batch_size`` features per seen
  class from ``MultivariateNormal(mean, cov)`` class by class, shuffles them and steps once per class-sized chunk
  on ``CE(20 * cos)`` over all seen classes; SGD(lr 0.005, momentum 0.9, weight decay 5e-4) over the whole head,
  ``CosineAnnealingLR(T_max=5)`` stepped per epoch (so the lr oscillates with period 10 epochs: kept as written);
- inference (``mc:452-509``): one task: one pass (unknown task, i.e. expert 0); ``T >= 2`` tasks (up to 61, ``mc:455,
  463``): one pass per known task ``i`` gives ``20 * cos``; per sample the pass of lowest softmax entropy is kept;
  one more pass with the task unknown; prediction = argmax of the sum of the two softmaxes.

Our choices: the output at evaluation is ``log`` of the mean of those two softmaxes (same argmax; Avalanche's loss
metric then reads a log-likelihood); ``CE(20 * z)`` is computed by ``F.cross_entropy`` (the reference's cosface sums
``exp`` unshifted: same value while it does not overflow); the snapshot is taken and dropped around each phase
explicitly. Not implemented: the ImageNet-R configs' ``decay`` (``mc:367-370``: it divides by ``task_size = known -
total``, a negative number; the CIFAR-100 config has ``decay: false``) and AMP. Harness mapping: the harness's
``epochs`` is ``tuned_epoch`` (each later phase ``max(epochs // 2, 1)``, so one-epoch tiny runs still train), its
batch size is ``batch_size`` (alignment draws ``5 *`` it per class). The reference's ViT-B/16 has width 768;
ViT-Tiny's 192 changes no mechanism (bottlenecks 64 and 16 fit); the temperature switch at block 6 is the reference's
constant, an option here. timm's ``Block`` adds the module's output through ``ls2``/``drop_path2`` (identities for the
reference's and our ViTs), via :class:`benchmarks.peers.adaptformer.ParallelAdapterMLP`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from avalanche.training.templates import SupervisedTemplate
from timm.layers import trunc_normal_
from torch import Tensor, nn

from avalanche_sdlora import create_backbone

from .adaptformer import ParallelAdapterMLP
from .care_routing import ANCHOR_DECAY, BiLevelMoE, entropy
from .class_incremental import ClassIncrementalTemplate
from .classifier_alignment import ClassGaussians, align_classifier
from .first_session import OPTIMIZERS, first_session_optimizer, place_logits

__all__ = ["TaskCosineHead", "CaREViT", "CaRE", "care_loss", "combine_predictions", "inference_forward_passes",
           "build_strategy", "stored_breakdown", "stored_params", "REFERENCE_HPARAMS", "INFERENCE_FORWARD_PASSES",
           "MAX_ITERATIVE_TASKS"]

_REF = "LMMMEng/CaRE@d90800a"
_VB = _REF + " backbone/vit_brmoe.py"
_MC = _REF + " models/care.py"
_CFG = _REF + " exps/cifar100/care_cifar_inc10.json"
MAX_ITERATIVE_TASKS = 61  # mc:455,463: per-task passes while cur_task <= 60, a single pass beyond

REFERENCE_HPARAMS: dict[str, tuple[object, str]] = {
    "placement": ("every block, parallel to the MLP, reading the stream after attention",
                  _VB + ":472-486,525; utils/inc_net.py:16 ffn_option='parallel'"),
    "adapter": ("scale * up(dropout(relu(down(LayerNorm(x))))), scale a zero-initialised vector",
                _VB + ":13-69 Adapter (adapter_layernorm_option='in')"),
    "shared_bottleneck": (64, _CFG + " adapter_dim; vit_brmoe.py:89"),
    "expert_bottleneck": (16, _CFG + " expert_dim; vit_brmoe.py:98"),
    "adapter_dropout": (0.1, _VB + ":89,98 Adapter(dropout=0.1)"),
    "topk_routers": (2, _CFG + " topk_routers (the current task's router + 1 by lowest latent entropy when known)"),
    "topk_experts": (3, _CFG + " topk_experts; vit_brmoe.py:241-245,288-292 (others set to -100)"),
    "expert_init": ("mean of experts 0..t-2 for t >= 2, fresh for t <= 1", _VB + ":96-115"),
    "router": ("Linear(dim, t + 1) on expert t's CLS token, trunc-normal 0.02, bias 0", _VB + ":122-124,204"),
    "latent_head": ("LayerNorm (weight trunc-normal 0.02) + Linear(dim, task classes)", _VB + ":132-140"),
    "shared_anchor": (ANCHOR_DECAY, _VB + ":166-174 p = 0.999 * snapshot + 0.001 * p each training forward, "
                      "tasks >= 1 (models/care.py:152,174)"),
    "optimizer": ("sgd", _CFG + " optimizer; models/care.py:195-199 SGD(momentum=0.9)"),
    "lr": (0.05, _CFG + " init_lr (ImageNet-R care_inr_inc20.json: 0.02)"),
    "momentum": (0.9, _MC + ":198"),
    "weight_decay": (5e-4, _CFG + " weight_decay"),
    "min_lr": (0.0, _CFG + " min_lr"),
    "schedule": ("cosine per epoch; task 0: epochs to min_lr; later: epochs//2 to lr/2, align, epochs//2 to min_lr",
                 _MC + ":145-180,212-231"),
    "epochs": (60, _CFG + " tuned_epoch (the harness's epochs are used)"),
    "batch_size": (64, _CFG + " batch_size (the harness's batch size is used; ImageNet-R: 32)"),
    "scale": (20.0, _CFG + " scale (cosface s, m = 0; models/care.py:236,405,480)"),
    "self_distill": (True, _MC + ":76 self_dist_loss default; temperatures 1 (blocks 0-5) / 2, models/care.py:271"),
    "distill_switch_block": (6, _MC + ":271 t = 1 if idx < 6 else 2"),
    "classifier": ("one bias-free cosine Linear per task, trunc-normal 0.02, all rows trainable",
                   _REF + " backbone/linears.py:258-308; utils/inc_net.py:121-128"),
    "class_statistics": ("covariance", _CFG + " ca_storage_efficient_method; models/care.py:332-342 (+1e-4 I)"),
    "align_epochs": (30, _CFG + " crct_epochs"),
    "align_lr": (0.005, _CFG + " ca_lr; models/care.py:352 SGD(momentum 0.9, weight_decay 5e-4)"),
    "align_schedule": ("CosineAnnealingLR(T_max=5) per epoch", _MC + ":353"),
    "align_samples_per_class": ("5 * batch_size", _MC + ":363"),
    "align_decay": (False, _CFG + " decay (ImageNet-R configs: true; not implemented, see the module docstring)"),
    "inference": ("T <= 61 tasks: T known-task passes (lowest entropy kept) + 1 unknown-task pass, softmaxes summed",
                  _MC + ":452-509 (iter_pred default True, models/care.py:91-94)"),
}


def inference_forward_passes(n_tasks: int, iterative: bool = True) -> int:
    """Backbone passes per image at inference after ``n_tasks`` tasks: ``T + 1`` for ``2 <= T <= 61``, else one.

    Each known-task pass runs experts ``0..i`` in every block, the unknown-task pass all ``T`` experts.
    """
    if n_tasks < 1:
        raise ValueError(f"n_tasks must be at least 1, got {n_tasks}")
    return n_tasks + 1 if iterative and 2 <= n_tasks <= MAX_ITERATIVE_TASKS else 1


INFERENCE_FORWARD_PASSES: Callable[[int], int] = inference_forward_passes  # after 10 tasks: 11


class TaskCosineHead(nn.Module):
    """The reference's ``TunaLinear``: one bias-free row block per task; unscaled cosines over all seen classes."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.weights = nn.ParameterList()
        self.register_buffer("class_ids", torch.zeros(0, dtype=torch.long))  # in learned order
        self.task_sizes: list[int] = []

    def add_task(self, classes: list[int]) -> None:
        device = self.class_ids.device
        w = torch.empty(len(classes), self.in_features, device=device)
        trunc_normal_(w, std=0.02)
        self.weights.append(nn.Parameter(w))  # earlier rows stay trainable (freeze_old=False)
        self.class_ids = torch.cat([self.class_ids, torch.tensor(classes, dtype=torch.long, device=device)])
        self.task_sizes.append(len(classes))

    def forward(self, f: Tensor) -> Tensor:
        """Cosines ``(B, seen classes)`` in learned order, in float32 even under an evaluation autocast (the
        reference evaluates with autocast off, ``mc:441,478,497``; the entropy picks read these cosines)."""
        with torch.autocast(f.device.type, enabled=False):
            return F.normalize(f.float(), dim=1) @ F.normalize(torch.cat(list(self.weights)), dim=1).T


def care_loss(cosines: Tensor, latents: list[Tensor], targets: Tensor, *, scale: float = 20.0,
              self_distill: bool = True, switch_block: int = 6) -> Tensor:
    """``CE(s cos) + mean_blocks[(CE(s z_b) + T^2 KL(z_b/T || cos/T)) / 2]`` over the current task's classes.

    ``cosines`` (B, task classes) unscaled, ``latents`` the blocks' latent logits, ``targets`` task-local indices.
    """
    main = F.cross_entropy(scale * cosines, targets)
    teacher = cosines.detach()
    aux = []
    for b, z in enumerate(latents):
        term = F.cross_entropy(scale * z, targets)
        if self_distill:
            t = 1.0 if b < switch_block else 2.0
            soft = F.kl_div(F.log_softmax(z / t, dim=1), F.softmax(teacher / t, dim=1), reduction="batchmean") * t * t
            term = (term + soft) / 2
        aux.append(term)
    return main + torch.stack(aux).mean() if aux else main


def combine_predictions(known: Tensor, unknown: Tensor) -> Tensor:
    """``log`` of the mean of the lowest-entropy known-task softmax and the unknown-task softmax.

    ``known`` (T, B, C) and ``unknown`` (B, C) are scaled logits; the argmax is the reference's (``mc:490-505``).
    """
    pick = entropy(known).argmin(0)
    chosen = torch.softmax(known[pick, torch.arange(known.shape[1], device=known.device)], dim=1)
    return torch.log((chosen + torch.softmax(unknown, dim=1)) / 2)


class CaREViT(nn.Module):
    """Frozen timm ViT with a :class:`BiLevelMoE` beside every block's MLP, a per-task cosine head, class Gaussians."""

    def __init__(self, backbone: nn.Module, *, shared_bottleneck: int = 64, expert_bottleneck: int = 16,
                 topk_routers: int = 2, topk_experts: int = 3, dropout: float = 0.1, scale: float = 20.0,
                 class_statistics: str = "covariance", iterative_inference: bool = True) -> None:
        super().__init__()
        blocks = getattr(backbone, "blocks", None)
        if not blocks or not all(isinstance(getattr(b, n, None), nn.Module) for b in blocks for n in ("norm2", "mlp")):
            raise TypeError(f"{type(backbone).__name__} has no .blocks[*].norm2/.mlp; CaRE needs a timm "
                            "VisionTransformer such as 'vit_tiny_patch16_224'")
        self.backbone = backbone
        for p in backbone.parameters():
            p.requires_grad_(False)
        dim = backbone.num_features
        device = next(backbone.parameters()).device
        for block in blocks:
            moe = BiLevelMoE(dim, shared_bottleneck=shared_bottleneck, expert_bottleneck=expert_bottleneck,
                             topk_routers=topk_routers, topk_experts=topk_experts, dropout=dropout).to(device)
            block.mlp = ParallelAdapterMLP(block.norm2, block.mlp, moe)
            block.norm2 = nn.Identity()
        self.head = TaskCosineHead(dim).to(device)
        self.stats = ClassGaussians(dim, class_statistics).to(device)
        self.scale = float(scale)
        self.iterative_inference = iterative_inference

    @property
    def moes(self) -> list[BiLevelMoE]:
        return [b.mlp.adapter for b in self.backbone.blocks]

    @property
    def num_tasks(self) -> int:
        return len(self.head.task_sizes)

    def add_task(self, classes: list[int]) -> None:
        for moe in self.moes:
            moe.add_task(len(classes))
        self.head.add_task(classes)

    def task_classes(self) -> list[list[int]]:
        """The classes of each learned task, in learned order."""
        return [t.tolist() for t in self.head.class_ids.split(self.head.task_sizes)]

    def grow(self, task_classes: list[list[int]], statistics: int) -> None:
        """Give a freshly built model the modules of ``task_classes`` (through :meth:`add_task`) and ``statistics``
        class Gaussians, as placeholders a checkpoint's tensors fill (a resumed run).

        The initialisations draw from the RNGs, which a resumed run has just restored: they draw from a fork, so the
        run continues with exactly the RNG states saved.
        """
        if self.num_tasks or self.stats.means.shape[0]:
            raise RuntimeError(f"CaREViT.grow needs a freshly built model; this one has learned {self.num_tasks} tasks")
        device = self.head.class_ids.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for classes in task_classes:
                self.add_task(classes)
        self.stats.grow(statistics)

    def current_classes(self) -> Tensor:
        return self.head.class_ids[-self.head.task_sizes[-1]:]

    @contextmanager
    def routing(self, task: int | None) -> Iterator[None]:
        """Run with task ``task`` known (None: unknown) in every block."""
        old = [m.route for m in self.moes]
        for m in self.moes:
            m.route = task
        try:
            yield
        finally:
            for m, r in zip(self.moes, old):
                m.route = r

    def features(self, x: Tensor, task: int | None) -> Tensor:
        with self.routing(task):
            return self.backbone(x)

    def latents(self) -> list[Tensor]:
        return [m.latent for m in self.moes]

    def forward(self, x: Tensor) -> Tensor:
        """Training: unscaled cosines with the current task known; evaluation: log-probabilities (see module doc)."""
        if self.training:
            return place_logits(self.head(self.features(x, self.num_tasks - 1)), self.head.class_ids)
        T = self.num_tasks
        unknown = self.scale * self.head(self.features(x, None))
        if inference_forward_passes(T, self.iterative_inference) == 1:
            return place_logits(F.log_softmax(unknown, dim=1), self.head.class_ids)
        known = torch.stack([self.scale * self.head(self.features(x, i)) for i in range(T)])
        return place_logits(combine_predictions(known, unknown), self.head.class_ids)


class CaRE(ClassIncrementalTemplate):
    """CaRE's training schedule: one phase on task 0; two anchored phases with classifier alignment after each later."""

    method_label = "CaRE"

    def __init__(self, *, model: CaREViT, optimizer: torch.optim.Optimizer, lr: float, min_lr: float = 0.0,
                 align_epochs: int = 30, align_lr: float = 0.005, align_samples_per_class: int = 320,
                 self_distill: bool = True, distill_switch_block: int = 6, **kwargs) -> None:
        if not isinstance(model, CaREViT):
            raise TypeError(f"CaRE needs a CaREViT, got {type(model).__name__}")
        super().__init__(model=model, optimizer=optimizer, criterion=nn.CrossEntropyLoss(), **kwargs)
        self.epochs, self.lr, self.min_lr = self.train_epochs, float(lr), float(min_lr)
        self.align_epochs, self.align_lr = int(align_epochs), float(align_lr)
        self.align_samples = int(align_samples_per_class)
        self.self_distill, self.distill_switch_block = self_distill, int(distill_switch_block)
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.phase_lrs: list[list[float]] = []  # lr of every epoch of every phase, for reports and tests
        self.align_losses: list[list[float]] = []

    def model_adaptation(self, model=None):
        model = self.model if model is None else model
        if self.is_training:
            classes = sorted(int(c) for c in self.experience.classes_in_this_experience)
            if not set(classes) <= set(model.head.class_ids.tolist()):
                model.add_task(classes)
        return super().model_adaptation(model)

    # Checkpoints (benchmarks.peer_checkpoint): the model's state dict holds every tensor (shared adapters, each task's
    # expert, router and latent head, the head's rows and class ids, the class Gaussians); the structure says which
    # tasks to grow and how many classes have statistics, and keeps the strategy's records (phase lrs, alignment
    # losses). Optimizer, scheduler and the shared adapters' anchors are rebuilt in every phase.
    def checkpoint_structure(self) -> dict:
        """Each task's classes and the number of class Gaussians (what :meth:`CaREViT.grow` rebuilds), the records."""
        model: CaREViT = self.model
        return {"task_classes": model.task_classes(), "statistics": int(model.stats.means.shape[0]),
                "phase_lrs": self.phase_lrs, "align_losses": self.align_losses}

    def restore_checkpoint(self, tensors: dict[str, Tensor], structure: dict) -> None:
        """Grow the freshly built model to ``structure`` and load ``tensors`` strictly (a missing, extra or
        differently shaped tensor is an error naming it)."""
        model: CaREViT = self.model
        tasks, statistics = structure.get("task_classes"), structure.get("statistics")
        if (not isinstance(tasks, list) or not all(isinstance(t, list) and t and all(isinstance(c, int) for c in t)
                                                   for t in tasks)
                or not isinstance(statistics, int) or statistics < 0):
            raise ValueError(f"CaRE checkpoint structure {structure!r} needs 'task_classes' (a list of each task's "
                             "class ids) and 'statistics' (a non-negative integer); it was not written by CaRE")
        model.grow(tasks, statistics)
        expected = model.state_dict()
        problems = {"missing": sorted(expected.keys() - tensors.keys()),
                    "unexpected": sorted(tensors.keys() - expected.keys()),
                    "of another shape": sorted(k for k in expected.keys() & tensors.keys()
                                               if expected[k].shape != tensors[k].shape)}
        if any(problems.values()):
            said = "; ".join(f"{len(keys)} {what} (e.g. {', '.join(keys[:3])})"
                             for what, keys in problems.items() if keys)
            raise ValueError(f"CaRE checkpoint tensors do not match its structure ({len(tasks)} tasks, {statistics} "
                             f"class Gaussians) on this model: {said}")
        model.load_state_dict(tensors, strict=True)
        if model.task_classes() != tasks:
            raise ValueError(f"CaRE checkpoint's head holds the classes {model.task_classes()} per task, its structure "
                             f"{tasks}")
        self.phase_lrs = [[float(v) for v in phase] for phase in structure.get("phase_lrs", [])]
        self.align_losses = [[float(v) for v in losses] for losses in structure.get("align_losses", [])]

    def criterion(self) -> Tensor:
        if not self.is_training:
            return self._criterion(self.mb_output, self.mb_y)
        cur = self.model.current_classes()
        local = torch.searchsorted(cur, self.mb_y)  # classes are added sorted
        return care_loss(self.mb_output[:, cur], self.model.latents(), local, scale=self.model.scale,
                         self_distill=self.self_distill, switch_block=self.distill_switch_block)

    def _phase(self, epochs: int, lr: float, min_lr: float, anchored: bool, experience, eval_streams, **kwargs) -> None:
        self.make_optimizer()
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=epochs, eta_min=min_lr)
        self.phase_lrs.append([])
        for m in self.model.moes:
            if anchored:
                m.anchor_shared()
            else:
                m.release_anchor()
        self.train_epochs = epochs
        try:
            super()._train_exp(experience, eval_streams, **kwargs)
        finally:
            self.train_epochs = self.epochs
            for m in self.model.moes:
                m.release_anchor()

    def _before_training_epoch(self, **kwargs) -> None:
        self.phase_lrs[-1].append(self.optimizer.param_groups[0]["lr"])
        super()._before_training_epoch(**kwargs)

    def _after_training_epoch(self, **kwargs) -> None:
        self.scheduler.step()
        super()._after_training_epoch(**kwargs)

    def _train_exp(self, experience, eval_streams=None, **kwargs) -> None:
        task = self.model.num_tasks - 1
        if task == 0:
            self._phase(self.epochs, self.lr, self.min_lr, False, experience, eval_streams, **kwargs)
        else:
            half = max(self.epochs // 2, 1)
            self._phase(half, self.lr, self.lr / 2, True, experience, eval_streams, **kwargs)
            reached = self.optimizer.param_groups[0]["lr"]  # mc:171, read before the optimizer is rebuilt
            self._fit_statistics_and_align()
            self._phase(half, reached, self.min_lr, True, experience, eval_streams, **kwargs)
        self._fit_statistics_and_align()

    def _fit_statistics_and_align(self) -> None:
        model = self.model
        features, labels = self.training_features(model.num_tasks - 1)
        model.stats.absorb(features, labels, model.head.class_ids)
        if model.num_tasks > 1:
            was_training = model.training
            model.eval()
            try:
                self.align_losses.append(align_classifier(model.head, model.stats, epochs=self.align_epochs,
                                                          lr=self.align_lr, per_class=self.align_samples,
                                                          scale=model.scale))
            finally:
                model.train(was_training)
        self.make_optimizer()  # the alignment's SGD owned the head for a while; the training optimizer is rebuilt

    @torch.no_grad()
    def training_features(self, task: int, num_workers: int = 0) -> tuple[Tensor, Tensor]:
        """Features of the experience's training images, un-augmented, model in eval mode with ``task`` known."""
        return self.experience_features(lambda x: self.model.features(x, task), num_workers)


def build_strategy(*, model_name: str, checkpoint: str | None, img_size: int, num_classes: int, n_experiences: int,
                   epochs: int, batch_size: int, eval_batch_size: int, device: str, evaluator, plugins: list,
                   lr: float | None = None, optimizer: str | None = None, weight_decay: float = 5e-4,
                   min_lr: float = 0.0, shared_bottleneck: int = 64, expert_bottleneck: int = 16,
                   topk_routers: int = 2, topk_experts: int = 3, scale: float = 20.0, align_epochs: int = 30,
                   align_lr: float = 0.005, align_samples_per_class: int | None = None,
                   class_statistics: str = "covariance", self_distill: bool = True, distill_switch_block: int = 6,
                   iterative_inference: bool = True) -> SupervisedTemplate:
    """CaRE with the reference recipe (``lr``/``optimizer`` None) or the given overrides.

    ``align_samples_per_class`` None draws ``5 * batch_size`` per class (the reference's); ``class_statistics``
    "variance" stores each class's diagonal only (the reference's storage-efficient option); ``iterative_inference``
    False is the reference's ``iter_pred: false`` (one unknown-task pass; the registered forward-pass trait states
    the default).
    """
    optimizer = optimizer or "sgd"
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer '{optimizer}'; choose one of {', '.join(OPTIMIZERS)}")
    per_class = 5 * batch_size if align_samples_per_class is None else int(align_samples_per_class)
    if per_class < 1 or align_epochs < 0:
        raise ValueError(f"align_samples_per_class must be >= 1 and align_epochs >= 0, got {per_class} and "
                         f"{align_epochs}")
    backbone = create_backbone(model_name, checkpoint=checkpoint, img_size=img_size)
    model = CaREViT(backbone, shared_bottleneck=shared_bottleneck, expert_bottleneck=expert_bottleneck,
                    topk_routers=topk_routers, topk_experts=topk_experts, scale=scale,
                    class_statistics=class_statistics, iterative_inference=iterative_inference)
    lr = 0.05 if lr is None else float(lr)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = first_session_optimizer(optimizer, trainable, lr=lr, weight_decay=weight_decay)
    return CaRE(model=model, optimizer=opt, lr=lr, min_lr=min_lr, align_epochs=align_epochs, align_lr=align_lr,
                align_samples_per_class=per_class, self_distill=self_distill,
                distill_switch_block=distill_switch_block, train_mb_size=batch_size, train_epochs=epochs,
                eval_mb_size=eval_batch_size, device=device, evaluator=evaluator, plugins=list(plugins))


def _numel(modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def stored_breakdown(strategy: SupervisedTemplate) -> dict[str, int]:
    """Numbers CaRE keeps beyond the frozen backbone, by part (all blocks together)."""
    model: CaREViT = strategy.model
    moes = model.moes
    return {"shared_adapters": _numel(m.shared for m in moes),
            "experts": _numel(e for m in moes for e in m.experts),
            "routers": _numel(r for m in moes for r in m.routers),
            "latent_heads": _numel(h for m in moes for h in m.latent_heads),
            "classifier": _numel([model.head]),
            "class_means": model.stats.means.numel(),
            "class_covariances": model.stats.covs.numel()}


def stored_params(strategy: SupervisedTemplate) -> int:
    """Shared adapters, per-task experts/routers/latent heads, classifier, class means and covariances."""
    return int(sum(stored_breakdown(strategy).values()))
