"""A reference's per-epoch cosine followed per iteration (issue 30): CODA-Prompt's and InfLoRA's ``cosine-steps``."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from benchmarks.peers import inflora
from benchmarks.peers.step_schedule import StepSchedulePlugin, annealing_curve, coda_curve


def _lrs(plugin: StepSchedulePlugin, opt: torch.optim.Optimizer, epochs: int, iters: int) -> list[float]:
    """The lr of every training iteration of one task, as the strategy's loop calls the plugin."""
    strategy = SimpleNamespace(optimizer=opt, train_epochs=epochs, dataloader=[None] * iters)
    plugin.before_training_exp(strategy)
    out = []
    for _ in range(epochs * iters):
        plugin.before_training_iteration(strategy)
        out.append(opt.param_groups[0]["lr"])
    return out


def test_codas_curve_per_iteration_keeps_its_shape_at_three_epochs_and_restarts_each_task():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    plugin = StepSchedulePlugin(coda_curve, endpoint=True)
    lrs = _lrs(plugin, opt, epochs=3, iters=50)
    s_total = 150
    expected = [1e-3 * math.cos(99 * math.pi * s / (200 * (s_total - 1))) for s in range(s_total)]
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert lrs[0] == 1e-3 and lrs[-1] == pytest.approx(1e-3 * math.cos(99 * math.pi / 200))  # 1.6 % at the very end
    # the mean factor is the reference's over its 20 epochs (about 0.64), not the 3 plateaus' 0.57
    per_epoch = [math.cos(99 * math.pi * e / 200 / 2) for e in range(3)]
    reference_20 = sum(math.cos(99 * math.pi * e / (200 * 19)) for e in range(20)) / 20
    assert sum(lrs) / len(lrs) / 1e-3 == pytest.approx(reference_20, abs=0.02)
    assert sum(per_epoch) / 3 < reference_20 - 0.05
    assert _lrs(plugin, opt, epochs=3, iters=50) == pytest.approx(expected)  # a new task starts at the full rate


def test_annealing_curve_without_endpoint_is_cosine_annealing_lr_per_iteration():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
    lrs = _lrs(StepSchedulePlugin(annealing_curve, endpoint=False), opt, epochs=2, iters=5)
    ref_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=10)
    ref = []
    for _ in range(10):
        ref.append(ref_opt.param_groups[0]["lr"])
        ref_opt.step()
        sched.step()
    assert lrs == pytest.approx(ref)


def test_inflora_takes_the_schedule_option_and_keeps_the_reference_by_default():
    args = dict(model_name="vit_tiny_patch16_224", checkpoint=None, img_size=32, num_classes=4, n_experiences=2,
                epochs=3, batch_size=4, eval_batch_size=8, device="cpu", evaluator=None, plugins=[])
    with pytest.warns(UserWarning):  # a random backbone, said so
        default = inflora.build_strategy(**args)
        steps = inflora.build_strategy(**args, schedule="cosine-steps")
    kinds = lambda s: {type(p).__name__ for p in s.plugins}  # noqa: E731
    assert "LRSchedulerPlugin" in kinds(default) and "StepSchedulePlugin" not in kinds(default)
    assert "StepSchedulePlugin" in kinds(steps) and "LRSchedulerPlugin" not in kinds(steps)
    with pytest.raises(ValueError, match="schedule must be 'cosine'"):
        inflora.build_strategy(**args, schedule="linear")
