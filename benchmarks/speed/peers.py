"""The peer methods as ``benchmarks.speed --peers`` measures them (issues 16, 17): as ``compare`` builds them.

Every strategy comes from its registered builder (``benchmarks.methods``: the reference recipe, its optimizer) and is
brought, without training, to the state it has during the last of 10 tasks: DualPrompt with its 10 E-prompts and keys
(the 10th trainable), CODA-Prompt with the components of 10 tasks, InfLoRA with 10 branches (input matrices set from
data by its own plugin, kept subspace updated after each task), RanPAC and APER adapted (adapters frozen) with their
classifier fitted over 100 classes, every head with 100 classes; CL-LoRA with 10 task-specific LoRAs and block
weights, a teacher snapshot of its shared LoRA and 100 prototypes; MOS with 10 stored adapters, their running sums,
prototypes and the mean and covariance of 100 classes; CaRE with 10 experts, routers and latent heads per block, its
anchored shared adapters and 100 class Gaussians. Values training would set are random: costs depend on shapes, not
values. What each method trains by gradient is timed as one step of its last task (RanPAC and APER
only train in the first session: that step; CL-LoRA, MOS and CaRE: one iteration of their own strategy's forward,
criterion, backward and optimizer step, CL-LoRA's distillation step included), and the analytic per-experience update
(RanPAC's ridge fit at its M, prototype means, InfLoRA's SVDs and subspace update, MOS's and CaRE's classifier
alignment on features drawn from the stored class Gaussians) is timed apart.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from avalanche_sdlora.assets import default_asset
from avalanche_sdlora.strategy import current_classes_view

from ..config import RunConfig
from ..methods import get_method
from ..peers import care as care_peer
from ..peers import classifier_alignment as care_alignment
from ..peers import cl_lora as cl_lora_peer
from ..peers import inflora as inflora_peer
from ..peers import mos as mos_peer
from ..peers import ranpac as ranpac_peer
from .models import N_CLASSES, N_HEAD_TASKS, build_backbone, build_sdlora, fill_head, weights
from .timing import PassCounter, batch, step_fn, strategy_step_fn, train_step_fn

# Registry names of the peer methods, in table order.
PEER_METHODS = ("dualprompt", "coda-prompt", "l2p", "inflora", "ranpac", "aper", "simplecil", "cl-lora", "mos", "care")
PROMPT_SETTINGS = ("dualprompt", "coda_prompt", "l2p")
# The paper's claim: every prompt method costs about 2x merged SD-LoRA at inference; a ratio must reach this.
CLAIM_TARGET = 1.9
# trained by SGD steps in every task (their state is kept)
SGD_PEERS = ("dualprompt", "coda-prompt", "l2p", "inflora", "cl-lora", "mos", "care")
PEER_EVERY = {"infer": 3, "train": 2}  # peers run every n-th repetition of the interleaved runs (as L2P at inference)
# Setting of the speed tables -> registry name (whose INFERENCE_FORWARD_PASSES trait the counted passes must equal).
SETTING_METHOD = {"backbone": None, "sdlora_merged": "sdlora", "dualprompt": "dualprompt",
                  "coda_prompt": "coda-prompt", "l2p": "l2p", "inflora_merged": "inflora",
                  "inflora_branches": "inflora", "ranpac": "ranpac", "aper": "aper", "simplecil": "simplecil",
                  "cl_lora": "cl-lora", "mos": "mos", "care": "care"}
# Issue 31's peers: registry name -> their module (each has ``stored_breakdown``); set up by ``_LAST_TASK`` below.
NEW_PEERS = {"cl-lora": cl_lora_peer, "mos": mos_peer, "care": care_peer}
# Paper Table 5 (ImageNet-R 20 tasks, ViT-B/16 at 224 px), GFLOPs per image.
PAPER_GFLOPS = {"l2p": 70.14, "dualprompt": 70.26, "coda_prompt": 70.61, "inflora_merged": 35.12,
                "sdlora_merged": 35.12}
PAPER_SOURCE = "SD-LoRA paper Table 5 (ImageNet-R, 20 tasks, ViT-B/16 at 224 px)"
UPDATE_IMAGES = 1000  # one experience of the cifar100-tiny128 protocol: 10 classes x 100 training images
INFLORA_IMAGES_PER_CLASS = 2  # images per class whose layer covariances set InfLoRA's branches in the setup


def run_config(args, img: int) -> RunConfig:
    """The RunConfig the builders see: the protocol's 10 experiences, this model, size, batch and device."""
    options = (("ranpac", "M", int(args.ranpac_m)),) if getattr(args, "ranpac_m", None) else ()
    return RunConfig.for_protocol(model=args.model, img_size=img, checkpoint=weights(args),
                                  n_experiences=N_HEAD_TASKS, batch_size=args.batch_size, device=args.device,
                                  method_options=options)


