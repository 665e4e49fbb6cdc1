"""InfLoRA (Liang & Li, CVPR 2024) as an Avalanche strategy for any timm ViT.

Each task adds a low-rank branch ``B_t A_t`` to the key and the value projection of every block (not the query).
``A_t`` is set from data before the task and never trained: the left singular vectors of the layer's input
covariance after projecting out the subspace kept for earlier tasks, so the branch cannot disturb the inputs those
tasks produced. Only ``B_t`` and the task's head rows train, on the task's own logits. After the task the kept
subspace grows DualGPM-style. All branches are summed in one forward pass and can be merged into the weights.

Reference: liangyanshuo/InfLoRA@e08b00e ``methods/inflora.py`` (``_train``, ``train_function``, ``update_DualGPM``),
``models/vit_inflora.py`` (``Attention_LoRA``), ``models/sinet_inflora.py`` (``SiNet``), ``utils/schedulers.py``,
``configs/cifar100_inflora.json``. Facts checked there:

- covariance: the running mean over all tokens of ``x^T x`` of the attention input (the fused qkv's input), from one
  no-grad pass over the task's training loader (augmented, ``mode='train'``) before training, with the new branch's
  ``B = 0``; and a second pass after training, whose covariances feed the subspace update;
- ``A_t = U[:, :r]^T / sqrt(3)`` where ``U`` are the left singular vectors of the covariance ``C`` (task 0) or of the
  projected ``C - M M^T C`` ('remove': ``M`` spans the kept space) or ``M M^T C`` ('retain': ``M`` spans its
  complement); the same ``A_t`` for k and v (the reference stores two equal copies; we store one);
- ``B`` starts at zero; update ``dW_k = sum_t B_{k,t} A_t`` (likewise v), no further scaling;
- the kept subspace and its update: :mod:`benchmarks.peers.dualgpm` (``update_DualGPM``; its facts are listed
  there), fed with the covariances of the pass after training;
- training loss: cross-entropy over the current task's head only (``classifier_pool[numtask-1]``, targets shifted);
  head rows per task ``nn.Linear(embd_dim, classes)`` with its default init; inference concatenates all task heads;
- optimiser ``Adam(lr 5e-4, betas (0.9, 0.999), weight_decay 0)``, fresh each task, over all parameters of which only
  the current ``lora_B_k``/``lora_B_v`` and head require grad; ``CosineSchedule``: ``lr * cos(99 pi e / (200 (K - 1)))``
  at epoch ``e`` of ``K``, stepped per epoch; 20 epochs, batch 128, rank 10, lamb 0.95 / lame 1.0 on CIFAR-100
  (ImageNet-R ``mimg10_inflora.json``: lamb 0.98, 50 epochs). Its SGD option pairs SGD(momentum 0.9) with
  ``CosineAnnealingLR(T_max=epochs)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import LRSchedulerPlugin
from avalanche.training.templates import SupervisedTemplate
from torch import Tensor, nn

from avalanche_sdlora import create_backbone
from avalanche_sdlora.head import FrozenPastHead

from .class_incremental import ClassIncrementalTemplate
from .dualgpm import DualGPM, threshold_schedule
from .step_schedule import StepSchedulePlugin, annealing_curve, coda_curve

__all__ = ["InfLoRAKV", "InfLoRAViT", "DualGPM", "InfLoRAPlugin", "InfLoRA", "threshold_schedule", "input_matrix",
           "build_strategy", "stored_params", "REFERENCE_HPARAMS", "INFERENCE_FORWARD_PASSES"]

_REF = "liangyanshuo/InfLoRA"
_CFG = _REF + " configs/cifar100_inflora.json"
REFERENCE_HPARAMS: dict[str, tuple[object, str]] = {
    "rank": (10, _CFG + " rank"),
    "adapted": ("k and v of every block", _REF + " models/vit_inflora.py Attention_LoRA: lora_A_k/B_k, lora_A_v/B_v"),
    "input_matrix_scale": (1 / math.sqrt(3), _REF + " methods/inflora.py _train: U[:, :rank].T / math.sqrt(3)"),
    "threshold_start": (0.95, _CFG + " lamb (ImageNet-R mimg10_inflora.json: 0.98)"),
    "threshold_end": (1.0, _CFG + " lame"),
    "threshold_schedule": ("(lame - lamb) * t / total_sessions + lamb, t = 0-based task",
                           _REF + " methods/inflora.py update_DualGPM"),
    "optimizer": ("adam", _CFG + " optim; methods/inflora.py: Adam(betas=(0.9, 0.999))"),
    "lr": (5e-4, _CFG + " init_lr / lrate"),
    "weight_decay": (0.0, _CFG + " init_weight_decay / weight_decay"),
    "schedule": ("cosine", "lr * cos(99 pi e / (200 (K - 1))) per epoch, " + _REF + " utils/schedulers.py "
                 "CosineSchedule ('cosine-steps': the same curve per iteration, benchmarks.peers.step_schedule)"),
    "epochs": (20, _CFG + " init_epoch / epochs (the harness's epochs are used)"),
    "batch_size": (128, _CFG + " batch_size (the harness's batch size is used)"),
    "loss": ("cross-entropy on the current task's logits", _REF + " methods/inflora.py train_function"),
    "head_init": ("nn.Linear default per task", _REF + " models/sinet_inflora.py classifier_pool"),
}
INFERENCE_FORWARD_PASSES = 1  # all branches are summed inside the one pass (or merged into the weights)


def input_matrix(cov: Tensor, rank: int) -> Tensor:
    """``A = U[:, :rank]^T / sqrt(3)`` from the (projected) covariance: InfLoRA's frozen input-side matrix."""
    if rank > cov.shape[0]:
        raise ValueError(f"rank {rank} exceeds the layer width {cov.shape[0]}; choose rank <= {cov.shape[0]}")
    U = torch.linalg.svd(cov, full_matrices=False).U
    return U[:, :rank].T / math.sqrt(3)


