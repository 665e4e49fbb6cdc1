"""The training step as a GPU runs it (issue 20), tested on CPU: no host read of a device value per step (each one
is a synchronisation on a GPU), the deferred finite-loss check, and bf16 autocast as an option that is off by default.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.plugins import EvaluationPlugin
from torch.utils._python_dispatch import TorchDispatchMode
from test_dropin import tensor_benchmark

from avalanche_sdlora import FiniteLossPlugin, SDLoRA, sdlora_vit

IMG = 32


def build(*, plugins=(), **kwargs) -> SDLoRA:
    torch.manual_seed(0)
    model = sdlora_vit("vit_tiny_patch16_224", img_size=IMG, rank=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evaluator = EvaluationPlugin(accuracy_metrics(experience=True), loggers=[])  # eval-phase metrics only
    return SDLoRA(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), train_mb_size=2,
                  eval_mb_size=8, evaluator=evaluator, plugins=list(plugins), **kwargs)


def trainable(strategy) -> list[torch.Tensor]:
    return [p.detach().clone() for p in strategy.model.parameters() if p.requires_grad]


class Poison(SupervisedPlugin):
    """NaN outputs at iteration ``at`` (so the loss is NaN); keeps the trainable weights after every update."""

    def __init__(self, at: int = 1):
        super().__init__()
        self.at, self.after = at, []

    def after_forward(self, strategy, **kwargs):
        if strategy.clock.train_epoch_iterations == self.at:
            strategy.mb_output = strategy.mb_output * float("nan")

    def after_update(self, strategy, **kwargs):
        self.after.append(trainable(strategy))


def finite_loss(strategy) -> FiniteLossPlugin:
    return next(p for p in strategy.plugins if isinstance(p, FiniteLossPlugin))


# ---------------------------------------------------------------------------------------------- finite-loss check
def test_cpu_check_is_immediate_and_names_the_step():
    poison = Poison()
    s = build(plugins=[poison])
    assert finite_loss(s).check_every is None  # the default: every step on CPU, before the backward pass
    with pytest.raises(FloatingPointError) as err:
        s.train(tensor_benchmark().train_stream[0])
    assert str(err.value).startswith("loss is nan at experience 0, epoch 0, iteration 1: training stopped. Lower the "
                                     "optimizer's learning rate")
    assert len(poison.after) == 1  # only iteration 0 updated the weights


@pytest.mark.parametrize("check_every", [3, 50])
def test_deferred_check_gives_the_same_error_and_keeps_the_nan_step_out_of_the_weights(check_every):
    """4 steps per epoch; NaN at step 1. Read every 3 steps: the error comes at step 2; every 50: at the epoch's end."""
    immediate = build(plugins=[Poison()])
    with pytest.raises(FloatingPointError) as expected:
        immediate.train(tensor_benchmark().train_stream[0])

    poison = Poison()
    s = build(plugins=[poison])
    finite_loss(s).check_every = check_every  # as the plugin runs on a GPU (FiniteLossPlugin(check_every=...))
    with pytest.raises(FloatingPointError) as err:
        s.train(tensor_benchmark().train_stream[0])
    assert str(err.value) == str(expected.value)
    steps_done = 1 if check_every == 3 else 3  # updates after the NaN step that ran before the read
    assert len(poison.after) == 1 + steps_done
    after_first = poison.after[0]
    for weights in poison.after[1:] + [trainable(s)]:  # the NaN step and every later one were undone
        assert all(torch.equal(a, b) for a, b in zip(after_first, weights))
    assert all(torch.isfinite(w).all() for w in trainable(s))


def test_deferred_check_without_a_nan_trains_as_the_immediate_one():
    runs = []
    for check_every in (None, 3):
        s = build()
        finite_loss(s).check_every = check_every
        s.train(tensor_benchmark().train_stream[0])
        runs.append(trainable(s))
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_check_every_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="check_every must be a positive integer or None"):
        FiniteLossPlugin(check_every=bad)


# ---------------------------------------------------------------------------------------------- no host read per step
class ScalarReads(TorchDispatchMode):
    """Counts the ops that read a tensor's value on the host (``.item()``, ``float(t)``, ``bool(t)``, ``nonzero``)."""

    READS = {"_local_scalar_dense", "item", "nonzero", "is_nonzero"}

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if name in self.READS:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