def build_strategy(method: str, cfg: RunConfig):
    """The method's strategy exactly as ``compare`` builds it (no loggers)."""
    from avalanche.training.plugins import EvaluationPlugin

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "No loggers specified"
        evaluator = EvaluationPlugin(loggers=[])
    torch.manual_seed(0)
    return get_method(method).build(cfg, N_CLASSES, evaluator, [])


def task_batches(args, img: int) -> tuple[list[Tensor], str]:
    """One batch of training images per task for InfLoRA's covariance passes: CIFAR-100 when the assets have it."""
    if args.quick or default_asset("cifar100.npz") is None:
        return [batch(args, img, seed=t)[0] for t in range(N_HEAD_TASKS)], "random images"
    from ..inputs import make_benchmark

    per = INFLORA_IMAGES_PER_CLASS
    bm = make_benchmark(RunConfig.for_protocol(img_size=img, train_per_class=per, test_per_class=1))
    out = []
    for exp in bm.train_stream:
        ds = exp.dataset.eval()
        out.append(next(iter(DataLoader(ds, batch_size=len(ds), shuffle=False)))[0].to(args.device))
    return out, f"{per} CIFAR-100 training images per class ({len(out[0])} per task), un-augmented"


@dataclass
class Peer:
    """One method set up as during its last of 10 tasks."""

    method: str
    strategy: Any
    infer: dict[str, nn.Module]  # setting -> inference model (eval mode)
    update_seconds: float | None = None  # analytic per-experience update, when timed
    update_note: str = ""
    extra_passes: float | None = None  # counted forward passes per training image outside SGD steps, per experience
    stored: dict[str, int] = field(default_factory=dict)  # part -> count; "total" is the method's stored_params
    stored_note: str = ""


def _random_(t: Tensor, gen: torch.Generator, scale: float = 0.02) -> None:
    with torch.no_grad():
        t.copy_(torch.randn(t.shape, generator=gen) * scale)


def _prompts(strategy) -> None:
    """DualPrompt / CODA-Prompt: open the prompts (components) of 10 tasks; the 10th stays trainable."""
    model = strategy.model
    for t in range(N_HEAD_TASKS):
        if t:
            model.end_task()
        model.start_task()
    fill_head(model.head)
    strategy.make_optimizer()


def _inflora(strategy, batches: list[Tensor] | None, x: Tensor, time_update: bool) -> tuple[float | None, float | None]:
    """10 InfLoRA tasks through its own plugin (covariances -> input matrices, then the subspace update) on
    ``batches``; without batches the input matrices are random (shapes only, for FLOP counts). Returns the timed
    analytic update (SVDs + DualGPM) and the forward passes per training image its plugin made in the last task."""
    model, plugin = strategy.model, strategy.subspace_plugin
    gen = torch.Generator().manual_seed(0)
    per = N_CLASSES // N_HEAD_TASKS
    seconds = passes = None
    for t in range(N_HEAD_TASKS):
        fake = None if batches is None else SimpleNamespace(model=model, dataloader=[(batches[t],)], device=x.device,
                                                             make_optimizer=lambda **kwargs: None)
        counter = PassCounter(model) if fake is not None and t == N_HEAD_TASKS - 1 else None
        if fake is None:
            model.add_task()
            for a in model.adapters:
                _random_(a.lora_A[-1], gen, 1 / math.sqrt(3 * a.in_features))
        else:
            plugin.before_training_exp(fake)
        for a in model.adapters:
            _random_(a.lora_B[-1], gen)  # stands in for the trained output-side matrices
        model.head.add_classes(list(range(t * per, (t + 1) * per)))
        if fake is not None:
            plugin.after_training_exp(fake)
        if counter is not None:
            passes = counter.stop() / len(batches[t])
    if time_update and batches is not None:
        seconds = _time_inflora_update(model, plugin, batches[-1])
    strategy.make_optimizer()
    return seconds, passes