class InfLoRAKV(nn.Module):
    """A frozen fused qkv ``nn.Linear`` plus one branch per task on its k and v slices.

    ``lora_A`` (buffer, tasks x r x in): the frozen input-side matrices; ``lora_B`` (one (2, dim, r) parameter per
    task, k then v): only the newest trains. ``delta_weight`` is the single place the update is formed.
    """

    def __init__(self, base_layer: nn.Linear) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear) or base_layer.out_features % 3:
            raise TypeError(f"InfLoRAKV wraps a fused qkv nn.Linear with 3*dim outputs, got {base_layer!r}")
        self.base_layer = base_layer
        for p in base_layer.parameters():
            p.requires_grad_(False)
        self.dim, self.in_features = base_layer.out_features // 3, base_layer.in_features
        self.register_buffer("lora_A", base_layer.weight.new_zeros(0, 0, self.in_features))
        self.lora_B = nn.ParameterList()
        self.merged = False

    @property
    def num_tasks(self) -> int:
        return len(self.lora_B)

    @torch.no_grad()
    def add_branch(self, rank: int) -> None:
        """Freeze the earlier branches and start a new one (``A`` to be set from data, ``B = 0``)."""
        if self.merged:
            raise RuntimeError("unmerge() before adding a branch")
        if self.num_tasks and rank != self.lora_A.shape[1]:
            raise ValueError(f"every InfLoRA branch has the same rank; got {rank} after {self.lora_A.shape[1]}")
        for p in self.lora_B:
            p.requires_grad_(False)
        w = self.base_layer.weight
        old = self.lora_A.reshape(-1, rank, self.in_features)
        self.lora_A = torch.cat([old, w.new_zeros(1, rank, self.in_features)])
        self.lora_B.append(nn.Parameter(w.new_zeros(2, self.dim, rank)))

    @torch.no_grad()
    def set_input_matrix(self, A: Tensor) -> None:
        self.lora_A[-1].copy_(A)

    def delta_weight(self) -> Tensor:
        """Update of the k and v slices, shape (2, dim, in): ``sum_t B_t A_t``."""
        if not self.num_tasks:
            return self.base_layer.weight.new_zeros(2, self.dim, self.in_features)
        return torch.einsum("tsdr,tri->sdi", torch.stack(list(self.lora_B)), self.lora_A)

    def full_delta_weight(self) -> Tensor:
        dk, dv = self.delta_weight().unbind(0)
        return torch.cat([torch.zeros_like(dk), dk, dv], dim=0)

    def forward(self, x: Tensor) -> Tensor:
        if self.merged or not self.num_tasks:
            return self.base_layer(x)
        return F.linear(x, self.base_layer.weight + self.full_delta_weight(), self.base_layer.bias)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.base_layer.weight += self.full_delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base_layer.weight -= self.full_delta_weight()
            self.merged = False