class CountReads(SupervisedPlugin):
    """Opens the dispatch mode for each training step: forward, loss, backward, optimizer step and every hook."""

    def __init__(self):
        super().__init__()
        self.mode, self.steps = ScalarReads(), 0

    def before_training_iteration(self, strategy, **kwargs):
        self.mode.__enter__()

    def after_training_iteration(self, strategy, **kwargs):
        self.mode.__exit__(None, None, None)
        self.steps += 1


def test_a_training_step_reads_no_device_value_on_the_host():
    """On a GPU each read waits for the device. SD-LoRA's step (head width, loss columns, magnitudes, finite-loss
    check in its GPU form) reads none; the second experience has stored directions and two magnitudes."""
    counter = CountReads()
    s = build(plugins=[counter])
    finite_loss(s).check_every = 1000  # the GPU form of the check
    for exp in tensor_benchmark().train_stream[:2]:
        s.train(exp)
    assert counter.steps == 8 and counter.mode.calls == []


def test_loss_columns_come_from_the_host_copy_of_the_targets_on_an_accelerator(monkeypatch):
    """``torch.unique`` of device targets waits for the device; off the CPU the columns are found on the loader's
    CPU copy ('meta' stands in for the accelerator: it has shapes and no values)."""
    s = build()
    s.experience = tensor_benchmark().train_stream[1]  # classes 2, 3
    s._columns = None
    seen = []
    unique = torch.unique
    monkeypatch.setattr(torch, "unique", lambda t, *a, **k: seen.append(t.device.type) or unique(t, *a, **k))
    meta = torch.device("meta")
    for host, expected in ((torch.tensor([3, 2, 3]), 2), (torch.tensor([0, 3, 5]), 4)):  # 0 and 5: replayed
        y = host.to(meta)
        s._targets = (y, host)
        cols = s._loss_columns(y, meta)
        assert cols.device == meta and cols.shape == (expected,)
        if expected == 2:
            assert cols is s._current_columns(meta)  # the cached device columns, no copy
    assert seen == ["cpu", "cpu"]  # only ever on the host copy
    s._targets = None  # targets changed since unpacking: the device path
    assert s._loss_columns(torch.tensor([2, 5]), torch.device("cpu")).tolist() == [2, 3, 5]


# ---------------------------------------------------------------------------------------------- bf16 autocast
class Dtypes(SupervisedPlugin):
    """The dtype of the first block's qkv output and of the strategy's output, in training and in evaluation."""

    def __init__(self):
        super().__init__()
        self.qkv = {"train": set(), "eval": set()}
        self.output = set()

    def before_training(self, strategy, **kwargs):
        if not hasattr(self, "hook"):
            qkv = strategy.model.backbone.blocks[0].attn.qkv
            self.hook = qkv.register_forward_hook(
                lambda m, i, out: self.qkv["train" if strategy.is_training else "eval"].add(out.dtype))

    def after_forward(self, strategy, **kwargs):
        self.output.add(strategy.mb_output.dtype)


def test_bf16_autocast_trains_on_cpu_and_float32_is_the_default():
    bm = tensor_benchmark()
    runs = {}
    for dtype in (None, torch.bfloat16):
        probe = Dtypes()
        s = build(plugins=[probe], autocast_dtype=dtype)
        s.train(bm.train_stream[0])
        s.eval(bm.test_stream[:1])
        runs[dtype] = (probe, trainable(s), s)
    fp32, bf16 = runs[None][0], runs[torch.bfloat16][0]
    assert runs[None][2].autocast_dtype is None
    assert fp32.qkv == {"train": {torch.float32}, "eval": {torch.float32}}
    assert bf16.qkv == {"train": {torch.bfloat16}, "eval": {torch.float32}}  # evaluation stays float32
    assert fp32.output == bf16.output == {torch.float32}  # the criterion sees float32 logits
    w32, w16 = runs[None][1], runs[torch.bfloat16][1]
    assert all(w.dtype == torch.float32 and torch.isfinite(w).all() for w in w16)  # float32 weights
    assert any(not torch.allclose(a, b, atol=1e-7) for a, b in zip(w32, w16))  # autocast changed the arithmetic


@pytest.mark.parametrize("bad,message", [(torch.float16, "needs loss scaling"),
                                         ("bf16", "must be None \\(float32\\) or torch.bfloat16, got 'bf16'")])
def test_autocast_dtype_is_none_or_bfloat16(bad, message):
    with pytest.raises(ValueError, match=message):
        build(autocast_dtype=bad)
