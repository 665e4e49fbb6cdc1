"""DualPrompt (Wang et al., ECCV 2022): an Avalanche strategy on any timm ViT, prefix-tuned by benchmarks.peers.prefix_vit.

Mechanism, with the reference each fact was read from:

- G-prompt: one prompt shared by all tasks in layers 0-1, trained in every task; E-prompts: a pool of 10
  prompts in layers 2-4, one learnable key per prompt shared by those layers (dualprompt-pytorch
  ``configs/cifar100_dualprompt.py``; ``prompt.py`` ``EPrompt``: ``prompt_key`` of shape ``[pool, embed_dim]``).
- A prompt of length L holds L prefix keys and L prefix values per layer (``[2, L, heads, head_dim]``,
  ``use_prefix_tune_for_*_prompt``); half its tokens are keys, half values. CODA-Prompt's port instead
  splits an L-token prompt into L/2 keys and L/2 values, so its (E 20, G 6) is ``e_length=10, g_length=3`` here.
- Training uses the task's own E-prompt (``use_prompt_mask``: index = task id) and adds the pull constraint
  ``- pull_coeff * mean_b cos(q_b, k_task)`` (``prompt.py`` ``reduce_sim``; ``engine.py`` ``loss - coeff * reduce_sim``;
  CODA-Prompt's port sums ``1 - cos`` over the batch with one key per layer).
  Evaluation picks, per image, the E-prompt whose key is most cosine-similar to the query (top-1) over the
  whole pool, as the references (keys of tasks not yet trained take part).
- Init: prompts and keys uniform(-1, 1) (``prompt.py``, ``vision_transformer.py``: ``nn.init.uniform_(p, -1, 1)``);
  a new task's E-prompt starts as a copy of the previous task's (``shared_prompt_pool=True``, ``engine.py``
  ``train_and_evaluate``); keys are not copied (``shared_prompt_key=False``).
- Head: one linear layer on the prompted [CLS] pre-logits; training masks the logits of every class outside
  the current task (``train_mask``; PILOT: old logits -inf, later ones sliced off) and the optimizer is
  re-created per task (``reinit_optimizer``), so old rows get zero gradient and a fresh Adam: they never
  move. :class:`~avalanche_sdlora.head.FrozenPastHead` does exactly that with old rows as frozen tensors.
  Evaluation scores seen classes only (PILOT ``logits[:, :total_classes]``).

Recipe (``REFERENCE_HPARAMS``): the SD-LoRA authors' ``exps/dualprompt.json`` (WuYichen-97/SD-Lora-CL@8bacded),
identical to LAMDA-PILOT's: Adam lr 1e-3 constant, E-length 5, G-length 5, pull 0.1, no clipping. Other
ports: dualprompt-pytorch CIFAR Adam 0.03 * batch / 256, clip 1.0, pull 1.0 (ImageNet-R: lr 0.005 * b / 256,
E-length 20); mammoth as dualprompt-pytorch. All are options of :func:`build_strategy`.
One deliberate deviation: ``batchwise_prompt`` (PILOT, dualprompt-pytorch CIFAR, mammoth: True) lets each
test batch vote for one E-prompt; Avalanche evaluates one experience at a time, so every batch holds one
task and the vote would hand the method its task identity. The default is the per-image match the paper
describes and dualprompt-pytorch's ImageNet-R config uses (``batchwise_prompt=False``); True is an option.
"""

from __future__ import annotations

from collections.abc import Sequence

import math

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from avalanche.training.templates import SupervisedTemplate
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from avalanche_sdlora.head import FrozenPastHead
from .prefix_vit import Prefix, PrefixViT, PromptStrategy, make_optimizer, prompt_backbone

__all__ = ["DualPromptViT", "DualPrompt", "PromptSelection", "build_strategy", "stored_params", "extra_columns",
           "REFERENCE_HPARAMS",
           "INFERENCE_FORWARD_PASSES", "OPTIONS"]