def _time_inflora_update(model, plugin, images: Tensor) -> float:
    """Seconds of InfLoRA's analytic work per experience (its data passes excluded): the projected covariances' SVDs
    that set the input matrices, and the DualGPM update of the kept subspace (on a copy)."""
    covs = model.layer_input_covariances([images])
    subspace = copy.deepcopy(plugin.subspace)
    t0 = time.perf_counter()
    for i, cov in enumerate(covs):
        inflora_peer.input_matrix(subspace.project(i, cov), model.rank)
    subspace.update(covs, plugin.thresholds[-1])
    return time.perf_counter() - t0


def _fitted(strategy, x: Tensor, time_update: bool) -> tuple[float | None, float]:
    """RanPAC / APER / SimpleCIL after 10 tasks: adapters frozen, classifier fitted over 100 classes.

    Timed: the classifier's fit from one experience's features (``UPDATE_IMAGES`` rows; RanPAC: statistics, ridge
    selection and the M x M solve). Untimed RanPAC heads take the fitted shapes directly (the solve is timed once).
    Returns (seconds or None, forward passes per training image of the feature pass).
    """
    model = strategy.model
    if not model.adapted:
        model.end_adaptation()
    gen = torch.Generator().manual_seed(0)
    counter = PassCounter(model)
    with torch.no_grad():
        width = model.features(x).shape[1]  # the classifier's input, from the feature pass the strategy runs
    passes = counter.stop() / x.shape[0]
    feats = torch.randn(UPDATE_IMAGES, width, generator=gen).to(x.device)
    labels = (torch.arange(UPDATE_IMAGES) % N_CLASSES).to(x.device)
    head = model.classifier
    if isinstance(head, ranpac_peer.RandomProjectionRidge) and not time_update:
        head.class_ids = torch.arange(N_CLASSES, device=x.device)
        head.weight = torch.randn(N_CLASSES, head.dim, generator=gen).to(x.device)
        return None, passes
    t0 = time.perf_counter()
    head.absorb(feats, labels)
    seconds = time.perf_counter() - t0
    return (seconds if time_update else None), passes


def _task_classes(t: int) -> list[int]:
    per = N_CLASSES // N_HEAD_TASKS
    return list(range(t * per, (t + 1) * per))


def _random_params_(module: nn.Module, gen: torch.Generator, scale: float = 0.02) -> None:
    for p in module.parameters():
        _random_(p, gen, scale)


def _gaussians(n: int, dim: int, gen: torch.Generator, device) -> tuple[Tensor, Tensor]:
    """Random class means and diagonal positive-definite covariances (shapes as stored: n x d, n x d x d)."""
    means = torch.randn(n, dim, generator=gen)
    covs = torch.diag_embed(1 + torch.rand(n, dim, generator=gen))
    return means.to(device), covs.to(device)


def _in_last_task(strategy, start: Callable[[nn.Module, int], None],
                  finish: Callable[[nn.Module, int], None]) -> nn.Module:
    """``start(model, t)`` for each of the tasks and ``finish(model, t)`` for all but the last: ``strategy.model``
    is in its last task, its optimizer pointed at what trains there. Returns a copy also finished after the last
    task (the model inference uses and the state it stores)."""
    model = strategy.model
    for t in range(N_HEAD_TASKS):
        start(model, t)
        if t < N_HEAD_TASKS - 1:
            finish(model, t)
    after = copy.deepcopy(model)
    finish(after, N_HEAD_TASKS - 1)
    strategy.make_optimizer()
    return after


