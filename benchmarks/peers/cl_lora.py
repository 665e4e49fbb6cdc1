"""CL-LoRA (He, Duan & Zhu, CVPR 2025) as an Avalanche strategy for any timm ViT.

The first blocks carry one task-shared LoRA (on q and v) whose input-side matrix is a fixed random orthogonal
projection; only its output-side matrix trains, in every task, and from the second task on it is pulled towards its
state after the previous task by knowledge distillation on the features of the shared blocks alone, the distillation
gradient rescaled per output row by the previous state's row norms ("gradient reassignment"). The later blocks get a
new task-specific LoRA per task, scaled per block and per projection by learnable block weights that an
orthogonality term keeps apart from earlier tasks' weights. Classification is by prototypes: each class is the mean
feature of its training images through its own task's pathway (current shared LoRA + that task's specific LoRA and
block weights), and a test image is scored against every task's classes through that task's pathway.

Reference: JiangpengHe/CL-LoRA@df4e74e ``models/cllora.py``, ``backbone/vit_cllora.py``, ``utils/inc_net.py``
(``OurNet``), ``backbone/linears.py`` (``CosineLinearFeature``), ``exps/cifar.json`` (and ``inr.json``); the second
source, RL-VIG/LibContinual ``core/model/cl_lora.py`` (its ``reproduce/cl_lora``: CIFAR B5-5-20 84.93 vs 85.32
reported), has the same loss, steps and classifier. Facts (file:line at that commit):

- LoRA pair: ``Adapter_lora`` (vit_cllora.py:23-63) is ``up(down(x))``, no scaling; the reference calls the input-side
  ``nn.Linear(d, r)`` ``lora_B`` (:39) and the output-side ``nn.Linear(r, d)`` ``lora_A`` (:38). ``down`` starts as
  ``Q^T`` of ``torch.linalg.qr(torch.rand(d, r))`` (:41-47, uniform, not normal), ``up`` at zero (:54-56).
- placement: ``msa=[1,0,1]`` (exps/cifar.json): q and v only, added to the projections of the attention input
  (``Attention_lora.forward``, vit_cllora.py:94-111: ``q += w_q * lora_q(x)``, ``v += w_v * lora_v(x)``);
  ``general_pos=[0..5]`` shared, ``specfic_pos=[6..11]`` specific (exps/cifar.json; same in inr/ina/vtab.json).
- trainable: shared ``down`` frozen at build (vit_cllora.py:650-659) and after each task (:346-351), shared ``up``
  trainable in every task (:344); a new specific pair per task, both matrices trainable (:327-341); the previous ones
  kept frozen for inference (``add_adapter_to_list`` :356-361); block weights ``nn.Parameter(3, n_specific)``
  uniform(0.5, 1.5) (:208-211), a new one per task, the old ones kept frozen (:363-367); the shared blocks use weight
  1 (``block_weight=None`` -> ones, :99-102). Rows q, k, v: the k row is unused (``msa[1]=0``) but enters the
  orthogonality term.
- training head: a fresh ``CosineLinearFeature`` over the current task's classes (inc_net.py:1103-1109), weight
  U(-1/sqrt d, 1/sqrt d), sigma 1, both trained (linears.py:265-298); dropped from use after the task (:1132-1134).
- training forward: every block with the current LoRAs, final norm, class token (vit_cllora.py:377-418); loss
  ``cross_entropy(proxy_fc logits, y - known)`` (cllora.py:344-355).
- distillation (tasks > 0, cllora.py:357-377): student = the shared blocks only, with the current shared LoRA, then the
  final norm and class token; teacher = the same with the shared LoRA as it was after the previous task
  (``forward_general_cls`` vit_cllora.py:574-602, ``old_adapter_list[t-1]`` snapshot :372-373); both through the
  current training head (inc_net.py:1151-1154), the teacher's logits NOT detached;
  ``loss_kd = 5 * (-(softmax(teacher/2) * log_softmax(student/2)).sum() / B)`` (cllora.py:17-20, 358-364, no T^2);
  ``zero_grad``, backward, then each shared ``up`` gradient is multiplied row-wise by
  ``d * n_i / sum(n)`` with ``n_i`` the L2 norm of row i of the teacher's ``up`` (:370-376), then ``optimizer.step()``
  (:377): a separate SGD step before the cross-entropy step of the same minibatch.
- orthogonality (tasks > 0, cllora.py:23-42, 378-380): ``|cos(flat(w_t), flat(w_j))|`` averaged over earlier tasks'
  block weights ``w_j``, weight 1e-4, added to the cross-entropy; then ``zero_grad``, backward, ``step`` (:383-385).
- optimizer: a fresh ``SGD(trainable, lr, momentum 0.9, weight_decay)`` per task (cllora.py:260-301), both steps of a
  minibatch through it; ``CosineAnnealingLR(T_max=epochs, eta_min=min_lr=0)`` stepped per epoch (:303-311, 392-393).
- prototypes (cllora.py:94-134, 248, 258): after training a task, ``embedding.mean(0)`` of the raw (un-normalised)
  features of its classes' training images loaded with ``mode="test"`` (no augmentation), model in eval mode, through
  the current pathway (``forward_proto``, vit_cllora.py:503-572); never recomputed later.
- inference (``forward_test`` vit_cllora.py:420-485, ``forward_diagonal`` linears.py:301-325, inc_net.py:1163-1167,
  ``use_reweight`` true): for every task i, the pathway (current shared LoRA, task i's specific LoRA and block
  weights) gives a feature; task i's classes score ``cos(feature_i, prototype_c)``; sigma stays 1 (the prototype
  classifier is never trained, inc_net.py:1120-1130).

Deviations, each with its reason:

- timm's fused ``qkv`` is kept and the LoRA outputs are added to its q and v slices; the reference splits the same
  weights into q/k/v ``nn.Linear`` (vit_cllora.py:612-628): the same function, rounding aside.
- the shared blocks run once per image at inference and only the specific blocks run per task; the reference runs
  all blocks from the embedding for every task (vit_cllora.py:437-483), recomputing identical shared-block outputs
  (every pathway uses the current shared LoRA there). Logits are the same; the cost is ``n_shared + T * n_specific``
  blocks instead of ``T * depth``.
- the cross-entropy gradient is taken at the weights its forward pass used (before the distillation step) and applied
  by the second step. The reference computes the cross-entropy forward, then the distillation step updates the
  shared ``up`` and the head in place, then back-propagates the cross-entropy (cllora.py:351-385); that backward reads
  the updated weights through autograd's saved tensors, which only works on a torch whose foreach SGD did not bump
  version counters (its README: torch 2.0.1 on CUDA); today's torch raises "modified by an inplace operation".
- only the last snapshot of the shared LoRA is kept as teacher (the reference appends a copy of all adapters every
  task, ``old_adapter_list``, and reads only the last); the training head is dropped after its task (the reference
  keeps it in ``fc_list``, unused); the prototype classifier holds one ``d``-vector per class (the reference's ``fc`` is
  ``classes x (T * d)``, of which only the diagonal task blocks are read).
- the gradient reassignment divides by the sum of the teacher's row norms; when that sum is 0 (the shared LoRA never
  moved, e.g. lr 0) the reference produces NaN, here the weights fall back to 1.
- the feature is timm's pre-logits (``forward_head(pre_logits=True)``): the class token after the final norm for
  class-token ViTs (the reference's ``x[:, 0]``), the model's own pooling otherwise.

ViT-Tiny (12 blocks, width 192) needs no change: the split is the reference's, the first half of ``model.blocks``
shared and the second half specific, for any depth (``shared_blocks`` sets another count). Rank 8 (CIFAR config) is
kept at width 192. The harness's epochs and batch size replace the reference's 30 and 64.

Checked against the reference code run on CPU (its ``VisionTransformer``, ``OurNet``, ``Learner._init_train``,
``replace_fc`` and ``forward_diagonal`` at ViT-Tiny size, 32 px, loaded with the same timm weights; shims only for
``.cuda()``, timm 0.6 import paths and ``forward_diagonal``'s ``out_dim=768`` default; not committed), two tasks of
2 classes x 4 images, the reference's initial LoRA, block weights and heads copied in, 5 epochs at lr 0.3: training
logits before a step agree to 1e-7; after each task the trained matrices agree to 2e-8 (largest entry 0.05), the test
logits to 4e-7 and the KD loss exactly, against the reference with its cross-entropy gradient taken before the
distillation step; against its literal order (emulating the no-version-bump SGD) they differ by 6e-4 in the shared
``up`` and 6e-3 in the test logits, predictions identical.

Cost: 1 patch embedding per image (``INFERENCE_FORWARD_PASSES``), then ``n_shared + T * n_specific`` transformer
blocks after T tasks (ViT-B or ViT-Tiny at 10 tasks: 6 + 60 = 66 blocks = 5.5 backbone passes, measured 5.5x the
frozen backbone's FLOPs at 224 px; the reference code runs 120 blocks). Training, tasks > 0: per minibatch one full
forward and two forwards over the shared blocks (student and teacher), two optimizer steps; after each task one
prototype pass over the task's training images. Stored after T tasks (``stored_breakdown``): shared LoRA
``n_shared * 2 * 2 d r``, its teacher snapshot (same), specific LoRAs ``T * n_specific * 2 * 2 d r``, block weights
``T * 3 * n_specific``, prototypes ``classes * d`` (ViT-Tiny, r 8, 10 tasks, 100 classes: 36,864 + 36,864 + 368,640
+ 180 + 19,200 = 461,748; ViT-B: 147,456 + 147,456 + 1,474,560 + 180 + 76,800 = 1,846,452).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from avalanche.training.plugins import LRSchedulerPlugin
from avalanche.training.templates import SupervisedTemplate
from torch import Tensor, nn

from avalanche_sdlora import create_backbone

from .class_incremental import ClassIncrementalTemplate
from .first_session import CosineHead, place_logits

__all__ = ["LoRAPair", "CLLoRAQKV", "CLLoRAViT", "CLLoRA", "kd_loss", "orthogonality_loss", "gradient_reassignment",
           "build_strategy", "stored_params", "stored_breakdown", "blocks_per_image", "inference_backbones",
           "REFERENCE_HPARAMS",
           "INFERENCE_FORWARD_PASSES"]

_REF = "JiangpengHe/CL-LoRA@df4e74e"
_CFG = _REF + " exps/cifar.json"
REFERENCE_HPARAMS: dict[str, tuple[object, str]] = {
    "rank": (8, _CFG + " ffn_num (inr.json: 10)"),
    "adapted": ("q and v", _CFG + " msa [1,0,1]; backbone/vit_cllora.py:103-111"),
    "shared_blocks": ("first half (0-5 of 12)", _CFG + " general_pos [0..5]"),
    "specific_blocks": ("second half (6-11 of 12)", _CFG + " specfic_pos [6..11]"),
    "shared_down": ("random orthogonal (QR of U[0,1) d x r), frozen",
                    _REF + " backbone/vit_cllora.py:41-47, 650-659, 346-351"),
    "up_init": ("zeros", _REF + " backbone/vit_cllora.py:54-56"),
    "block_weight_init": ("uniform(0.5, 1.5), shape 3 x n_specific, new per task",
                          _REF + " backbone/vit_cllora.py:208-211, 363-367"),
    "kd_weight": (5.0, _REF + " models/cllora.py:358"),
    "temperature": (2.0, _REF + " models/cllora.py:359"),
    "orth_weight": (1e-4, _REF + " models/cllora.py:380"),
    "optimizer": ("sgd", _CFG + " optimizer; models/cllora.py:280-286 SGD(momentum=0.9)"),
    "lr": (0.03, _CFG + " init_lr = later_lr (inr.json: 0.05)"),
    "momentum": (0.9, _REF + " models/cllora.py:284"),
    "weight_decay": (1e-4, _CFG + " weight_decay (inr.json: 5e-4)"),
    "schedule": ("CosineAnnealingLR(T_max=epochs, eta_min=0) per epoch",
                 _CFG + " scheduler cosine, min_lr 0; models/cllora.py:303-305, 392-393"),
    "epochs": (30, _CFG + " init_epochs = later_epochs (the harness's epochs are used)"),
    "batch_size": (64, _CFG + " batch_size (the harness's batch size is used)"),
    "backbone": ("vit_base_patch16_224_in21k", _CFG + " backbone_type (inr.json: vit_base_patch16_224)"),
    "classifier": ("cosine to per-task-pathway class means of un-augmented training features",
                   _REF + " models/cllora.py:94-134; backbone/linears.py:301-325"),
}
INFERENCE_FORWARD_PASSES = 1  # one patch embedding; the later blocks then run once per task (see blocks_per_image)
OPTIMIZERS = ("sgd", "adam", "adamw")  # the reference's get_optimizer (models/cllora.py:280-299)
SLOTS = {"q": 0, "k": 1, "v": 2}


def blocks_per_image(n_tasks: int, depth: int = 12, shared_blocks: int | None = None) -> int:
    """Transformer blocks one test image runs through after ``n_tasks`` tasks: shared blocks once, the rest per task."""
    shared = depth // 2 if shared_blocks is None else shared_blocks
    return shared + n_tasks * (depth - shared)


def inference_backbones(n_tasks: int) -> float:
    """Backbones' worth of blocks per test image after ``n_tasks`` tasks with the reference's split (half the blocks
    shared): ``(1 + n_tasks) / 2``, whatever the depth."""
    depth = 12
    return blocks_per_image(n_tasks, depth) / depth


class LoRAPair(nn.Module):
    """``up(down(x))`` without scaling; ``down`` starts random orthogonal (rows of ``Q^T``), ``up`` at zero."""

    def __init__(self, width: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Linear(width, rank, bias=False)
        self.up = nn.Linear(rank, width, bias=False)
        with torch.no_grad():
            q, _ = torch.linalg.qr(torch.rand(width, rank))
            self.down.weight.copy_(q.T)
            self.up.weight.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.down(x))


class CLLoRAQKV(nn.Module):
    """A frozen fused qkv ``nn.Linear`` plus the LoRA pairs routed to it for the current forward.

    ``route`` (set by :class:`CLLoRAViT` around each forward, never a submodule): the pairs per adapted slot and the
    block weights (a length-3 vector over q, k, v, or None for weight 1).
    """

    def __init__(self, base_layer: nn.Linear) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear) or base_layer.out_features % 3:
            raise TypeError(f"CLLoRAQKV wraps a fused qkv nn.Linear with 3*dim outputs, got {base_layer!r}")
        self.base_layer = base_layer
        self.dim = base_layer.out_features // 3
        self.route: tuple[tuple[tuple[int, LoRAPair], ...], Tensor | None] | None = None

    def forward(self, x: Tensor) -> Tensor:
        out = self.base_layer(x)
        if self.route is None:
            return out
        pairs, weight = self.route
        parts = list(out.split(self.dim, dim=-1))
        for slot, pair in pairs:
            delta = pair(x)
            parts[slot] = parts[slot] + (delta if weight is None else weight[slot] * delta)
        return torch.cat(parts, dim=-1)


def kd_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """``-(softmax(teacher/T) * log_softmax(student/T)).sum() / B``: the reference's ``_KD_loss`` (no T^2, teacher
    not detached)."""
    soft = F.softmax(teacher / temperature, dim=1)
    return -(soft * F.log_softmax(student / temperature, dim=1)).sum() / student.shape[0]


def orthogonality_loss(previous: Sequence[Tensor], current: Tensor, eps: float = 1e-8) -> Tensor:
    """Mean over ``previous`` of ``|<w/(|w|+eps), w_j/(|w_j|+eps)>|`` on the flattened block weights (0 if none)."""
    if not previous:
        return current.new_zeros(())
    now = current.flatten() / (current.norm() + eps)
    return sum((now * (p.flatten() / (p.norm() + eps))).sum().abs() for p in previous) / len(previous)


@torch.no_grad()
def gradient_reassignment(current: LoRAPair, teacher: LoRAPair) -> None:
    """Scale the ``up`` gradient's row i by ``d * n_i / sum(n)``, ``n`` the teacher ``up``'s row norms (mean 1)."""
    grad = current.up.weight.grad
    if grad is None:
        return
    n = teacher.up.weight.norm(dim=1)
    total = n.sum()
    w = n * (len(n) / total) if total > 0 else torch.ones_like(n)
    current.up.weight.grad = w.unsqueeze(1) * grad


class ProxyHead(CosineHead):
    """The training head over the current task's classes (``CosineLinearFeature``): ``sigma * cos(f, w_c)``."""

    def raw(self, f: Tensor) -> Tensor:
        """Logits over this head's classes only (the distillation compares these)."""
        return self.sigma * (F.normalize(f, dim=1) @ F.normalize(self.weight, dim=1).T)