class InfLoRAViT(nn.Module):
    """Frozen timm ViT with :class:`InfLoRAKV` on every block's qkv and a growing head (old rows frozen)."""

    def __init__(self, backbone: nn.Module, rank: int = 10) -> None:
        super().__init__()
        blocks = getattr(backbone, "blocks", None)
        if not blocks or not all(isinstance(getattr(getattr(b, "attn", None), "qkv", None), nn.Linear) for b in blocks):
            raise TypeError(f"{type(backbone).__name__} has no .blocks[*].attn.qkv nn.Linear; InfLoRA needs a timm "
                            "VisionTransformer such as 'vit_tiny_patch16_224'")
        if rank <= 0:
            raise ValueError(f"rank must be a positive integer, got {rank}")
        self.rank = rank
        self.backbone = backbone
        for p in backbone.parameters():
            p.requires_grad_(False)
        for block in backbone.blocks:
            block.attn.qkv = InfLoRAKV(block.attn.qkv)
        self.head = FrozenPastHead(backbone.num_features)

    @property
    def adapters(self) -> list[InfLoRAKV]:
        return [b.attn.qkv for b in self.backbone.blocks]

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))

    @property
    def num_tasks(self) -> int:
        return self.adapters[0].num_tasks

    def add_task(self) -> None:
        for a in self.adapters:
            a.add_branch(self.rank)

    def grow(self, tasks: int) -> None:
        """Make a freshly built model hold ``tasks`` branches per layer (zeros until a checkpoint's tensors load);
        the head grows from the tensors themselves (:class:`FrozenPastHead`)."""
        if self.num_tasks:
            raise RuntimeError(f"grow() rebuilds a freshly built InfLoRAViT; this one already has {self.num_tasks} "
                               "task(s)")
        for _ in range(tasks):
            self.add_task()

    @torch.no_grad()
    def layer_input_covariances(self, images: Iterable[Tensor]) -> list[Tensor]:
        """Mean of ``x x^T`` over every token that reaches each qkv, from one pass over ``images`` (float64)."""
        sums = [torch.zeros(a.in_features, a.in_features, dtype=torch.float64, device=a.base_layer.weight.device)
                for a in self.adapters]
        counts = [0] * len(sums)

        def hook(i: int):
            def accumulate(_module, inputs):
                x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
                sums[i].add_(x.T @ x)
                counts[i] += x.shape[0]
            return accumulate

        handles = [a.register_forward_pre_hook(hook(i)) for i, a in enumerate(self.adapters)]
        was_training = self.training
        self.eval()
        try:
            for x in images:
                self.backbone(x)
        finally:
            for h in handles:
                h.remove()
            self.train(was_training)
        if not counts[0]:
            raise ValueError("the covariance pass saw no images; every experience needs training data")
        return [s / n for s, n in zip(sums, counts)]

    @torch.no_grad()
    def merge(self) -> None:
        for a in self.adapters:
            a.merge()

    @torch.no_grad()
    def unmerge(self) -> None:
        for a in self.adapters:
            a.unmerge()


class InfLoRAPlugin(SupervisedPlugin):
    """Before each experience: new branches with data-set ``A``; after it: the DualGPM update of the kept space."""

    def __init__(self, n_experiences: int, threshold_start: float = 0.95, threshold_end: float = 1.0) -> None:
        super().__init__()
        if n_experiences <= 0:
            raise ValueError(f"n_experiences must be positive, got {n_experiences}")
        self.n_experiences = n_experiences
        self.threshold_start, self.threshold_end = threshold_start, threshold_end
        self.subspace = DualGPM()
        self.thresholds: list[float] = []

    @staticmethod
    def _images(strategy) -> Iterable[Tensor]:
        return (mb[0].to(strategy.device) for mb in strategy.dataloader)

    def before_training_exp(self, strategy, **kwargs) -> None:
        model: InfLoRAViT = strategy.model
        model.add_task()
        covs = model.layer_input_covariances(self._images(strategy))
        for i, (a, cov) in enumerate(zip(model.adapters, covs)):
            a.set_input_matrix(input_matrix(self.subspace.project(i, cov), model.rank).to(a.lora_A))
        # Avalanche builds the optimizer before this hook; rebuild it over the new trainable set.
        strategy.make_optimizer(reset_optimizer_state=True)

    def after_training_exp(self, strategy, **kwargs) -> None:
        covs = strategy.model.layer_input_covariances(self._images(strategy))
        threshold = threshold_schedule(len(self.thresholds), self.n_experiences, self.threshold_start,
                                       self.threshold_end)
        self.subspace.update(covs, threshold)
        self.thresholds.append(threshold)