def _cl_lora(strategy, x: Tensor) -> nn.Module:
    """CL-LoRA: 9 tasks finished (their specific LoRA and block weights frozen, prototypes of their classes, the
    shared LoRA's teacher snapshot), the 10th started (its specific LoRA, block weights and training head trainable).
    Returns a copy finished after the 10th task: the inference model and the stored state."""
    strategy.model.to(x.device)
    gen = torch.Generator().manual_seed(0)

    def finish(m, t: int) -> None:  # prototypes of the task's classes (one random feature each), then end_task
        classes = torch.tensor(_task_classes(t), device=x.device)
        m.add_prototypes(torch.randn(len(classes), m.width, generator=gen).to(x.device), classes, t)
        m.end_task()

    def start(m, t: int) -> None:
        m.start_task(_task_classes(t))
        for pairs in (*m.shared, *m.specific[-1]):
            for pair in pairs:
                _random_(pair.up.weight, gen)  # up starts at zero; trained values stand in

    return _in_last_task(strategy, start, finish)


def _mos(strategy, x: Tensor) -> nn.Module:
    """MOS: 9 tasks finished (adapter snapshots and running sums, class statistics, prototypes), the 10th training
    its current adapter (class-to-task map set). Returns a copy finished after the 10th task."""
    model = strategy.model.to(x.device)
    gen = torch.Generator().manual_seed(0)
    dim = model.head.in_features

    def finish(m, t: int) -> None:
        classes = torch.tensor(_task_classes(t), device=x.device)
        for mlp in m.mlps:
            _random_params_(mlp.adapter, gen)  # the trained adapter stands in
        m.snapshot()
        m.add_statistics(classes, *_gaussians(len(classes), dim, gen, x.device))
        m.prototypes.absorb(torch.randn(len(classes), dim, generator=gen).to(x.device), classes)
        m.task += 1

    def start(m, t: int) -> None:
        m.class_task[_task_classes(t)] = t

    return _in_last_task(strategy, start, finish)


def _care(strategy, x: Tensor) -> nn.Module:
    """CaRE: 10 tasks added (per block: 10 experts, routers and latent heads, the 10th trainable; the head's 10 row
    blocks), the shared adapters anchored as in a later task's phases, Gaussians of 100 classes. Training only
    anchors and trains; inference reads no statistics: one model serves both."""
    model = strategy.model.to(x.device)
    gen = torch.Generator().manual_seed(0)
    for t in range(N_HEAD_TASKS):
        model.add_task(_task_classes(t))
    for moe in model.moes:
        for adapter in (moe.shared, *moe.experts):
            _random_(adapter.scale, gen)  # zero-initialised: a fresh adapter is a no-op
        moe.anchor_shared()
    model.stats.means, model.stats.covs = _gaussians(N_CLASSES, model.head.in_features, gen, x.device)
    strategy.make_optimizer()
    return model


_LAST_TASK = {"cl-lora": _cl_lora, "mos": _mos, "care": _care}
STORED_NOTES = {"cl-lora": "after the 10th task (its training head dropped); kd_teacher: the shared LoRA as after the "
                            "9th task; prototypes: one d-vector per class (d={d})",
                "mos": "after the 10th task; class_covariances: one d x d matrix per class (d={d}); adapter_sums: the "
                       "running sums its merge pulls towards",
                "care": "after the 10th task; class_covariances: one d x d matrix per class (d={d}); experts, routers "
                        "and latent heads: one per task and block"}


def _time_alignment(method: str, strategy, after: nn.Module, quick: bool) -> tuple[float, str]:
    """Seconds of MOS's / CaRE's classifier alignment after the 10th task, on a copy of the head: features drawn from
    the 100 stored class Gaussians, the method's epochs (``quick``: one), lr and draws per class (CaRE aligns twice in
    a later task, after each of its two phases: both are timed). CL-LoRA has no analytic update (its prototypes are
    class means of a feature pass)."""
    head = copy.deepcopy(after.head)
    epochs = 1 if quick else (strategy.ca_epochs if method == "mos" else strategy.align_epochs)
    torch.manual_seed(0)  # the draws use torch's global generator, as the references'
    t0 = time.perf_counter()
    if method == "mos":
        k = 5 * strategy.train_mb_size
        mos_peer.align_classifier(head, after.stat_classes, after.class_means, after.class_covs,
                                  epochs=epochs, lr=strategy.ca_lr, weight_decay=strategy.weight_decay,
                                  samples_per_class=k)
        runs = 1
    else:
        k = strategy.align_samples
        for _ in range(2):
            care_alignment.align_classifier(head, after.stats, epochs=epochs, lr=strategy.align_lr,
                                            per_class=k, scale=after.scale)
        runs = 2
    seconds = time.perf_counter() - t0
    what = f"{epochs} epoch(s){' (--quick)' if quick else ''} x {N_CLASSES} classes"
    return seconds, (f"classifier alignment{' x2' if runs == 2 else ''}: {what}, {k} features drawn per class from "
                     f"its d x d Gaussian (d={after.head.in_features}), head-only SGD steps (statistics and prototype "
                     "passes excluded)")