_PILOT = "SD-LoRA authors' exps/dualprompt.json (= LAMDA-PILOT exps/dualprompt.json)"
_JH = "JH-LEE-KR/dualprompt-pytorch"
REFERENCE_HPARAMS: dict[str, tuple[object, str]] = {
    "optimizer": ("adam", _PILOT),
    "lr": (1e-3, _PILOT + " init_lr (dualprompt-pytorch: 0.03 * batch / 256; ImageNet-R 0.005 * batch / 256)"),
    "betas": ((0.9, 0.999), "Adam defaults: PILOT models/dualprompt.py get_optimizer; dualprompt-pytorch --opt-betas"),
    "weight_decay": (0.0, _PILOT),
    "schedule": ("constant", _PILOT + " scheduler; dualprompt-pytorch --sched constant"),
    "batch_size": (24, _PILOT + " (the harness's own batch size is used)"),
    "epochs": (5, _PILOT + " tuned_epoch, CIFAR (the harness's own epochs are used)"),
    "reinit_optimizer": (True, _PILOT + "; dualprompt-pytorch engine.py"),
    "clip_grad": (None, _PILOT + " (no clipping; dualprompt-pytorch and mammoth clip at 1.0)"),
    "g_layers": ((0, 1), _PILOT + " g_prompt_layer_idx"),
    "g_length": (5, _PILOT + " g_prompt_length (prefix keys and as many values)"),
    "e_layers": ((2, 3, 4), _PILOT + " e_prompt_layer_idx"),
    "e_length": (5, _PILOT + " length (dualprompt-pytorch ImageNet-R 20; CODA-Prompt's port 20 tokens = 10 here)"),
    "pool_size": (10, _PILOT + " size"),
    "top_k": (1, _PILOT),
    "pull_coeff": (0.1, _PILOT + " pull_constraint_coeff (dualprompt-pytorch and mammoth 1.0)"),
    "prompt_init": ("uniform(-1, 1)", _JH + " prompt.py / vision_transformer.py (PILOT's copy of them)"),
    "key_init": ("uniform(-1, 1)", _JH + " prompt.py prompt_key_init='uniform'"),
    "init_from_previous": (True, _PILOT + " shared_prompt_pool (engine.py train_and_evaluate)"),
    "key_match": ("pool", _JH + " prompt.py: top-1 over all pool keys"),
    "batchwise_prompt": (False, "deviation: " + _PILOT + " says True, a per-batch vote that leaks the task "
                         "identity in Avalanche's per-experience evaluation; per-image as the paper and "
                         + _JH + " configs/imr_dualprompt.py"),
    "query": ("frozen ViT pre-logits [CLS]", _JH + " engine.py original_model(input)['pre_logits']"),
    "train_mask": (True, _PILOT + " / " + _JH + " --train_mask"),
}
INFERENCE_FORWARD_PASSES = 2  # query pass + prompted pass


def _uniform(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape).uniform_(-1.0, 1.0))