class InfLoRA(ClassIncrementalTemplate):
    """InfLoRA: ``SupervisedTemplate`` + :class:`InfLoRAPlugin`; the loss sees the current experience's classes only.

    The optimizer steps the current ``B`` and head rows only (rebuilt per experience by the base class).
    """

    method_label = "InfLoRA"

    def __init__(self, *, model: InfLoRAViT, optimizer: torch.optim.Optimizer, n_experiences: int,
                 threshold_start: float = 0.95, threshold_end: float = 1.0, criterion: nn.Module | None = None,
                 plugins: list | None = None, **kwargs) -> None:
        if not isinstance(model, InfLoRAViT):
            raise TypeError(f"InfLoRA needs an InfLoRAViT, got {type(model).__name__}")
        self.subspace_plugin = InfLoRAPlugin(n_experiences, threshold_start, threshold_end)
        super().__init__(model=model, optimizer=optimizer, criterion=criterion or nn.CrossEntropyLoss(),
                         plugins=[self.subspace_plugin] + list(plugins or []), **kwargs)

    # Checkpoints (benchmarks.peer_checkpoint): the model's state dict (branches, head) plus the kept subspace, which
    # lives on the plugin (float64 bases under ``strategy.subspace.<layer>``, their kinds and the thresholds in JSON).
    def checkpoint_tensors(self) -> dict[str, Tensor]:
        """The model's state dict and the DualGPM bases of :class:`InfLoRAPlugin`."""
        if any(a.merged for a in self.model.adapters):
            raise RuntimeError("unmerge() InfLoRA's branches before checkpointing: a merged model's base weights "
                               "hold the branch sum")
        tensors = dict(self.model.state_dict())
        tensors.update({f"strategy.subspace.{i}": b for i, b in enumerate(self.subspace_plugin.subspace.bases)})
        return tensors

    def checkpoint_structure(self) -> dict:
        """Branches per layer, the subspace bases' kinds and the thresholds used so far."""
        plugin = self.subspace_plugin
        return {"tasks": self.model.num_tasks, "subspace_kinds": list(plugin.subspace.kinds),
                "thresholds": list(plugin.thresholds)}

    def restore_checkpoint(self, tensors: dict[str, Tensor], structure: dict) -> None:
        """Grow the freshly built model to ``structure``'s tasks, load its tensors strictly, restore the subspace."""
        tasks, kinds = structure.get("tasks"), structure.get("subspace_kinds")
        thresholds = structure.get("thresholds")
        if (type(tasks) is not int or tasks < 0 or not isinstance(kinds, list) or not isinstance(thresholds, list)
                or any(k not in ("remove", "retain") for k in kinds)):
            raise ValueError("an InfLoRA checkpoint's structure needs an integer 'tasks', 'subspace_kinds' (remove "
                             f"or retain per layer) and 'thresholds', got {structure}")
        plugin = self.subspace_plugin
        if len(plugin.subspace) or plugin.thresholds:
            raise RuntimeError("restore_checkpoint() rebuilds a freshly built InfLoRA; this one has trained already")
        prefix = "strategy.subspace."
        bases = {k: v for k, v in tensors.items() if k.startswith(prefix)}
        expected = {f"{prefix}{i}" for i in range(len(kinds))}
        if set(bases) != expected or len(thresholds) != tasks or (tasks > 0) != bool(kinds):
            raise ValueError(f"an InfLoRA checkpoint of {tasks} task(s) needs {tasks} thresholds and one subspace "
                             f"basis per kind ({len(kinds)}), got {len(thresholds)} thresholds and bases "
                             f"{sorted(bases)}")
        if kinds and len(kinds) != len(self.model.adapters):
            raise ValueError(f"the checkpoint keeps a subspace for {len(kinds)} layers; this model has "
                             f"{len(self.model.adapters)}")
        self.model.grow(tasks)
        try:
            self.model.load_state_dict({k: v for k, v in tensors.items() if k not in bases}, strict=True)
        except RuntimeError as err:
            raise ValueError(f"the checkpoint's tensors do not fit an InfLoRA model grown to {tasks} task(s) (is it "
                             f"this method's, with the same backbone and rank?): {err}") from err
        plugin.subspace.bases = [bases[f"{prefix}{i}"].to(self.device) for i in range(len(kinds))]
        plugin.subspace.kinds = list(kinds)
        plugin.thresholds = [float(t) for t in thresholds]

    def criterion(self):
        out = self.mb_output
        if self.is_training and self.experience is not None:
            out = self.current_class_logits(out)
        return self._criterion(out, self.mb_y)