def build_peer(method: str, args, img: int, x: Tensor, *, batches: list[Tensor] | None = None,
               time_update: bool = False) -> Peer:
    """``method`` built by its registered builder and set up as during its last of 10 tasks."""
    strategy = build_strategy(method, run_config(args, img))
    peer = Peer(method, strategy, {})
    model = strategy.model
    if method in ("dualprompt", "coda-prompt"):
        _prompts(strategy)
        peer.infer[method.replace("-", "_")] = model
    elif method == "l2p":
        peer.infer["l2p"] = strategy.inference_model()
    elif method == "inflora":
        peer.update_seconds, peer.extra_passes = _inflora(strategy, batches, x, time_update)
        peer.update_note = (f"SVDs of the {len(model.adapters)} projected layer covariances + DualGPM update "
                            "(covariance passes excluded)")
        merged = copy.deepcopy(model)
        merged.merge()
        peer.infer.update(inflora_merged=merged, inflora_branches=model)
        sub = strategy.subspace_plugin.subspace
        peer.stored = {"subspace_bases": sub.numel(), "head": sum(p.numel() for p in model.head.parameters())}
        peer.stored_note = "branches: one A and the k, v B per task and block"
    elif method in NEW_PEERS:
        after = _LAST_TASK[method](strategy, x)
        peer.infer[method.replace("-", "_")] = after
        state = SimpleNamespace(model=after)
        peer.stored = {k: v for k, v in NEW_PEERS[method].stored_breakdown(state).items() if v}
        peer.stored_note = STORED_NOTES[method].format(d=after.backbone.num_features)
        if time_update and method != "cl-lora":
            peer.update_seconds, peer.update_note = _time_alignment(method, strategy, after, args.quick)
    else:  # ranpac, aper, simplecil
        # A timed forward repeats one minibatch: the evaluation feature cache would serve it without a pass.
        model.feature_cache = None
        peer.update_seconds, peer.extra_passes = _fitted(strategy, x, time_update)
        peer.infer[method] = model
        if method == "ranpac":
            head = model.classifier
            peer.stored = dict(ranpac_peer.stored_breakdown(strategy))
            peer.stored_note = f"M={head.dim}; G is M x M in {str(head.G.dtype).replace('torch.', '')}"
            peer.update_note = f"M={head.dim}: G, Q from {UPDATE_IMAGES} features, ridge selection, M x M solve"
        else:
            peer.update_note = f"class means of {UPDATE_IMAGES} features"
    for m in peer.infer.values():
        m.eval()
    after = SimpleNamespace(model=peer.infer[method.replace("-", "_")]) if method in NEW_PEERS else strategy
    peer.stored["total"] = int(get_method(method).stored_params(after))
    if method == "inflora":  # the branches are what the method's count holds besides the bases and the head
        peer.stored = {"branches": peer.stored["total"] - sum(v for k, v in peer.stored.items() if k != "total"),
                       **peer.stored}
    return peer


def build_peers(args, img: int, x: Tensor, *, with_data: bool, time_update: bool) -> tuple[dict[str, Peer], str]:
    """Every peer method at this size; ``with_data``: InfLoRA's setup runs its plugin on training images."""
    batches, source = task_batches(args, img) if with_data else (None, "")
    return {m: build_peer(m, args, img, x, batches=batches, time_update=time_update) for m in PEER_METHODS}, source


# ------------------------------------------------------------------------------------------- training steps
def _ce(y: Tensor, classes: list[int]):
    columns = torch.tensor(classes, device=y.device)
    return lambda logits: F.cross_entropy(*current_classes_view(logits, y, columns))


