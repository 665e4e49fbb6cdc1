"""MOS (Sun et al., AAAI 2025, "Model Surgery for Pre-Trained Model-Based Class-Incremental Learning") for any timm ViT.

Every task trains one AdaptFormer adapter per block (:mod:`benchmarks.peers.adaptformer`, bottleneck 16) and a linear
head, and the adapter is pulled towards the mean of the earlier tasks' adapters while it trains (adapter merging).
After the task a frozen copy of the adapter is kept, the mean and covariance of every new class's features are
stored, and the head is re-trained on features sampled from the Gaussians of all classes seen (classifier alignment).
At inference every task's adapter gives a feature: cosine prototypes on the first task's adapter name a class, hence a
task; the head on that task's feature names a class, hence a task, and so on until the task repeats (at most 4 rounds,
self-refined retrieval); the answer is the head's softmax plus the prototypes' sharpened softmax.

Reference: sun-hailong/AAAI25-MOS@8d5e07c (``models/mos.py``, ``backbone/vit_mos.py``, ``utils/inc_net.py``,
``backbone/linears.py``, ``exps/mos_cifar.json``); LAMDA-PILOT@2647455 ``models/mos.py`` and ``backbone/vit_mos.py``
are the same code byte for byte. Facts (file:line, in the AAAI25-MOS repository):

- adapter: AdaptFormer, parallel to the MLP, reading the residual stream after attention, no layer norm, ``lora``
  init, scale 0.1, dropout 0.1, bottleneck ``ffn_num`` 16 (``utils/inc_net.py:15-25``, ``backbone/vit_mos.py:31-90,
  155-178, 265-275``): :class:`~benchmarks.peers.adaptformer.BottleneckAdapter` computes exactly this;
- one current adapter set, created once and never re-initialised (``vit_mos.py:263, 265-275``): task t starts from
  where task t-1 left it; after a task a deep copy is stored (``adapter_update``, ``vit_mos.py:310-312``) and the
  running sum ``S_t`` of the stored copies is kept per layer (``sum_adapter_param``, ``vit_mos.py:315-326``);
- merge (``reweight_adapter``, ``vit_mos.py:328-346``): ``theta <- (1 - m) theta + m S_{j-1} / j`` for adapter ``j > 0``
  (``m = adapter_momentum`` 0.1), written into the parameters' ``.data``. It runs (a) after every optimizer step on the
  current adapter with ``j = t`` (``models/mos.py:173-175``), and, as a side effect of ``forward_features``
  (``vit_mos.py:360-379``), (b) before *every block* of every pass, on all layers of the adapter that pass uses:
  the current one (``j = t``) in training and in the statistics pass, stored adapter ``j`` at inference. So one
  training step pulls ``depth + 1`` times, and at inference stored adapter ``j`` drifts in place towards
  ``S_{j-1} / j`` (``depth`` pulls of ``1 - m`` per evaluation batch: after a few batches adapter ``j >= 1`` *is*
  that mean, so the adapter trained on task ``j`` serves only the first batches, then the earlier tasks' mean does).
  ``literal=True`` (default) reproduces all of this; ``literal=False`` keeps only (a), the merge the reference's
  training loop states, and uses the stored adapters as stored (no drift, and evaluation leaves the model unchanged);
- training (``models/mos.py:105-196``): the current adapter's [CLS] feature, head logits of the current task's classes
  only (earlier ones -inf, later ones cut, ``:163-164``), cross-entropy plus ``reg`` (0.1) times ``orth_loss``
  (``:335-355``): ``M = [stored class means; batch features]``, ``CE(M M^T / 0.8, arange)`` (raw features, the batch
  alone on the first task); SGD momentum 0.9, adapters at ``init_lr``, the head at ``0.1 * init_lr``, weight decay on
  both (``:118-140``), cosine annealing to ``min_lr`` per epoch (``:142-150, 183-184``), a fresh optimizer per task;
- head: ``nn.Linear(768, nb_classes)`` over all classes of the benchmark, timm's init (trunc-normal 0.02, zero bias),
  trainable (``vit_mos.py:229, 420, 451-455``; ``trainer.py:61``);
- class statistics after each task, per class of the task (``models/mos.py:198-227``): model in eval mode, the class's
  un-augmented training images in batches of ``3 * batch_size``, features of the current adapter through the training
  path (so, literally, with its pulls), mean and ``torch.cov + 1e-4 I`` (``ca_storage_efficient_method`` covariance;
  the variance and multi-centroid options are not implemented);
- classifier alignment after tasks t >= 1 (``:247-333``): only the head, SGD(lr ``ca_lr`` 0.005, momentum 0.9, the
  config's weight decay), cosine over ``crct_epochs`` 30; each epoch draws ``5 * batch_size`` features per seen class
  from ``MultivariateNormal(mean, cov)``, shuffles them and takes as many minibatches of ``5 * batch_size`` as there are
  seen classes (cross-entropy over the seen classes);
- prototypes (``replace_fc``, ``:51-72``; ``utils/inc_net.py:117-142``; ``backbone/linears.py:35-60``): mean of the
  *first* task's adapter features (``forward_orig``, adapter 0) of each new class's un-augmented training images, in
  a frozen cosine classifier (sigma 1). The backbone is left in train mode by the alignment, so from task 1 on the
  prototypes are computed with adapter dropout active; ``literal=True`` does the same;
- inference (``_eval_cnn``, ``:357-415``): features of every stored adapter (``:371-374``); task of the prototypes'
  class (``:364-366``); then up to ``MAX_ITER = 4`` rounds: head logits of the current task's feature, their class's
  task; stop when it repeats or at round 4, keeping that round's logits (``:379-395``); output
  ``softmax(head) + softmax(prototype cosines * n_tasks)`` (``ensemble``, ``:398-403``).

Deviations (none changes a number): the reference's ``forward_orig`` pass repeats the adapter-0 pass of
``_eval_cnn`` (same adapter, same weights); here one pass serves both, so inference costs one backbone pass per task
learned, ``n`` after ``n`` tasks (the reference: ``n + 1``). The per-layer pulls are applied inside each block's MLP
stand-in, ``i + 1`` before the adapter of block ``i`` runs and the rest after, which is what the reference's
all-layers-before-every-block pulls do to each layer (a layer's pull reads only its own weights); they replace the
tensors' ``.data`` as the reference does, so the backward pass sees the values the forward used. Class ids are
Avalanche's (any order): ``[:total_classes]`` slices become the seen classes. Nothing depends on width or depth;
ViT-Tiny changes nothing but the sizes (width 192: a class covariance has 192^2 numbers; 12 blocks as ViT-B, so the
literal merge pulls as often per step as in the reference). The harness's epochs and batch size are used.

Costs. Inference: ``n`` backbone passes per image after ``n`` tasks (:func:`inference_forward_passes`; 10 after 10
tasks), then at most 4 head evaluations per image. A training step: one pass and its backward through the current
adapter; the literal pulls add ``depth`` element-wise updates of one adapter set per pass (no matrix products). After
each task: one pass per training image of the task for the class statistics and one for the prototypes; from task 1 on
the alignment: ``ca_epochs`` x (seen classes) head-only steps on ``5 * batch_size`` sampled features, and ``ca_epochs``
x (seen classes) Cholesky factorisations of a ``d x d`` covariance to sample them.

Stored state after ``T`` tasks with ``C`` classes, ``L`` blocks, width ``d``, bottleneck ``r`` (adapter ``A = L (2 d r +
r + d)`` numbers; :func:`stored_breakdown`): task adapters ``T A``, their running sums ``T A`` (the reference keeps
every prefix sum; its inference pulls adapter ``j`` towards ``S_{j-1} / j``), the current adapter ``A``, the head
``num_classes (d + 1)``, prototypes ``C d``, class means ``C d``, class covariances ``C d^2``. ViT-Tiny, 10 tasks of
CIFAR-100 (d 192, r 16): A = 76,224; adapters 762,240 + sums 762,240 + current 76,224 + head 19,300 + prototypes
19,200 + means 19,200 + covariances 3,686,400 = 5,344,804. ViT-B/16 (d 768): A = 304,320; covariances 58,982,400
of 65,603,620 in all (float32: 21.4 MB for ViT-Tiny, 262 MB for ViT-B).

Checkpoints (:mod:`benchmarks.peer_checkpoint`): the model's state dict (all of the above, the class-to-task map and
the frozen backbone) and the number of tasks and classes, from which :meth:`MOSModel.grow` rebuilds a fresh model's
slots before the tensors load strictly; 43.6 MB for ViT-Tiny after 10 tasks of CIFAR-100 (24.6 MB after one).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from avalanche.benchmarks.utils.data_loader import SingleDatasetDataLoader, collate_from_data_or_kwargs
from avalanche.training.templates import SupervisedTemplate
from timm.layers import trunc_normal_
from torch import Tensor, nn

from avalanche_sdlora import create_backbone

from .adaptformer import BottleneckAdapter, ParallelAdapterMLP, add_adapters
from .aper import PrototypeHead
from .class_incremental import ClassIncrementalTemplate
from .classifier_alignment import fit_on_gaussians
from .first_session import OPTIMIZERS, place_logits

__all__ = ["TaskAdapterMLP", "MOSModel", "MOS", "orth_loss", "class_statistics", "align_classifier",
           "build_strategy", "stored_params", "stored_breakdown", "inference_forward_passes", "REFERENCE_HPARAMS",
           "INFERENCE_FORWARD_PASSES", "MAX_ITER"]

_MOS = "sun-hailong/AAAI25-MOS"
_M, _V, _CFG = _MOS + " models/mos.py", _MOS + " backbone/vit_mos.py", _MOS + " exps/mos_cifar.json"
MAX_ITER = 4  # models/mos.py:379
ORTH_TEMPERATURE = 0.8  # models/mos.py:346, 352
COV_RIDGE = 1e-4  # models/mos.py:222
HEAD_LR_SCALE = 0.1  # models/mos.py:122

REFERENCE_HPARAMS: dict[str, tuple[object, str]] = {
    "peft": ("adapter (AdaptFormer, parallel, no layer norm, lora init)", _MOS + " utils/inc_net.py:15-25"),
    "adapter_bottleneck": (16, _CFG + ":38 ffn_num"),
    "adapter_scale": (0.1, _MOS + " utils/inc_net.py:21 ffn_adapter_scalar"),
    "adapter_dropout": (0.1, _V + ":269"),
    "adapter_momentum": (0.1, _CFG + ":26"),
    "merge": ("(1 - m) theta + m S_{j-1} / j, after each step and before every block of every pass",
              _V + ":328-346, 360-379; " + _M + ":173-175"),
    "optimizer": ("sgd", _CFG + ":20; " + _M + ":126-129 SGD(momentum=0.9)"),
    "lr": (0.03, _CFG + ":16 init_lr (ImageNet-R exps/mos_inr.json: 0.05)"),
    "head_lr": ("0.1 * lr", _M + ":122"),
    "momentum": (0.9, _M + ":128"),
    "weight_decay": (5e-4, _CFG + ":18 (ImageNet-R: 5e-3)"),
    "schedule": ("cosine annealing per epoch to min_lr, fresh each task", _M + ":108-109, 142-144, 183-184"),
    "min_lr": (0.0, _CFG + ":19"),
    "epochs": (20, _CFG + ":15 tuned_epoch, every task (ImageNet-R: 10; the harness's epochs are used)"),
    "batch_size": (48, _CFG + ":17 (ImageNet-R: 16; the harness's batch size is used)"),
    "reg": (0.1, _CFG + ":25; orth_loss " + _M + ":335-355"),
    "orth_temperature": (ORTH_TEMPERATURE, _M + ":346"),
    "head": ("nn.Linear(d, nb_classes), timm init, trainable", _V + ":229, 420, 451-455"),
    "statistics": ("mean, torch.cov + 1e-4 I per class, eval mode, batch 3 * batch_size", _M + ":198-222"),
    "ca_storage_efficient_method": ("covariance", _CFG + ":31"),
    "ca_epochs": (30, _CFG + ":29 crct_epochs"),
    "ca_lr": (0.005, _CFG + ":30"),
    "ca_samples_per_class": ("5 * batch_size", _M + ":261"),
    "ca_optimizer": ("SGD(ca_lr, momentum 0.9, weight_decay) + cosine over ca_epochs", _M + ":251-254"),
    "prototypes": ("mean of adapter-0 features, cosine, sigma 1", _M + ":51-72; utils/inc_net.py:117-142"),
    "max_iter": (MAX_ITER, _M + ":379"),
    "ensemble": (True, _CFG + ":27; " + _M + ":398-403 softmax(head) + softmax(cosine * n_tasks)"),
}


def inference_forward_passes(n_tasks: int) -> int:
    """Backbone passes per image at inference after ``n_tasks`` tasks: one per stored adapter (reference: ``n + 1``)."""
    return int(n_tasks)


INFERENCE_FORWARD_PASSES = inference_forward_passes  # grows with the tasks: 10 after 10 tasks


class TaskAdapterMLP(ParallelAdapterMLP):
    """``block.mlp`` stand-in with MOS's adapters: the current (trained) one, a frozen copy per finished task, and the
    running sum of the copies (the merge target); ``selected`` picks the adapter a pass uses (None: the current one).

    ``pull_toward = j`` makes a pass apply the reference's in-place pulls towards ``sums[j - 1] / j``: ``index + 1``
    of them before this block's adapter runs, ``depth - index - 1`` after it (the reference pulls every layer before
    every block).
    """

    def __init__(self, norm: nn.Module, mlp: nn.Module, adapter: BottleneckAdapter) -> None:
        super().__init__(norm, mlp, adapter)
        self.stored = nn.ModuleList()
        self.sums = nn.ModuleList()
        self.selected: int | None = None
        self.pull_toward: int | None = None
        self.index, self.depth, self.momentum = 0, 1, 0.0

    def active(self) -> BottleneckAdapter:
        return self.adapter if self.selected is None else self.stored[self.selected]

    def forward(self, x: Tensor) -> Tensor:
        out = self.mlp(self.norm(x))
        adapter, j = self.active(), self.pull_toward
        if j is None:
            return out + adapter(x)
        self.pull(adapter, j, self.index + 1)
        out = out + adapter(x)
        self.pull(adapter, j, self.depth - self.index - 1)
        return out

    @torch.no_grad()
    def pull(self, adapter: BottleneckAdapter, j: int, times: int = 1) -> None:
        """``theta <- (1 - m) theta + m S_{j-1} / j`` on ``.data`` (``reweight_adapter``, vit_mos.py:336-344)."""
        m = self.momentum
        if m == 0 or j == 0:
            return
        target = list(self.sums[j - 1].parameters())
        for _ in range(times):
            for p, s in zip(adapter.parameters(), target):
                p.data = (1 - m) * p.data + m * s.data / j

    @torch.no_grad()
    def snapshot(self) -> None:
        """Store a frozen copy of the current adapter and the new running sum (vit_mos.py:310-326)."""
        kept = copy.deepcopy(self.adapter).requires_grad_(False)
        total = copy.deepcopy(kept)
        if len(self.sums):
            for t, p in zip(total.parameters(), self.sums[-1].parameters()):
                t.data = t.data + p.data
        self.stored.append(kept)
        self.sums.append(total)


class MOSModel(nn.Module):
    """A timm ViT with MOS's adapters, its linear head over all classes, the prototypes and the class statistics.

    ``task`` is the index of the task being learned (= tasks finished). Calling the model predicts (inference);
    :meth:`train_forward` is the training path.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, *, adapter_momentum: float = 0.1, literal: bool = True,
                 ensemble: bool = True, max_iter: int = MAX_ITER) -> None:
        super().__init__()
        self.backbone = backbone
        self.mlps = [b.mlp for b in backbone.blocks]
        if not self.mlps or not all(isinstance(m, TaskAdapterMLP) for m in self.mlps):
            raise TypeError("MOSModel needs a backbone whose blocks' MLPs are TaskAdapterMLP (add_adapters with "
                            "mlp_cls=TaskAdapterMLP)")
        for i, m in enumerate(self.mlps):
            m.index, m.depth, m.momentum = i, len(self.mlps), float(adapter_momentum)
        d = backbone.num_features
        device = next(backbone.parameters()).device
        self.head = nn.Linear(d, num_classes, device=device)
        trunc_normal_(self.head.weight, std=0.02)  # timm's head init (the reference's head comes from timm)
        nn.init.zeros_(self.head.bias)
        self.prototypes = PrototypeHead(d).to(device)
        self.register_buffer("class_task", torch.full((num_classes,), -1, dtype=torch.long, device=device))
        self.register_buffer("stat_classes", torch.zeros(0, dtype=torch.long, device=device))
        self.register_buffer("class_means", torch.zeros(0, d, device=device))
        self.register_buffer("class_covs", torch.zeros(0, d, d, device=device))
        self.literal, self.ensemble, self.max_iter = bool(literal), bool(ensemble), int(max_iter)
        self.task = 0

    @property
    def n_tasks(self) -> int:
        return len(self.mlps[0].stored)

    @contextmanager
    def _using(self, adapter: int | None, pull: int | None) -> Iterator[None]:
        for m in self.mlps:
            m.selected, m.pull_toward = adapter, pull if self.literal else None
        try:
            yield
        finally:
            for m in self.mlps:
                m.selected, m.pull_toward = None, None

    def current_features(self, x: Tensor) -> Tensor:
        """The current adapter's features through the reference's training path (its pulls, when literal)."""
        with self._using(None, self.task):
            return self.backbone(x)

    def stored_features(self, x: Tensor, j: int) -> Tensor:
        """Stored adapter ``j``'s features (literal: with the reference's in-place drift of adapter ``j``)."""
        with self._using(j, j):
            return self.backbone(x)

    def train_forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f = self.current_features(x)
        return self.head(f), f

    @torch.no_grad()
    def merge_step(self) -> None:
        """The EMA merge after an optimizer step (models/mos.py:173-175, vit_mos.py:303-308)."""
        for m in self.mlps:
            m.pull(m.adapter, self.task)

    def snapshot(self) -> None:
        for m in self.mlps:
            m.snapshot()

    def seen_logits(self, f: Tensor) -> Tensor:
        """Head logits of the seen classes, in float32 even under an evaluation autocast (their argmax routes)."""
        with torch.autocast(f.device.type, enabled=False):
            return self.head(f.float())[:, self.prototypes.class_ids]

    def refine(self, feats: Tensor, task: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Self-refined retrieval (models/mos.py:376-396): head logits (seen classes) of the last round, the task
        whose feature gave them, and the number of rounds each sample took."""
        rows = torch.arange(feats.shape[1], device=feats.device)
        seen = self.prototypes.class_ids
        active = torch.ones_like(task, dtype=torch.bool)
        rounds = torch.zeros_like(task)
        final = None
        for it in range(1, self.max_iter + 1):
            logits = self.seen_logits(feats[task, rows])
            final = logits if final is None else torch.where(active[:, None], logits, final)
            rounds = rounds + active.long()
            new = self.class_task[seen[logits.argmax(1)]]
            active = active & (new != task) & (it < self.max_iter)
            task = torch.where(active, new, task)
            if not bool(active.any()):
                break
        return final, task, rounds

    def forward(self, x: Tensor) -> Tensor:
        n = self.n_tasks
        if n == 0:
            raise RuntimeError("MOS predicts after its first experience: train it on one before evaluating")
        feats = torch.stack([self.stored_features(x, j) for j in range(n)])
        orig = self.prototypes(feats[0])  # the prototypes of the first task's adapter (forward_orig)
        seen = self.prototypes.class_ids
        orig = orig[:, seen]
        task = self.class_task[seen[orig.argmax(1)]]
        final, _, _ = self.refine(feats, task)
        out = F.softmax(final, dim=1) + F.softmax(orig / (1 / n), dim=1) if self.ensemble else final
        return place_logits(out, seen)

    def add_statistics(self, classes: Tensor, means: Tensor, covs: Tensor) -> None:
        self.stat_classes = torch.cat([self.stat_classes, classes.to(self.stat_classes)])
        self.class_means = torch.cat([self.class_means, means.to(self.class_means)])
        self.class_covs = torch.cat([self.class_covs, covs.to(self.class_covs)])

    def grow(self, tasks: int, classes: int) -> None:
        """Give a freshly built model the slots of ``tasks`` finished tasks and ``classes`` learned classes (stored
        adapters and sums, statistics and prototype rows), through the code that grows them in training; their
        values are placeholders for a checkpoint's tensors to fill (a resumed run)."""
        if self.task or self.n_tasks or self.stat_classes.numel() or self.prototypes.class_ids.numel():
            raise RuntimeError(f"MOSModel.grow needs a freshly built model; this one has learned {self.task} tasks")
        for _ in range(tasks):
            self.snapshot()
        if classes:
            d = self.class_means.shape[1]
            ids = torch.arange(classes, device=self.stat_classes.device)
            self.add_statistics(ids, torch.zeros(classes, d), torch.zeros(classes, d, d))
            self.prototypes.absorb(torch.zeros(classes, d, device=ids.device), ids)
        self.task = tasks


def orth_loss(features: Tensor, means: Tensor, reg: float) -> Tensor:
    """``reg * CE(M M^T / 0.8, arange)``, ``M``: the stored class means above the batch's features (mos.py:335-355)."""
    M = torch.cat([means.to(features), features]) if means.numel() else features
    sim = M @ M.T / ORTH_TEMPERATURE
    return reg * F.cross_entropy(sim, torch.arange(sim.shape[0], device=sim.device))


def class_statistics(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and ``torch.cov + 1e-4 I`` of one class's features (models/mos.py:221-222)."""
    if features.shape[0] < 2:
        raise ValueError(f"MOS's class covariance needs at least 2 training images per class, got {features.shape[0]}; "
                         "use more training images per class")
    mean = features.mean(dim=0)
    return mean, torch.cov(features.T) + torch.eye(mean.shape[-1], device=features.device) * COV_RIDGE


def align_classifier(head: nn.Linear, classes: Tensor, means: Tensor, covs: Tensor, *, epochs: int, lr: float,
                     weight_decay: float, samples_per_class: int) -> list[float]:
    """Re-train ``head`` on features drawn from every seen class's Gaussian (models/mos.py:247-333): MOS's optimizer
    (SGD momentum 0.9; the group's ``weight_decay`` overrides the optimizer's 5e-4, as the reference's group does) and
    cosine over ``epochs``, the shared loop of :func:`~benchmarks.peers.classifier_alignment.fit_on_gaussians`.

    ``classes``: the head rows scored (the seen classes, in the order of ``means``/``covs``). Returns each epoch's
    mean loss.
    """
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.SGD([{"params": params, "lr": lr, "weight_decay": weight_decay}], lr=lr, momentum=0.9,
                          weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    return fit_on_gaussians(lambda x: head(x)[:, classes], means, covs, opt, sched, epochs=epochs,
                            per_class=int(samples_per_class))


class MOS(ClassIncrementalTemplate):
    """Adapter training with merging and the orthogonality term, then statistics, alignment and prototypes per task."""

    method_label = "MOS"

    def __init__(self, *, model: MOSModel, optimizer: torch.optim.Optimizer, lr: float, weight_decay: float,
                 min_lr: float = 0.0, reg: float = 0.1, ca_epochs: int = 30, ca_lr: float = 0.005,
                 **kwargs) -> None:
        self.lr, self.weight_decay, self.min_lr, self.reg = float(lr), float(weight_decay), float(min_lr), float(reg)
        self.ca_epochs, self.ca_lr = int(ca_epochs), float(ca_lr)
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self._features: Tensor | None = None
        self.ca_losses: list[list[float]] = []
        super().__init__(model=model, optimizer=optimizer, criterion=nn.CrossEntropyLoss(), **kwargs)

    def make_optimizer(self, reset_optimizer_state: bool = True, **kwargs) -> None:
        """A fresh optimizer per task: adapters at ``lr``, the head at ``0.1 lr`` (models/mos.py:118-140), cosine."""
        model: MOSModel = self.model
        adapters = [p for m in model.mlps for p in m.adapter.parameters()]
        head = list(model.head.parameters())
        self.optimizer.state.clear()
        self.optimizer.param_groups.clear()
        self.optimizer.add_param_group({"params": adapters, "lr": self.lr, "weight_decay": self.weight_decay})
        self.optimizer.add_param_group({"params": head, "lr": self.lr * HEAD_LR_SCALE,
                                        "weight_decay": self.weight_decay})
        for group in self.optimizer.param_groups:
            group.pop("initial_lr", None)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(self.train_epochs, 1),
                                                                    eta_min=self.min_lr)
        self.optimized_param_id = {n: p for n, p in model.named_parameters() if p.requires_grad}

    def _before_training_exp(self, **kwargs) -> None:
        model: MOSModel = self.model
        classes = sorted(int(c) for c in self.experience.classes_in_this_experience)
        beyond = [c for c in classes if c >= model.class_task.numel()]
        if beyond:
            raise ValueError(f"experience {self.experience.current_experience} has classes {beyond[:10]} not below "
                             f"num_classes={model.class_task.numel()}; pass build_strategy(num_classes=...) covering "
                             "every class of the benchmark")
        super()._before_training_exp(**kwargs)
        model.class_task[classes] = model.task  # cls2task (models/mos.py:81-82)

    def forward(self) -> Tensor:
        if not self.is_training:
            return self.model(self.mb_x)
        logits, self._features = self.model.train_forward(self.mb_x)
        return logits

    def criterion(self) -> Tensor:
        out = self.mb_output
        if not self.is_training:
            return self._criterion(out, self.mb_y)
        loss = self._criterion(self.current_class_logits(out), self.mb_y)
        return loss + orth_loss(self._features, self.model.class_means, self.reg)

    def optimizer_step(self) -> None:
        super().optimizer_step()
        self.model.merge_step()

    def _after_training_epoch(self, **kwargs) -> None:
        if self.scheduler is not None:
            self.scheduler.step()
        super()._after_training_epoch(**kwargs)

    def _after_training_exp(self, **kwargs) -> None:
        model: MOSModel = self.model
        model.snapshot()
        classes = sorted(int(c) for c in self.experience.classes_in_this_experience)
        dataset = self.experience.dataset.eval()
        targets = torch.as_tensor(list(dataset.targets))
        model.eval()
        means, covs = [], []
        with torch.no_grad():
            for c in classes:  # one class at a time, as the reference (the literal pulls follow its batches)
                subset = dataset.subset(torch.nonzero(targets == c).flatten().tolist())
                mean, cov = class_statistics(torch.cat([model.current_features(x) for x, _ in
                                                        self._loader(subset, 3 * self.train_mb_size)]))
                means.append(mean)
                covs.append(cov)
        model.add_statistics(torch.tensor(classes), torch.stack(means), torch.stack(covs))
        if model.task > 0:
            model.train()
            self.ca_losses.append(align_classifier(
                model.head, model.stat_classes, model.class_means, model.class_covs, epochs=self.ca_epochs,
                lr=self.ca_lr, weight_decay=self.weight_decay, samples_per_class=5 * self.train_mb_size))
        model.train(model.literal and model.task > 0)  # the reference's backbone is still in train mode here
        with torch.no_grad():
            batches = self._loader(dataset, self.train_mb_size)
            feats, labels = zip(*[(model.stored_features(x, 0), y) for x, y in batches])
        model.prototypes.absorb(torch.cat(feats), torch.cat(labels))
        model.task += 1
        super()._after_training_exp(**kwargs)

    # Checkpoints (benchmarks.peer_checkpoint): the model's state dict holds every tensor (stored adapters and their
    # sums, head, prototypes, class statistics, class -> task); the structure says how many tasks and classes to grow
    # (and keeps the alignment losses, the strategy's record of its runs). Optimizer and scheduler are fresh per task.
    def checkpoint_structure(self) -> dict:
        """Tasks finished and classes learned (what :meth:`MOSModel.grow` rebuilds), and the alignment losses."""
        model: MOSModel = self.model
        return {"tasks": int(model.task), "classes": int(model.stat_classes.numel()), "ca_losses": self.ca_losses}

    def restore_checkpoint(self, tensors: dict[str, Tensor], structure: dict) -> None:
        """Grow the freshly built model to ``structure`` and load ``tensors`` strictly (a missing, extra or
        differently shaped tensor is an error naming it)."""
        model: MOSModel = self.model
        tasks, classes = structure.get("tasks"), structure.get("classes")
        if not all(isinstance(v, int) and v >= 0 for v in (tasks, classes)):
            raise ValueError(f"MOS checkpoint structure {structure!r} needs non-negative integers 'tasks' and "
                             "'classes'; it was not written by this MOS strategy")
        model.grow(tasks, classes)
        expected = model.state_dict()
        reshaped = [f"{k} {tuple(tensors[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                    if k in tensors and tensors[k].shape != v.shape]
        problems = [f"{len(keys)} {what} (first: {', '.join(keys[:3])})" for what, keys in (
            ("unexpected tensors", sorted(tensors.keys() - expected.keys())),
            ("missing tensors", sorted(expected.keys() - tensors.keys())),
            ("tensors of another shape", reshaped)) if keys]
        if problems:
            raise ValueError(f"MOS checkpoint tensors do not match its structure ({tasks} tasks, {classes} classes) on "
                             f"this model: {'; '.join(problems)}; the checkpoint was written by another MOS "
                             "configuration or is damaged")
        model.load_state_dict(tensors, strict=True)
        learned = model.class_task[model.class_task >= 0]
        if learned.numel() != classes or (classes and int(learned.max()) != tasks - 1):
            raise ValueError(f"MOS checkpoint says {tasks} tasks and {classes} classes, but its class-to-task map "
                             f"holds {learned.numel()} classes of tasks {sorted(set(learned.tolist()))}")
        self.ca_losses = [list(map(float, losses)) for losses in structure.get("ca_losses", [])]

    def _loader(self, dataset, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        args = self._obtain_common_dataloader_parameters(batch_size=batch_size, num_workers=0, shuffle=False,
                                                         pin_memory=None, persistent_workers=False)
        collate_from_data_or_kwargs(dataset, args)
        for mb in SingleDatasetDataLoader(dataset, **args):
            yield mb[0].to(self.device), mb[1].to(self.device)


def _optimizer(name: str, groups: list[dict]) -> torch.optim.Optimizer:
    """The reference's optimizers over its two groups (models/mos.py:125-138): SGD(momentum 0.9), Adam, AdamW."""
    if name == "sgd":
        return torch.optim.SGD(groups, momentum=0.9)
    if name == "adam":
        return torch.optim.Adam(groups)
    if name == "adamw":
        return torch.optim.AdamW(groups)
    raise ValueError(f"unknown optimizer '{name}'; choose one of {', '.join(OPTIMIZERS)}")


def build_strategy(*, model_name: str, checkpoint: str | None, img_size: int, num_classes: int, n_experiences: int,
                   epochs: int, batch_size: int, eval_batch_size: int, device: str, evaluator, plugins: list,
                   lr: float | None = None, optimizer: str | None = None, weight_decay: float = 5e-4,
                   min_lr: float = 0.0, adapter_bottleneck: int = 16, adapter_momentum: float = 0.1, reg: float = 0.1,
                   ca_epochs: int = 30, ca_lr: float = 0.005, ensemble: bool = True, literal: bool = True
                   ) -> SupervisedTemplate:
    """MOS with the reference's CIFAR recipe (``lr``/``optimizer`` None) or the given overrides.

    ``literal`` (default True) reproduces the reference's in-place adapter pulls inside every pass (see the module
    docstring); False merges only after each optimizer step and leaves the stored adapters as stored.
    """
    if not 0.0 <= adapter_momentum <= 1.0:
        raise ValueError(f"adapter_momentum must be in [0, 1], got {adapter_momentum}")
    if not (isinstance(ca_epochs, int) and ca_epochs >= 0):
        raise ValueError(f"ca_epochs must be a non-negative integer, got {ca_epochs!r}")
    if not (isinstance(reg, (int, float)) and math.isfinite(reg)):
        raise ValueError(f"reg must be a finite number, got {reg!r}")
    lr = 0.03 if lr is None else float(lr)
    backbone = create_backbone(model_name, checkpoint=checkpoint, img_size=img_size)
    add_adapters(backbone, bottleneck=adapter_bottleneck, scale=0.1, dropout=0.1, mlp_cls=TaskAdapterMLP)
    model = MOSModel(backbone, num_classes, adapter_momentum=adapter_momentum, literal=literal, ensemble=ensemble)
    adapters = [p for m in model.mlps for p in m.adapter.parameters()]
    groups = [{"params": adapters, "lr": lr, "weight_decay": weight_decay},
              {"params": list(model.head.parameters()), "lr": lr * HEAD_LR_SCALE, "weight_decay": weight_decay}]
    opt = _optimizer(optimizer or "sgd", groups)
    return MOS(model=model, optimizer=opt, lr=lr, weight_decay=weight_decay, min_lr=min_lr, reg=reg,
               ca_epochs=ca_epochs, ca_lr=ca_lr, train_mb_size=batch_size, train_epochs=epochs,
               eval_mb_size=eval_batch_size, device=device, evaluator=evaluator, plugins=list(plugins))


def stored_breakdown(strategy: SupervisedTemplate) -> dict[str, int]:
    """Numbers MOS keeps beyond the frozen backbone, by part (see the module docstring for 10 tasks)."""
    model: MOSModel = strategy.model

    def count(modules) -> int:
        return sum(p.numel() for mod in modules for p in mod.parameters())

    return {"task_adapters": count(a for m in model.mlps for a in m.stored),
            "adapter_sums": count(s for m in model.mlps for s in m.sums),
            "current_adapter": count(m.adapter for m in model.mlps),
            "head": count([model.head]),
            "prototypes": model.prototypes.prototypes.numel(),
            "class_means": model.class_means.numel(),
            "class_covariances": model.class_covs.numel()}


def stored_params(strategy: SupervisedTemplate) -> int:
    """Task adapters, their sums, the current adapter, head, prototypes, class means and covariances."""
    return int(sum(stored_breakdown(strategy).values()))