def coda_cosine(epochs: int):
    """The reference's per-epoch factor ``cos(99 pi e / (200 (K - 1)))`` (constant for a single epoch)."""
    return lambda e: math.cos(99 * math.pi * e / (200 * (epochs - 1))) if epochs > 1 else 1.0


def build_strategy(*, model_name: str, checkpoint: str | None, img_size: int, num_classes: int, n_experiences: int,
                   epochs: int, batch_size: int, eval_batch_size: int, device: str, evaluator, plugins: list,
                   lr: float | None = None, optimizer: str | None = None, rank: int = 10,
                   threshold_start: float = 0.95, threshold_end: float = 1.0,
                   weight_decay: float = 0.0, schedule: str = "cosine") -> SupervisedTemplate:
    """InfLoRA with the reference recipe (``lr``/``optimizer`` None: Adam 5e-4, cosine) or the given overrides.

    ``schedule``: "cosine", the reference's curve stepped per epoch (Adam: CODA's ``CosineSchedule``; SGD:
    ``CosineAnnealingLR(T_max=epochs)``), or "cosine-steps", the same curve per iteration
    (:mod:`benchmarks.peers.step_schedule`: its shape kept at a few epochs)."""
    if schedule not in ("cosine", "cosine-steps"):
        raise ValueError(f"schedule must be 'cosine' (the reference's, per epoch) or 'cosine-steps' (its curve per "
                         f"iteration), got {schedule!r}")
    model = InfLoRAViT(create_backbone(model_name, checkpoint=checkpoint, img_size=img_size), rank=rank)
    lr = 5e-4 if lr is None else lr
    placeholder = [nn.Parameter(torch.zeros(1))]  # make_optimizer re-points it at each experience's trainable set
    name = optimizer or "adam"
    if name == "adam":
        opt = torch.optim.Adam(placeholder, lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, coda_cosine(epochs))
        steps = StepSchedulePlugin(coda_curve, endpoint=True)
    elif name == "sgd":
        opt = torch.optim.SGD(placeholder, lr=lr, momentum=0.9, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(int(epochs), 1))
        steps = StepSchedulePlugin(annealing_curve, endpoint=False)
    else:
        raise ValueError(f"unknown optimizer '{name}' for InfLoRA; choose 'adam' (the reference's) or 'sgd'")
    return InfLoRA(model=model, optimizer=opt, n_experiences=n_experiences, threshold_start=threshold_start,
                   threshold_end=threshold_end, train_mb_size=batch_size, train_epochs=epochs,
                   eval_mb_size=eval_batch_size, device=device, evaluator=evaluator,
                   plugins=list(plugins) + [LRSchedulerPlugin(sched) if schedule == "cosine" else steps])


def stored_params(strategy: SupervisedTemplate) -> int:
    """Branches (one ``A`` and the k, v ``B`` per task per layer) + DualGPM bases + head: InfLoRA's kept state."""
    model: InfLoRAViT = strategy.model
    branches = sum(a.lora_A.numel() + sum(b.numel() for b in a.lora_B) for a in model.adapters)
    head = sum(p.numel() for p in model.head.parameters())
    return int(branches + strategy.subspace_plugin.subspace.numel() + head)