class CLLoRAViT(nn.Module):
    """Frozen timm ViT: a shared LoRA on the first ``shared_blocks`` blocks, a specific LoRA per task on the rest.

    ``shared`` (per shared block, per slot) trains its ``up`` only; ``teacher`` is its frozen copy from the end of the
    previous task; ``specific[t]`` and ``block_weights[t]`` are task t's; ``prototypes`` (one row per class, with
    ``proto_class`` and ``proto_task``) is the classifier. ``head`` exists while a task trains.
    """

    def __init__(self, backbone: nn.Module, rank: int = 8, shared_blocks: int | None = None,
                 slots: Sequence[str] = ("q", "v")) -> None:
        super().__init__()
        blocks = getattr(backbone, "blocks", None)
        if not blocks or not all(isinstance(getattr(getattr(b, "attn", None), "qkv", None), nn.Linear) for b in blocks):
            raise TypeError(f"{type(backbone).__name__} has no .blocks[*].attn.qkv nn.Linear; CL-LoRA needs a timm "
                            "VisionTransformer such as 'vit_tiny_patch16_224'")
        depth, width = len(blocks), backbone.num_features
        shared = depth // 2 if shared_blocks is None else shared_blocks
        if not 0 < shared < depth:
            raise ValueError(f"shared_blocks must be between 1 and {depth - 1} (the model has {depth} blocks: CL-LoRA "
                             f"needs shared and specific blocks), got {shared}")
        if not 0 < rank <= width:
            raise ValueError(f"rank must be between 1 and the width {width}, got {rank}")
        bad = [s for s in slots if s not in SLOTS]
        if bad or not slots or len(set(slots)) != len(slots):
            raise ValueError(f"slots must be distinct names among q, k, v, got {list(slots)}")
        self.backbone, self.rank, self.width = backbone, rank, width
        self.n_shared, self.slots = shared, tuple(SLOTS[s] for s in slots)
        for p in backbone.parameters():
            p.requires_grad_(False)
        for block in backbone.blocks:
            block.attn.qkv = CLLoRAQKV(block.attn.qkv)
        self.shared = nn.ModuleList(self._pairs() for _ in range(shared))
        for pairs in self.shared:
            for pair in pairs:
                pair.down.requires_grad_(False)
        self.teacher: nn.ModuleList | None = None
        self.specific = nn.ModuleList()
        self.block_weights = nn.ParameterList()
        self.register_buffer("prototypes", torch.zeros(0, width))
        self.register_buffer("proto_class", torch.zeros(0, dtype=torch.long))
        self.register_buffer("proto_task", torch.zeros(0, dtype=torch.long))
        self.head: ProxyHead | None = None

    def _pairs(self) -> nn.ModuleList:
        return nn.ModuleList(LoRAPair(self.width, self.rank) for _ in self.slots)

    @property
    def depth(self) -> int:
        return len(self.backbone.blocks)

    @property
    def n_specific(self) -> int:
        return self.depth - self.n_shared

    @property
    def num_tasks(self) -> int:
        return len(self.specific)

    # ---------------------------------------------------------------------------------------- task boundaries
    def start_task(self, classes: Sequence[int]) -> None:
        """New specific LoRA, block weights and training head; train exactly what the reference trains."""
        for p in self.parameters():
            p.requires_grad_(False)
        self._add_task_modules()
        self.head = ProxyHead(self.width, classes, device=self.prototypes.device)
        for pairs in self.shared:
            for pair in pairs:
                pair.up.requires_grad_(True)
        self.specific[-1].requires_grad_(True)
        self.block_weights[-1].requires_grad_(True)
        self.head.requires_grad_(True)

    def _add_task_modules(self) -> None:
        """A new task's specific LoRA and block weights (random: the caller's random stream advances)."""
        device = self.prototypes.device
        self.specific.append(nn.ModuleList(self._pairs() for _ in range(self.n_specific)).to(device))
        self.block_weights.append(nn.Parameter(torch.empty(3, self.n_specific, device=device).uniform_(0.5, 1.5)))

    def grow(self, tasks: int, prototypes: int) -> None:
        """Make a freshly built model the shape it has after ``tasks`` finished tasks with ``prototypes`` classes
        (values are placeholders for a checkpoint's tensors): the tasks' modules, the teacher, the prototype rows;
        everything frozen, as after :meth:`end_task`. The random initialisations do not touch the caller's streams."""
        if self.num_tasks or self.head is not None or len(self.prototypes):
            raise RuntimeError(f"grow() rebuilds a freshly built CLLoRAViT; this one already has {self.num_tasks} "
                               "task(s)")
        device = self.prototypes.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for _ in range(tasks):
                self._add_task_modules()
        if tasks:
            self.end_task()
        self.requires_grad_(False)
        self.prototypes = self.prototypes.new_zeros(prototypes, self.width)
        self.proto_class = self.proto_class.new_zeros(prototypes)
        self.proto_task = self.proto_task.new_zeros(prototypes)

    def end_task(self) -> None:
        """Freeze the task's LoRA and block weights, snapshot the shared LoRA as the next teacher, drop the head."""
        self.teacher = copy.deepcopy(self.shared).requires_grad_(False)
        self.specific[-1].requires_grad_(False)
        self.block_weights[-1].requires_grad_(False)
        for pairs in self.shared:
            for pair in pairs:
                pair.up.requires_grad_(False)
        self.head = None

    @torch.no_grad()
    def add_prototypes(self, features: Tensor, labels: Tensor, task: int) -> None:
        """Class means of raw features (the reference's ``embedding.mean(0)``), kept with their class and task."""
        classes = labels.unique()
        means = torch.stack([features[labels == c].mean(0) for c in classes]).to(self.prototypes)
        self.prototypes = torch.cat([self.prototypes, means])
        self.proto_class = torch.cat([self.proto_class, classes.to(self.proto_class)])
        self.proto_task = torch.cat([self.proto_task, torch.full_like(classes, task).to(self.proto_task)])

    # ---------------------------------------------------------------------------------------- forwards
    def embed(self, x: Tensor) -> Tensor:
        b = self.backbone
        return b.norm_pre(b.patch_drop(b._pos_embed(b.patch_embed(x))))

    def readout(self, h: Tensor) -> Tensor:
        """timm's pre-logits after the final norm (the class token for class-token ViTs)."""
        return self.backbone.forward_head(self.backbone.norm(h), pre_logits=True)

    def _run(self, h: Tensor, start: int, stop: int, routes: Sequence[tuple]) -> Tensor:
        blocks = self.backbone.blocks
        for j, route in zip(range(start, stop), routes):
            qkv: CLLoRAQKV = blocks[j].attn.qkv
            qkv.route = route
            try:
                h = blocks[j](h)
            finally:
                qkv.route = None
        return h

    def _routes(self, pairs_per_block, weights: Tensor | None = None) -> list[tuple]:
        return [(tuple(zip(self.slots, pairs)), None if weights is None else weights[:, i])
                for i, pairs in enumerate(pairs_per_block)]

    def shared_stage(self, x: Tensor, pairs: nn.ModuleList | None = None) -> Tensor:
        """Embedding and the shared blocks with ``pairs`` (the current shared LoRA by default)."""
        return self._run(self.embed(x), 0, self.n_shared, self._routes(self.shared if pairs is None else pairs))

    def specific_stage(self, h: Tensor, task: int) -> Tensor:
        """The specific blocks with task ``task``'s LoRA and block weights, then the readout."""
        routes = self._routes(self.specific[task], self.block_weights[task])
        return self.readout(self._run(h, self.n_shared, self.depth, routes))

    def features(self, x: Tensor, task: int = -1) -> Tensor:
        """Task ``task``'s pathway (the newest by default): the training feature and the prototypes' feature."""
        return self.specific_stage(self.shared_stage(x), task)

    def distillation_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Training-head logits of the shared blocks' readout with the current and with the teacher's shared LoRA."""
        if self.head is None or self.teacher is None:
            raise RuntimeError("distillation needs a training head and a teacher (tasks after the first)")
        return (self.head.raw(self.readout(self.shared_stage(x))),
                self.head.raw(self.readout(self.shared_stage(x, self.teacher))))

    def forward(self, x: Tensor) -> Tensor:
        if self.head is not None:
            return self.head(self.features(x))
        if not len(self.prototypes):
            raise RuntimeError("CL-LoRA has no prototypes yet; train on an experience before evaluating")
        h = self.shared_stage(x)
        cos = x.new_empty(x.shape[0], len(self.prototypes))
        for t in range(self.num_tasks):
            rows = (self.proto_task == t).nonzero().squeeze(1)
            if rows.numel():
                f = F.normalize(self.specific_stage(h, t).float(), dim=1)
                cos[:, rows] = (f @ F.normalize(self.prototypes[rows], dim=1).T).to(cos)
        return place_logits(cos, self.proto_class)


class CLLoRA(ClassIncrementalTemplate):
    """CL-LoRA training: cross-entropy on the current task's head; from the second task on, a distillation step on the
    shared LoRA before the cross-entropy step of each minibatch; prototypes after each experience."""

    method_label = "CL-LoRA"

    def __init__(self, *, model: CLLoRAViT, optimizer: torch.optim.Optimizer, kd_weight: float = 5.0,
                 temperature: float = 2.0, orth_weight: float = 1e-4, criterion: nn.Module | None = None,
                 **kwargs) -> None:
        if not isinstance(model, CLLoRAViT):
            raise TypeError(f"CLLoRA needs a CLLoRAViT, got {type(model).__name__}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.kd_weight, self.temperature, self.orth_weight = kd_weight, temperature, orth_weight
        self.last_kd_loss: Tensor | None = None
        super().__init__(model=model, optimizer=optimizer, criterion=criterion or nn.CrossEntropyLoss(), **kwargs)

    def model_adaptation(self, model=None):
        model = self.model if model is None else model
        if self.is_training and model.head is None:
            model.start_task(sorted(int(c) for c in self.experience.classes_in_this_experience))
        return super().model_adaptation(model)

    def criterion(self):
        loss = self._criterion(self.mb_output, self.mb_y)  # -inf outside the task's classes: CE over its head
        if self.is_training and self.model.num_tasks > 1:
            bw = self.model.block_weights
            loss = loss + self.orth_weight * orthogonality_loss(list(bw[:-1]), bw[-1])
        return loss

    def backward(self) -> None:
        """Tasks after the first: the cross-entropy gradient at the weights its forward used, then the distillation
        step (its own backward, gradient reassignment and optimizer step), then that gradient for the second step."""
        if self.model.teacher is None:
            return super().backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        grads = torch.autograd.grad(self.loss, params, allow_unused=True)
        self.distillation_step()
        for p, g in zip(params, grads):
            p.grad = g

    def distillation_step(self) -> None:
        model: CLLoRAViT = self.model
        self.optimizer.zero_grad()
        student, teacher = model.distillation_logits(self.mb_x)
        loss = self.kd_weight * kd_loss(student, teacher, self.temperature)
        loss.backward()
        for now, old in zip(model.shared, model.teacher):
            for pair, teacher_pair in zip(now, old):
                gradient_reassignment(pair, teacher_pair)
        self.optimizer.step()
        self.last_kd_loss = loss.detach()

    def _after_training_exp(self, **kwargs) -> None:
        features, labels = self.prototype_pass(**kwargs)
        self.model.add_prototypes(features, labels, self.model.num_tasks - 1)
        self.model.end_task()
        super()._after_training_exp(**kwargs)

    # Checkpoints (benchmarks.peer_checkpoint): the model's state dict holds everything (shared LoRA, teacher, each
    # task's LoRA and block weights, prototypes with their class and task); the structure grows a fresh model to it.
    def checkpoint_structure(self) -> dict:
        """Tasks finished and prototype rows: what :meth:`CLLoRAViT.grow` needs before the tensors load."""
        if self.model.head is not None:
            raise RuntimeError("CL-LoRA is checkpointed between experiences, not while a task trains")
        return {"tasks": self.model.num_tasks, "prototypes": len(self.model.prototypes)}

    def restore_checkpoint(self, tensors: dict[str, Tensor], structure: dict) -> None:
        """Grow the freshly built model to ``structure`` and load ``tensors`` strictly."""
        tasks, prototypes = structure.get("tasks"), structure.get("prototypes")
        if type(tasks) is not int or type(prototypes) is not int or tasks < 0 or prototypes < 0:
            raise ValueError(f"a CL-LoRA checkpoint's structure needs integer 'tasks' and 'prototypes', got {structure}")
        self.model.grow(tasks, prototypes)
        try:
            self.model.load_state_dict(tensors, strict=True)
        except RuntimeError as err:
            raise ValueError(f"the checkpoint's tensors do not fit a CL-LoRA model grown to {tasks} task(s) and "
                             f"{prototypes} prototype(s) (is it this method's, with the same backbone, rank and "
                             f"split?): {err}") from err

    @torch.no_grad()
    def prototype_pass(self, num_workers: int = 0, **kwargs) -> tuple[Tensor, Tensor]:
        """Current-pathway features and labels of the experience's training images, un-augmented, in eval mode."""
        return self.experience_features(self.model.features, num_workers)