class DualPromptViT(nn.Module):
    """Frozen ViT + G-prompt + E-prompt pool with keys + growing head; ``forward(x) -> logits``."""

    def __init__(self, backbone: VisionTransformer, *, g_layers: Sequence[int] = (0, 1), g_length: int = 5,
                 e_layers: Sequence[int] = (2, 3, 4), e_length: int = 5, pool_size: int = 10,
                 init_from_previous: bool = True, key_match: str = "pool", batchwise_prompt: bool = False,
                 name: str = "backbone") -> None:
        super().__init__()
        for arg, v in (("g_length", g_length), ("e_length", e_length), ("pool_size", pool_size)):
            least = 0 if arg == "g_length" else 1  # g_length=0: no G-prompt
            if not (isinstance(v, int) and v >= least):
                raise ValueError(f"{arg} must be an integer >= {least}, got {v!r}")
        if key_match not in ("pool", "seen"):
            raise ValueError(f"key_match must be 'pool' (all keys, as the references) or 'seen', got {key_match!r}")
        self.g_layers = tuple(int(i) for i in g_layers) if g_length else ()
        self.e_layers = tuple(int(i) for i in e_layers)
        if not self.e_layers:
            raise ValueError("e_layers is empty; DualPrompt needs E-prompt layers, e.g. e_layers=(2, 3, 4)")
        self.vit = PrefixViT(backbone, self.g_layers + self.e_layers, name=name)
        d = self.vit.prefix_dim
        self.init_from_previous, self.key_match, self.batchwise_prompt = init_from_previous, key_match, batchwise_prompt
        # [layer, key/value, length, width]; the G-prompt is one tensor (always trained), E-prompts one per slot.
        self.g_prompt = _uniform(len(self.g_layers), 2, g_length, d) if self.g_layers else None
        self.e_prompts = nn.ParameterList(_uniform(len(self.e_layers), 2, e_length, d) for _ in range(pool_size))
        self.e_keys = nn.ParameterList(_uniform(self.vit.query_dim) for _ in range(pool_size))
        for p in [*self.e_prompts, *self.e_keys]:
            p.requires_grad_(False)
        self.head = FrozenPastHead(self.vit.query_dim)
        self.register_buffer("task", torch.tensor(-1))  # index of the current (or last) task's E-prompt

    @property
    def pool_size(self) -> int:
        return len(self.e_prompts)

    # ------------------------------------------------------------------ task lifecycle (PromptTaskPlugin)
    @torch.no_grad()
    def start_task(self) -> None:
        """Open the next E-prompt and key for training; copy the previous E-prompt into it (``init_from_previous``)."""
        t = int(self.task) + 1
        if t >= self.pool_size:
            raise ValueError(f"task {t} needs E-prompt {t}, but the pool has {self.pool_size}; pass pool_size >= the "
                             "number of experiences")
        if t > 0 and self.init_from_previous:
            self.e_prompts[t].copy_(self.e_prompts[t - 1])
        self.e_prompts[t].requires_grad_(True)
        self.e_keys[t].requires_grad_(True)
        self.task.fill_(t)

    def end_task(self) -> None:
        t = int(self.task)
        self.e_prompts[t].requires_grad_(False)
        self.e_keys[t].requires_grad_(False)

    # ------------------------------------------------------------------ forward
    def _prefixes(self, e_prompt: Tensor, batch: int) -> dict[int, Prefix]:
        """Per-layer (keys, values) from the chosen E-prompts ``[B, n_e, 2, L, D]`` and the shared G-prompt."""
        out: dict[int, Prefix] = {}
        for j, layer in enumerate(self.e_layers):
            out[layer] = (e_prompt[:, j, 0], e_prompt[:, j, 1])
        for j, layer in enumerate(self.g_layers):
            gk, gv = (t.expand(batch, -1, -1) for t in self.g_prompt[j])
            if layer in out:  # both prompts in one layer: E then G, as CODA-Prompt's port concatenates them
                ek, ev = out[layer]
                gk, gv = torch.cat([ek, gk], 1), torch.cat([ev, gv], 1)
            out[layer] = (gk, gv)
        return out

    def key_similarity(self, q: Tensor) -> Tensor:
        """Cosine similarity of each query with each key, ``[B, pool]``."""
        keys = torch.stack(list(self.e_keys))
        return F.normalize(q, dim=1) @ F.normalize(keys, dim=1).T

    def select(self, q: Tensor) -> Tensor:
        """Test-time E-prompt index per image: the most similar key (``key_match='seen'``: among trained tasks only)."""
        sim = self.key_similarity(q)
        if self.key_match == "seen":
            n = int(self.task) + 1
            if n <= 0:
                raise ValueError("no task trained yet; key_match='seen' has no key to match")
            sim = sim[:, :n]
        idx = sim.argmax(dim=1)
        if self.batchwise_prompt:  # one prompt for the whole batch: the most frequent top-1 (smallest on ties)
            idx = torch.full_like(idx, int(torch.bincount(idx).argmax()))
        return idx

    def logits_with(self, x: Tensor, idx: Tensor) -> Tensor:
        """Logits with E-prompt ``idx[b]`` for image b (and the G-prompt)."""
        e = torch.stack(list(self.e_prompts))[idx]
        return self.head(self.vit(x, self._prefixes(e, x.shape[0])))

    def forward_train(self, x: Tensor, with_extra: bool = True) -> tuple[Tensor, Tensor | None]:
        """Logits with the current task's E-prompt and the pull term ``-mean_b cos(q_b, key_task)`` (unweighted)."""
        t = int(self.task)
        if t < 0:
            raise ValueError("no task started; DualPrompt trains through its strategy (or call start_task() first)")
        pull = None
        if with_extra:  # the query only feeds the pull term: training never matches keys
            q = self.vit.query(x)
            pull = -(F.normalize(q, dim=1) @ F.normalize(self.e_keys[t], dim=0)).mean()
        e = self.e_prompts[t].unsqueeze(0).expand(x.shape[0], *self.e_prompts[t].shape)
        return self.head(self.vit(x, self._prefixes(e, x.shape[0]))), pull

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return self.forward_train(x)[0]
        with torch.no_grad():
            idx = self.select(self.vit.query(x))
        self.last_selection = idx  # read by PromptSelection: which E-prompt each test image was given
        return self.logits_with(x, idx)