def train_steps(peers: dict[str, Peer], args, img: int, x: Tensor, y: Tensor, classes: list[int],
                head: nn.Module) -> dict[str, Callable[[], float]]:
    """One training step of each method's last task with its own loss and optimizer, and the two references:
    the frozen backbone training only its head's last chunk, and SD-LoRA in its 10th task (9 stored tasks)."""
    ce = _ce(y, classes)
    steps = {"backbone_head_only": train_step_fn(build_backbone(args, img, head), x, y, classes),
             "sdlora_9stored": train_step_fn(build_sdlora(args, img, stored=N_HEAD_TASKS - 1), x, y, classes)}
    for method in ("dualprompt", "coda-prompt"):
        s = peers[method].strategy
        w = s.extra_loss_weight

        def loss(s=s, w=w):
            logits, extra = s.model.forward_train(x, with_extra=w != 0)  # DualPrompt: pull term; CODA: mu = 0
            return ce(logits) if extra is None else ce(logits) + w * extra

        steps[method.replace("-", "_")] = step_fn(s.model, loss, s.optimizer)
    l2p = peers["l2p"].strategy

    def l2p_loss():  # LearningToPrompt.forward + criterion: query pass, prompted pass, mask, key-similarity term
        with torch.no_grad():
            cls = l2p.original_vit(x)["pre_logits"]
        res = l2p.model(x=x, cls_features=cls, train=l2p.train_prompt_mask)
        return ce(res["logits"]) - l2p.sim_coefficient * res["reduce_sim"]

    steps["l2p"] = step_fn(l2p.model, l2p_loss, l2p.optimizer)
    inf = peers["inflora"].strategy
    steps["inflora"] = step_fn(inf.model, lambda: ce(inf.model(x)), inf.optimizer)
    for method in NEW_PEERS:  # the strategy's own forward, criterion, backward and optimizer_step
        s = peers[method].strategy
        steps[method.replace("-", "_")] = strategy_step_fn(s, x, y, classes)
    for method in ("ranpac", "aper"):  # first session: adapters and a cosine head over the first task's classes
        s = build_strategy(method, run_config(args, img))
        s.model.start_adaptation(classes)
        s.make_optimizer()
        steps[f"{method}_first_session"] = step_fn(s.model, lambda s=s: ce(s.model(x)), s.optimizer)
    return steps


# ------------------------------------------------------------------------------------------- stored state
def stored_rows(peers: dict[str, Peer], args) -> list[dict]:
    """Stored numbers after 10 tasks (each method's ``stored_params``, with parts where it has them), and
    SD-LoRA's by the same rule (head included) for comparison."""
    sd = build_sdlora(args, 32, stored=N_HEAD_TASKS, current=False)
    rows = [{"method": "sdlora", "setting": f"task={N_HEAD_TASKS}", "task": N_HEAD_TASKS,
             "measure": "stored_params_after_10_tasks", "part": "total",
             "value": int(get_method("sdlora").stored_params(SimpleNamespace(model=sd))),
             "unit": "count", "note": "10 stored directions + magnitudes + head (registry's stored_params)"}]
    for method, p in peers.items():
        for part, v in p.stored.items():
            rows.append({"method": method, "setting": f"task={N_HEAD_TASKS}", "task": N_HEAD_TASKS,
                         "measure": "stored_params_after_10_tasks", "part": part, "value": int(v), "unit": "count",
                         "note": p.stored_note if part == "total" else ""})
    return rows


# ------------------------------------------------------------------------------------------- paper architecture
def paper_architecture_models(args) -> Any:
    """(setting, model) for the paper's architecture with random weights, one at a time (FLOPs only, batch 1)."""
    pa = copy.copy(args)
    pa.model, pa.checkpoint, pa.random_weights, pa.batch_size = args.paper_model, None, True, 1
    img = args.paper_img_size
    x = torch.randn(1, 3, img, img)
    merged = build_sdlora(pa, img, stored=N_HEAD_TASKS, current=False, merged=True)
    yield "backbone", build_backbone(pa, img, merged.head).eval(), x
    yield "sdlora_merged", merged.eval(), x
    del merged
    for method in PEER_METHODS:
        peer = build_peer(method, pa, img, x)
        for setting, model in peer.infer.items():
            yield setting, model, x
        del peer