def build_strategy(*, model_name: str, checkpoint: str | None, img_size: int, num_classes: int, n_experiences: int,
                   epochs: int, batch_size: int, eval_batch_size: int, device: str, evaluator, plugins: list,
                   lr: float | None = None, optimizer: str | None = None, rank: int = 8,
                   shared_blocks: int | None = None, weight_decay: float = 1e-4, kd_weight: float = 5.0,
                   temperature: float = 2.0, orth_weight: float = 1e-4) -> SupervisedTemplate:
    """CL-LoRA with the reference's CIFAR recipe (``lr``/``optimizer`` None: SGD 0.03, momentum 0.9, cosine) or the
    given overrides (``adam``/``adamw``: the reference's other choices, same lr and weight decay)."""
    model = CLLoRAViT(create_backbone(model_name, checkpoint=checkpoint, img_size=img_size), rank=rank,
                      shared_blocks=shared_blocks)
    lr = 0.03 if lr is None else lr
    name = optimizer or "sgd"
    placeholder = [nn.Parameter(torch.zeros(1))]  # make_optimizer re-points it at each experience's trainable set
    if name == "sgd":
        opt = torch.optim.SGD(placeholder, lr=lr, momentum=0.9, weight_decay=weight_decay)
    elif name == "adam":
        opt = torch.optim.Adam(placeholder, lr=lr, weight_decay=weight_decay)
    elif name == "adamw":
        opt = torch.optim.AdamW(placeholder, lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"unknown optimizer '{name}' for CL-LoRA; choose one of {', '.join(OPTIMIZERS)}")
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(int(epochs), 1), eta_min=0.0)
    return CLLoRA(model=model, optimizer=opt, kd_weight=kd_weight, temperature=temperature, orth_weight=orth_weight,
                  train_mb_size=batch_size, train_epochs=epochs, eval_mb_size=eval_batch_size, device=device,
                  evaluator=evaluator, plugins=list(plugins) + [LRSchedulerPlugin(sched)])


def stored_breakdown(strategy: SupervisedTemplate) -> dict[str, int]:
    """Numbers CL-LoRA holds beyond the frozen backbone, by part (the training head only while a task trains)."""
    model: CLLoRAViT = strategy.model
    count = lambda module: sum(p.numel() for p in module.parameters()) if module is not None else 0  # noqa: E731
    return {"shared_lora": count(model.shared), "kd_teacher": count(model.teacher),
            "specific_lora": count(model.specific), "block_weights": sum(w.numel() for w in model.block_weights),
            "prototypes": model.prototypes.numel(), "training_head": count(model.head)}


def stored_params(strategy: SupervisedTemplate) -> int:
    """Shared LoRA + its teacher snapshot + specific LoRAs + block weights + prototypes (+ the head while training)."""
    return int(sum(stored_breakdown(strategy).values()))