class PromptSelection(SupervisedPlugin):
    """How often test-time key matching gives an image its own task's E-prompt: the fraction of the test images of
    the tasks learned so far whose selected prompt is their task's (DualPrompt's mechanism works only as far as
    this holds; Avalanche has no such metric). In a class-incremental stream test experience ``j`` holds task
    ``j``'s classes, so an image's own prompt is the index of its experience.
    """

    def __init__(self) -> None:
        super().__init__()
        self.hits, self.images, self.fraction = 0, 0, math.nan

    def before_eval(self, strategy, **kwargs) -> None:
        self.hits, self.images = 0, 0

    def after_eval_iteration(self, strategy, **kwargs) -> None:
        own = strategy.experience.current_experience
        if own > int(strategy.model.task):
            return  # a task not learned yet has no prompt of its own
        picked = strategy.model.last_selection
        self.hits += int((picked == own).sum())
        self.images += picked.numel()

    def after_eval(self, strategy, **kwargs) -> None:
        self.fraction = self.hits / self.images if self.images else math.nan


class DualPrompt(PromptStrategy):
    """DualPrompt: the task's E-prompt and the pull constraint in training, key matching at test time."""

    def __init__(self, *, model: DualPromptViT, pull_coeff: float = 0.1, **kwargs) -> None:
        if not isinstance(model, DualPromptViT):
            raise TypeError(f"DualPrompt needs a DualPromptViT, got {type(model).__name__}")
        super().__init__(model=model, extra_loss_weight=pull_coeff, **kwargs)

    @property
    def pull_coeff(self) -> float:
        return self.extra_loss_weight


_MODEL_OPTIONS = ("g_layers", "g_length", "e_layers", "e_length", "pool_size", "init_from_previous", "key_match",
                  "batchwise_prompt")
_STRATEGY_OPTIONS = ("pull_coeff", "clip_grad")
OPTIONS = _MODEL_OPTIONS + _STRATEGY_OPTIONS  # the keywords build_strategy takes beside the common ones


def build_strategy(*, model_name: str, checkpoint: str | None, img_size: int, num_classes: int, n_experiences: int,
                   epochs: int, batch_size: int, eval_batch_size: int, device: str, evaluator, plugins: list,
                   lr: float | None = None, optimizer: str | None = None, **options) -> SupervisedTemplate:
    """DualPrompt on ``model_name``: the reference recipe (``REFERENCE_HPARAMS``) unless ``lr``/``optimizer`` are given.

    ``options``: model ``g_layers, g_length, e_layers, e_length, pool_size, init_from_previous, key_match,
    batchwise_prompt``; strategy ``pull_coeff, clip_grad``. ``num_classes`` only bounds the labels (the head grows).
    """
    unknown = sorted(set(options) - set(_MODEL_OPTIONS) - set(_STRATEGY_OPTIONS))
    if unknown:
        raise TypeError(f"unknown DualPrompt options {unknown}; allowed: {list(_MODEL_OPTIONS + _STRATEGY_OPTIONS)}")
    model_kw = {k: options[k] for k in _MODEL_OPTIONS if k in options}
    pool = model_kw.get("pool_size", REFERENCE_HPARAMS["pool_size"][0])
    if n_experiences > pool:
        raise ValueError(f"DualPrompt keeps one E-prompt per task: n_experiences={n_experiences} needs "
                         f"pool_size >= {n_experiences} (pool_size={pool})")
    if num_classes <= 0:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    backbone = prompt_backbone(model_name, checkpoint=checkpoint, img_size=img_size, method="DualPrompt")
    model = DualPromptViT(backbone, name=model_name, **model_kw)
    ref = {k: v for k, (v, _) in REFERENCE_HPARAMS.items()}
    opt = make_optimizer(optimizer or ref["optimizer"], ref["lr"] if lr is None else lr, model.parameters())
    return DualPrompt(model=model, optimizer=opt, pull_coeff=options.get("pull_coeff", ref["pull_coeff"]),
                      clip_grad=options.get("clip_grad", ref["clip_grad"]), train_mb_size=batch_size,
                      train_epochs=epochs, eval_mb_size=eval_batch_size, device=device, evaluator=evaluator,
                      plugins=[*(plugins or []), PromptSelection()])


def extra_columns(strategy: SupervisedTemplate, experience: int) -> dict[str, float]:
    """The per_task.csv column of the last evaluation: the fraction of seen-task test images given their own task's
    E-prompt (:class:`PromptSelection`)."""
    selection = next(p for p in strategy.plugins if isinstance(p, PromptSelection))
    return {"own_prompt_fraction": selection.fraction}


def stored_params(strategy: SupervisedTemplate) -> int:
    """Numbers kept beyond the frozen backbone: G-prompt, the whole E-prompt pool and its keys, head rows."""
    m = strategy.model
    return sum(p.numel() for n, p in m.named_parameters() if not n.startswith("vit."))
