"""The loops an Avalanche user writes first, run with SDLoRA / SDLoRARR / SDLoRAKD as drop-in strategies (issue 14).

Tiny random ViTs at 32 px on tensor benchmarks from Avalanche 0.6's own generator (``class_incremental_benchmark``),
written the way an Avalanche script writes them. Each test asserts finite losses, the expected head width and, where
weights are involved, an unchanged frozen backbone.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import warnings

import pytest
import torch
from avalanche.benchmarks.scenarios import benchmark_with_validation_stream, class_incremental_benchmark
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metrics import accuracy_metrics, forward_transfer_metrics, loss_metrics
from avalanche.models import SimpleMLP
from avalanche.training import Naive
from avalanche.training.plugins import EarlyStoppingPlugin, EvaluationPlugin, LRSchedulerPlugin, ReplayPlugin
from avalanche.training.templates.base import PositionalArgumentsDeprecatedWarning
from random_images import random_images
from torch import nn

from avalanche_sdlora import (AdapterGrowthPlugin, DistillationPlugin, FiniteLossPlugin, RankReductionPlugin, SDLoRA,
                              SDLoRAKD, SDLoRAOptions, SDLoRARR, sdlora_vit)
from avalanche_sdlora.metrics import AverageAnytimeAccuracy
from avalanche_sdlora.model import read_state_dict
from avalanche_sdlora.options import DEFAULTS, FIELDS, STRATEGY_FIELDS

IMG = 32
VARIANTS = [SDLoRA, SDLoRARR, SDLoRAKD]


def tensor_benchmark(n_classes=6, n_experiences=3, train_per_class=4, test_per_class=2, seed=0):
    g = torch.Generator().manual_seed(seed)

    def data(per_class):
        y = torch.arange(n_classes).repeat_interleave(per_class)
        return random_images(y, g, IMG)

    return class_incremental_benchmark({"train": data(train_per_class), "test": data(test_per_class)},
                                       num_experiences=n_experiences, class_order=list(range(n_classes)))


def evaluator(*extra):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return EvaluationPlugin(accuracy_metrics(stream=True), loss_metrics(stream=True), *extra, loggers=[])


def build(cls=SDLoRA, *, rank=2, optimizer=None, model=None, **kwargs):
    torch.manual_seed(0)
    model = model or sdlora_vit("vit_tiny_patch16_224", img_size=IMG, rank=rank)
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    kwargs.setdefault("evaluator", evaluator())
    if cls is SDLoRARR:
        kwargs.setdefault("rank_schedule", {0: 2, 1: 1})
    return cls(model=model, optimizer=optimizer, train_mb_size=8, eval_mb_size=32, **kwargs)


def frozen_backbone(model):
    """Every frozen pretrained tensor (adapter buffers and pairs excluded)."""
    skip = ("dir_", "lora_", "qkv.merged")
    return {k: v.detach().clone() for k, v in model.backbone.state_dict().items() if not any(s in k for s in skip)}


def assert_unchanged(model, before):
    after = model.backbone.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), k


def metric(res, prefix):
    """The value of the metric whose name starts with ``prefix`` (task suffixes differ between benchmarks)."""
    names = [k for k in res if k.startswith(prefix)]
    assert names, f"no metric {prefix} in {sorted(res)}"
    return float(res[names[0]])


class LossProbe(SupervisedPlugin):
    """Records every training and eval loss, with the minibatch's targets and the experience's classes."""

    def __init__(self):
        super().__init__()
        self.train, self.eval = [], []

    def before_backward(self, strategy, **kwargs):
        self.train.append({"loss": float(strategy.loss), "y": strategy.mb_y.clone(),
                           "out": strategy.mb_output.detach().clone(),
                           "classes": sorted(strategy.experience.classes_in_this_experience)})

    def after_eval_iteration(self, strategy, **kwargs):
        self.eval.append(float(strategy.loss))


# ---------------------------------------------------------------------------------------------- 1. whole test stream
@pytest.mark.parametrize("cls", VARIANTS, ids=lambda c: c.__name__)
def test_eval_on_the_whole_test_stream(cls):
    bm = tensor_benchmark()
    probe = LossProbe()
    strategy = build(cls, plugins=[probe])
    model = strategy.model
    before = frozen_backbone(model)
    for t, exp in enumerate(bm.train_stream):
        strategy.train(exp)
        res = strategy.eval(bm.test_stream)
        assert math.isfinite(metric(res, "Loss_Stream/eval_phase/test_stream"))
        assert model.head.num_classes == 6  # widened to every class of the stream
        assert sorted(model.head.class_ids.tolist()) == list(range(2 * (t + 1)))  # rows only for trained classes
        assert sum(p.numel() for p in model.head.parameters()) == 2 * (t + 1) * (model.head.in_features + 1)
        if t == 0:
            with torch.no_grad():
                logits = model(torch.randn(2, 3, IMG, IMG))
            assert torch.equal(logits[:, 2:], torch.full((2, 4), model.head.mask_value))  # unseen columns
    assert probe.eval and all(math.isfinite(v) for v in probe.eval)
    assert all(math.isfinite(r["loss"]) for r in probe.train)
    assert_unchanged(model, before)


# ---------------------------------------------------------------------------------------------- 2. periodic evaluation
def validation_benchmark():
    return benchmark_with_validation_stream(tensor_benchmark(train_per_class=6), validation_size=0.25)


def test_periodic_eval_with_early_stopping_on_a_validation_stream():
    bm = validation_benchmark()
    probe = LossProbe()
    stop = EarlyStoppingPlugin(patience=1, val_stream_name="valid_stream")
    strategy = build(SDLoRA, plugins=[probe, stop], eval_every=1, train_epochs=3)
    before = frozen_backbone(strategy.model)
    for exp in bm.train_stream:
        strategy.train(exp, eval_streams=[bm.valid_stream])  # first eval: every valid class, on an empty head
    assert probe.eval and all(math.isfinite(v) for v in probe.eval)
    assert strategy.model.head.num_classes == 6 and len(strategy.model.magnitudes) == 3
    assert_unchanged(strategy.model, before)


@pytest.mark.parametrize("cls", VARIANTS, ids=lambda c: c.__name__)
def test_periodic_eval_in_iteration_mode_drives_an_lr_scheduler_on_val_loss(cls):
    bm = validation_benchmark()
    probe = LossProbe()
    torch.manual_seed(0)
    model = sdlora_vit("vit_tiny_patch16_224", img_size=IMG, rank=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0)
    plugin = LRSchedulerPlugin(sched, metric="val_loss")
    seen, step = [], sched.step
    sched.step = lambda metrics, *a, **k: (seen.append(float(metrics)), step(metrics, *a, **k))
    strategy = build(cls, model=model, optimizer=opt, eval_every=1, peval_mode="iteration", plugins=[probe, plugin])
    for exp in bm.train_stream[:2]:
        strategy.train(exp, eval_streams=[bm.valid_stream])
    assert len(probe.eval) > 4 and all(math.isfinite(v) for v in probe.eval)
    assert len(seen) >= 4 and all(math.isfinite(v) for v in seen)  # the scheduler stepped on finite val_loss


def test_forward_transfer_metrics_need_evals_before_training():
    bm = tensor_benchmark()
    ev = evaluator(*forward_transfer_metrics(experience=True, stream=True))
    strategy = build(SDLoRA, evaluator=ev, eval_every=0)
    for exp in bm.train_stream:
        res = strategy.train(exp, eval_streams=[bm.test_stream])
    assert math.isfinite(metric(res, "StreamForwardTransfer/eval_phase/test_stream"))


# ---------------------------------------------------------------------------------------------- 3. the loss
def expected_loss(record, criterion):
    cols = sorted(set(record["classes"]) | set(record["y"].tolist()))
    remap = torch.tensor([cols.index(int(c)) for c in record["y"]])
    return criterion(record["out"][:, cols], remap)


def test_replay_and_label_smoothing_give_finite_losses_over_the_allowed_columns():
    bm = tensor_benchmark()
    probe = LossProbe()
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    strategy = build(SDLoRA, criterion=criterion, plugins=[ReplayPlugin(mem_size=8), probe])
    before = frozen_backbone(strategy.model)
    head0 = None
    for t, exp in enumerate(bm.train_stream):
        strategy.train(exp)
        if t == 0:
            head0 = strategy.model.head.weights[0].detach().clone()
    assert all(math.isfinite(r["loss"]) for r in probe.train)
    replayed = [r for r in probe.train if set(r["y"].tolist()) - set(r["classes"])]
    assert replayed, "ReplayPlugin put no earlier class in any minibatch"
    for r in probe.train:  # the documented loss: current classes + classes among the targets, targets renumbered
        torch.testing.assert_close(torch.tensor(r["loss"]), expected_loss(r, criterion), rtol=1e-6, atol=1e-6)
    assert torch.equal(strategy.model.head.weights[0], head0)  # replay does not train old head rows
    assert_unchanged(strategy.model, before)


def test_loss_over_all_columns_when_not_current_classes_only():
    bm = tensor_benchmark()
    probe = LossProbe()
    strategy = build(SDLoRA, plugins=[probe], current_classes_only=False)
    for exp in bm.train_stream[:2]:
        strategy.train(exp)
    last = probe.train[-1]
    assert last["out"].shape[1] == 4  # the head's columns after two experiences
    torch.testing.assert_close(torch.tensor(last["loss"]), nn.functional.cross_entropy(last["out"], last["y"]))


def test_current_classes_loss_equals_the_masked_form():
    """Selecting the current columns is cross-entropy with -inf elsewhere: checked bit for bit here."""
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(16, 10, generator=g), torch.randint(4, 7, (16,), generator=g)
    cols = torch.tensor([4, 5, 6])
    keep = torch.zeros(10, dtype=torch.bool)
    keep[cols] = True
    masked = nn.functional.cross_entropy(logits.masked_fill(~keep, float("-inf")), y)
    selected = nn.functional.cross_entropy(logits.index_select(1, cols), torch.searchsorted(cols, y))
    assert torch.equal(masked, selected)


def test_single_class_experience_warns_once_with_the_fix():
    bm = tensor_benchmark(n_classes=3, n_experiences=3)
    strategy = build(SDLoRA)
    with pytest.warns(UserWarning, match=r"experience 0 holds a single class \(0\).*current_classes_only=False") as rec:
        strategy.train(bm.train_stream[0])
    assert sum("single class" in str(w.message) for w in rec) == 1


# ---------------------------------------------------------------------------------------------- 4. the optimizer
SCHEDULERS = {"OneCycleLR": lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=3),
              "LambdaLR": lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda step: 0.5 ** step)}


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_lr_schedulers_built_on_the_users_optimizer_run(scheduler):
    bm = tensor_benchmark()
    torch.manual_seed(0)
    model = sdlora_vit("vit_tiny_patch16_224", img_size=IMG, rank=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sched = SCHEDULERS[scheduler](opt)
    keys = set(opt.param_groups[0])
    probe = OptimizerProbe()
    strategy = build(SDLoRA, model=model, optimizer=opt, plugins=[LRSchedulerPlugin(sched, step_granularity="iteration"),
                                                                 probe])
    for exp in bm.train_stream:
        strategy.train(exp)  # 1 iteration per experience; the plugin resets the schedule after each
        assert len(opt.param_groups) == 1 and set(opt.param_groups[0]) == keys  # initial_lr, max_lr, ... kept
    assert len(probe.records) == 3 and all(held == trainable for held, trainable in probe.records)


class OptimizerProbe(SupervisedPlugin):
    """At every step: the parameters the optimizer holds and the trainable ones (ids)."""

    def __init__(self):
        super().__init__()
        self.records = []

    def before_update(self, strategy, **kwargs):
        held = {id(p) for g in strategy.optimizer.param_groups for p in g["params"]}
        self.records.append((held, {id(p) for p in strategy.model.parameters() if p.requires_grad}))


def test_magnitude_groups_alpha_lr_adds_one_and_a_users_own_group_is_kept():
    bm = tensor_benchmark()
    strategy = build(SDLoRA, alpha_lr=0.05)
    for exp in bm.train_stream:
        strategy.train(exp)
        groups = strategy.optimizer.param_groups
        assert len(groups) == 2 and [g["lr"] for g in groups] == [0.01, 0.05]
        assert groups[1]["params"] == [strategy.model.magnitudes.alpha]

    torch.manual_seed(0)
    model = sdlora_vit("vit_tiny_patch16_224", img_size=IMG, rank=2)
    others = [p for n, p in model.named_parameters() if n != "magnitudes.alpha"]
    opt = torch.optim.SGD([{"params": others}, {"params": [model.magnitudes.alpha], "lr": 0.03}], lr=0.01)
    strategy = build(SDLoRA, model=model, optimizer=opt)
    for exp in bm.train_stream[:2]:
        strategy.train(exp)
        assert [g["lr"] for g in opt.param_groups] == [0.01, 0.03]
        assert opt.param_groups[1]["params"] == [model.magnitudes.alpha]  # the new alpha, in the user's group


# ---------------------------------------------------------------------------------------------- 5./6./7. merge, state
def qkv_weights(model):
    return [a.base_layer.weight.detach().clone() for a in model.adapters]


def test_training_a_merged_model_unmerges_first_and_restores_w0():
    """The growth plugin unmerges before adding the task; model.add_task() on a merged model refuses, and so does a
    training forward through a merged model's live pair (it would get no gradient).

    W0 comes back to float tolerance, not bit for bit: merge stores W0 + dW and unmerge subtracts the same dW,
    and (W0 + dW) - dW rounds to within an ulp of |W0 + dW| of W0. Keeping an exact copy of W0 would double
    the qkv memory merging is meant to save.
    """
    bm = tensor_benchmark()
    strategy = build(SDLoRA)
    model = strategy.model
    w0 = qkv_weights(model)
    strategy.train(bm.train_stream[0])
    model.merge()
    assert all(a.merged for a in model.adapters)
    with pytest.raises(RuntimeError, match=r"merged SD-LoRA model: call model.unmerge\(\) first"):
        model.add_task()
    strategy.train(bm.train_stream[1])
    assert not model.merged
    assert all(torch.count_nonzero(a.dir_B[:, :, a.dir_slot == 1]) > 0 for a in model.adapters)  # the pair trained
    for a, w in zip(model.adapters, w0):
        torch.testing.assert_close(a.base_layer.weight, w, rtol=0, atol=1e-6)
    model.eval().merge()
    model.unmerge()
    for a, w in zip(model.adapters, w0):
        torch.testing.assert_close(a.base_layer.weight, w, rtol=0, atol=1e-6)
    model.add_task()
    model.train().merge()
    with pytest.raises(RuntimeError, match=r"is merged, so its current pair would get no gradient"):
        model(torch.randn(1, 3, IMG, IMG))


def test_merged_state_dict_loads_into_a_fresh_model():
    bm = tensor_benchmark()
    strategy = build(SDLoRA)
    strategy.train(bm.train_stream[0])
    model = strategy.model.eval()
    x = torch.randn(3, 3, IMG, IMG)
    w0 = qkv_weights(model)
    with torch.no_grad():
        y = model(x)
        model.merge()
        state = model.state_dict()
        assert "backbone.blocks.0.attn.qkv.merged" in state and bool(state["backbone.blocks.0.attn.qkv.merged"])
        fresh = sdlora_vit("vit_tiny_patch16_224", img_size=IMG, rank=2).eval()
        fresh.load_state_dict(state, strict=True)
        torch.testing.assert_close(fresh(x), y, rtol=0, atol=1e-5)
        fresh.unmerge()
        torch.testing.assert_close(fresh(x), y, rtol=0, atol=1e-5)
    for a, w in zip(fresh.adapters, w0):
        torch.testing.assert_close(a.base_layer.weight, w, rtol=0, atol=1e-6)


def test_load_state_dict_creates_tensors_on_the_modules_device():
    model = sdlora_vit("vit_tiny_patch16_224", img_size=IMG, rank=2)
    model.head.add_classes([0, 1])
    model.add_task()
    model.freeze_task()
    model.add_task()
    target = sdlora_vit("vit_tiny_patch16_224", img_size=IMG, rank=2).to("meta")  # any device but the state's
    target.load_state_dict(model.state_dict())
    a = target.adapters[0]
    created = [target.magnitudes.alpha, a.lora_A, a.lora_B, a.dir_A, a.dir_B, a.dir_scale, target.head.weights[0]]
    assert all(t.device.type == "meta" for t in created)
    if torch.cuda.is_available():
        gpu = sdlora_vit("vit_tiny_patch16_224", img_size=IMG, rank=2).cuda()
        gpu.load_state_dict(model.state_dict())
        assert gpu.magnitudes.alpha.is_cuda and gpu.adapters[0].lora_A.is_cuda and gpu.head.weights[0].is_cuda


# ---------------------------------------------------------------------------------------------- 9. variant signatures
def test_variants_show_their_own_keyword_and_take_the_same_positional_arguments():
    base = inspect.signature(SDLoRA.__init__).parameters
    # One option keyword per strategy-scope field, None ("from the options"): Avalanche refuses keywords no signature
    # of the strategy's classes names, so a new strategy option needs its keyword here (and RR's and KD's are theirs).
    own = {SDLoRARR: "rank_schedule", SDLoRAKD: "kd_threshold"}
    assert [n for n in base if n in FIELDS] == [n for n in STRATEGY_FIELDS if n not in own.values()]
    assert all(base[n].default is None for n in base if n in FIELDS)
    for cls, name in own.items():  # SDLoRA's keywords in SDLoRA's order, then the variant's own (help() shows all)
        params = inspect.signature(cls.__init__).parameters
        assert list(params) == [*list(base)[:-1], name, list(base)[-1]] and params[name].default is None
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
    for cls in VARIANTS:
        torch.manual_seed(0)
        model = sdlora_vit("vit_tiny_patch16_224", img_size=IMG, rank=2)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        with pytest.warns(PositionalArgumentsDeprecatedWarning):  # Avalanche's own warning for positional use
            strategy = cls(model, opt, nn.CrossEntropyLoss(), 8, 2, evaluator=evaluator())
        assert strategy.model is model and strategy.train_mb_size == 8 and strategy.train_epochs == 2
        with warnings.catch_warnings():  # keywords: no warning at all (Avalanche warns of *args in a signature)
            warnings.simplefilter("error")
            cls(model=model, optimizer=opt, train_mb_size=8, evaluator=evaluator())


# ---------------------------------------------------------------------------------------------- 14. options
def test_options_object():
    opts = SDLoRAOptions(rank=3, alpha_init=0.5, reset_alphas=False, direction_norm="frobenius")
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.rank = 4
    assert SDLoRAOptions.from_dict(opts.to_dict()) == opts
    assert all(f.metadata["help"] and f.metadata["source"] for f in dataclasses.fields(SDLoRAOptions))
    for bad, message in (({"rank": 0}, "rank must be a positive integer, got 0"),
                         ({"reset_alphas": "yes"}, "reset_alphas must be True or False"),
                         ({"direction_norm": "unit"}, "direction_norm must be one of 'factors', 'frobenius'"),
                         ({"alpha_lr": -1.0}, "alpha_lr must be a positive number or None"),
                         ({"kd_threshold": -1.0}, "kd_threshold must be a number >= 0"),
                         ({"rank_schedule": {2: 4}}, "rank schedule must start at task 0")):
        with pytest.raises(ValueError, match=message):
            SDLoRAOptions(**bad)
    with pytest.raises(TypeError, match="SDLoRAOptions has no option rnak"):
        DEFAULTS.replace(rnak=3)

    model = sdlora_vit("vit_tiny_patch16_224", img_size=IMG, options=opts, rank=4)  # the keyword wins
    assert model.options == opts.replace(rank=4) and model.adapters[0].direction_norm == "frobenius"
    strategy = SDLoRA(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), evaluator=evaluator())
    assert strategy.options == model.options  # a strategy without options uses the model's
    growth = next(p for p in strategy.plugins if isinstance(p, AdapterGrowthPlugin))
    assert growth.options(strategy) is strategy.options  # the growth plugin reads the strategy's, in its hooks
    strategy = SDLoRAKD(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), evaluator=evaluator(),
                        options=model.options.replace(kd_threshold=0.5), alpha_init=0.7)
    assert strategy.options.kd_threshold == 0.5 and strategy.options.alpha_init == 0.7
    with pytest.raises(ValueError, match=r"options.direction_norm='factors' differs from the model's 'frobenius'"):
        SDLoRA(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), options=SDLoRAOptions())
    with pytest.raises(ValueError, match=r"options.pair_init='span' differs from the model's 'random'"):
        SDLoRA(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
               options=model.options.replace(pair_init="span"))  # read by the model's add_task: refused, not ignored
    with pytest.raises(ValueError, match="SDLoRARR takes each task's rank from rank_schedule"):
        SDLoRARR(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), rank=4)

    m = sdlora_vit("vit_tiny_patch16_224", img_size=IMG, rank=2)
    m.add_task(alpha_init=1.5)
    m.freeze_task()
    m.add_task()  # one default for reset_alphas (the options'): the old magnitude is reset to alpha_init
    assert m.magnitudes.alpha.tolist() == pytest.approx([0.8, 0.8])


# ---------------------------------------------------------------------------------------------- 10. plugin seams
def test_plugins_on_a_model_that_is_not_sdlora_say_so():
    bm = tensor_benchmark()
    for plugin, name in ((AdapterGrowthPlugin(), "AdapterGrowthPlugin"), (DistillationPlugin(), "DistillationPlugin")):
        mlp = SimpleMLP(num_classes=6, input_size=3 * IMG * IMG)
        strategy = Naive(model=nn.Sequential(nn.Flatten(), mlp), optimizer=torch.optim.SGD(mlp.parameters(), lr=0.01),
                         train_mb_size=8, plugins=[plugin], evaluator=evaluator())
        with pytest.raises(TypeError, match=f"{name} needs a model built by sdlora_vit"):
            strategy.train(bm.train_stream[0])


def test_plugin_order_does_not_matter_and_two_growth_plugins_are_refused():
    bm = tensor_benchmark()
    # KD before the growth plugin in the list, the growth plugin a RankReductionPlugin: both still work.
    strategy = build(SDLoRA, plugins=[DistillationPlugin(threshold=1.0), RankReductionPlugin({0: 2, 1: 1})])
    for exp in bm.train_stream[:2]:
        strategy.train(exp)
    kd = next(p for p in strategy.plugins if isinstance(p, DistillationPlugin))
    assert [h["absorbed"] for h in kd.history] == [True]  # threshold 1 absorbs every fit
    assert len(strategy.model.magnitudes) == 1 and strategy.model.num_directions == 1
    assert sum(isinstance(p, AdapterGrowthPlugin) for p in strategy.plugins) == 1
    growth = next(p for p in strategy.plugins if isinstance(p, AdapterGrowthPlugin))
    assert growth.state_dict() == {"task": 2} and kd.state_dict()["history"] == kd.history
    with pytest.raises(ValueError, match="pass one adapter-growth plugin"):
        build(SDLoRA, plugins=[AdapterGrowthPlugin(), RankReductionPlugin()])
    # A plain Naive strategy on the SD-LoRA model with KD listed before the growth plugin.
    torch.manual_seed(0)
    model = sdlora_vit("vit_tiny_patch16_224", img_size=IMG, rank=2)
    kd = DistillationPlugin(threshold=1.0)
    naive = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), train_mb_size=8,
                  plugins=[kd, AdapterGrowthPlugin()], evaluator=evaluator())
    for exp in bm.train_stream:
        naive.train(exp)
        naive.eval(bm.test_stream)
    assert [(h["task"], h["absorbed"]) for h in kd.history] == [(1, True), (2, True)]
    assert len(model.magnitudes) == 1 and model.num_directions == 1
    torch.manual_seed(0)
    model = sdlora_vit("vit_tiny_patch16_224", img_size=IMG, rank=2)
    naive = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), train_mb_size=8,
                  plugins=[AdapterGrowthPlugin(), RankReductionPlugin()], evaluator=evaluator())
    with pytest.raises(ValueError, match="the strategy has 2 adapter-growth plugins"):
        naive.train(bm.train_stream[0])


# ---------------------------------------------------------------------------------------------- 11./13. messages
def test_class_overlap_error_names_classes_experiences_and_fix():
    bm = tensor_benchmark()
    strategy = build(SDLoRA)
    strategy.train(bm.train_stream[0])
    with pytest.raises(ValueError) as err:
        strategy.train(bm.train_stream[0])
    msg = str(err.value)
    assert "experience 0 shares classes [0, 1] with earlier experiences (trained in experience [0])" in msg
    assert "classes no earlier experience had" in msg and "class_incremental_benchmark" in msg
    assert "build the benchmark with nc_benchmark" not in msg


def test_library_errors_name_arguments_not_flags(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        read_state_dict(tmp_path / "missing.safetensors")
    assert "sdlora_vit(checkpoint=PATH)" in str(err.value) and "--" not in str(err.value)

    class Poison(SupervisedPlugin):
        def before_forward(self, strategy, **kwargs):
            strategy.mbatch[0] = strategy.mb_x * float("nan")

    strategy = build(SDLoRA, plugins=[Poison()])
    with pytest.raises(FloatingPointError) as err:
        strategy.train(tensor_benchmark().train_stream[0])
    assert "learning rate" in str(err.value) and "--" not in str(err.value)
    assert any(isinstance(p, FiniteLossPlugin) for p in strategy.plugins)


# ---------------------------------------------------------------------------------------------- 12. AAA
def test_aaa_is_per_stream_and_ignores_periodic_evals():
    bm = validation_benchmark()
    aaa = AverageAnytimeAccuracy()
    strategy = build(SDLoRA, evaluator=evaluator(aaa), eval_every=1, train_epochs=2)
    seen = []
    for t, exp in enumerate(bm.train_stream):
        strategy.train(exp, eval_streams=[bm.valid_stream])  # evals inside training: not AAA values
        res = strategy.eval(bm.test_stream[: t + 1])
        seen.append(metric(res, "Top1_Acc_Stream/eval_phase/test_stream"))
        assert res["AAA/eval_phase/test_stream"] == pytest.approx(sum(seen) / len(seen), abs=1e-12)
    history = aaa.state_dict()["history"]
    assert [k for k, _ in history["test"]] == [0, 1, 2]  # one value per training experience
    # the valid stream was evaluated after experiences 0 and 1 only by the next train() call's initial eval
    assert [k for k, _ in history["valid"]] == [0, 1]


def test_aaa_on_the_whole_test_stream_counts_classes_trained_so_far():
    bm = tensor_benchmark()
    aaa = AverageAnytimeAccuracy()
    strategy = build(SDLoRA, evaluator=evaluator(aaa))
    seen = []
    for t, exp in enumerate(bm.train_stream):
        strategy.train(exp)
        prefix = strategy.eval(bm.test_stream[: t + 1])  # the paper's protocol
        seen.append(metric(prefix, "Top1_Acc_Stream/eval_phase/test_stream"))
        whole = strategy.eval(bm.test_stream)  # the same AAA: samples of untrained classes are left out
        assert whole["AAA/eval_phase/test_stream"] == prefix["AAA/eval_phase/test_stream"]
        assert whole["AAA/eval_phase/test_stream"] == pytest.approx(sum(seen) / len(seen), abs=1e-12)
    restored = AverageAnytimeAccuracy()
    restored.load_state_dict(aaa.state_dict())
    assert restored.result("test") == aaa.result("test") == pytest.approx(sum(seen) / len(seen), abs=1e-12)
