"""MOS's mechanisms pinned directly: the adapter merge and its in-place pulls, the self-refined retrieval, the
orthogonality term, the class statistics and the classifier alignment; then the strategy end to end."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from timm.layers import PatchEmbed
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.data import DataLoader

from avalanche_sdlora import create_backbone
from benchmarks.peers import mos
from benchmarks.peers.adaptformer import add_adapters
from benchmarks.peers.mos import MOSModel, TaskAdapterMLP

from conftest import TINY_IMG, make_evaluator, stream_acc

M = 0.1  # the reference's adapter_momentum


def tiny_model(seed: int = 0, literal: bool = True, num_classes: int = 6, name: str = "vit_tiny_patch16_224"):
    torch.manual_seed(seed)
    backbone = create_backbone(name, img_size=TINY_IMG)
    add_adapters(backbone, bottleneck=4, mlp_cls=TaskAdapterMLP)
    return MOSModel(backbone, num_classes, adapter_momentum=M, literal=literal)


def randomize(adapters, seed: int, scale: float = 0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for a in adapters:
            for p in a.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def params(adapters) -> list[torch.Tensor]:
    return [p.detach().clone() for a in adapters for p in a.parameters()]


def finish_tasks(model: MOSModel, n: int) -> list[list[torch.Tensor]]:
    """Store ``n`` random adapters as finished tasks; returns each snapshot's parameters."""
    snaps = []
    for t in range(n):
        randomize([m.adapter for m in model.mlps], seed=100 + t)
        snaps.append(params(m.adapter for m in model.mlps))
        model.snapshot()
        model.task += 1
    return snaps


def build(*, seed: int = 0, epochs: int = 1, plugins=(), num_classes: int = 4, **options):
    torch.manual_seed(seed)
    options.setdefault("ca_epochs", 2)
    return mos.build_strategy(model_name=options.pop("model_name", "vit_tiny_patch16_224"), checkpoint=None,
                              img_size=TINY_IMG, num_classes=num_classes, n_experiences=2, epochs=epochs, batch_size=8,
                              eval_batch_size=64, device="cpu", evaluator=make_evaluator(), plugins=list(plugins),
                              **options)


def images_of(exp) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*[(mb[0], mb[1]) for mb in DataLoader(exp.dataset.eval(), batch_size=64)])
    return torch.cat(xs), torch.cat(ys)


# ------------------------------------------------------------------------------------------------ merging
def test_snapshots_are_frozen_copies_and_sums_are_running_sums():
    model = tiny_model()
    snaps = finish_tasks(model, 3)
    for j in range(3):
        stored = params(m.stored[j] for m in model.mlps)
        sums = params(m.sums[j] for m in model.mlps)
        assert all(torch.equal(a, b) for a, b in zip(stored, snaps[j]))
        expected = [sum(s[i] for s in snaps[: j + 1]) for i in range(len(sums))]
        assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(sums, expected))
    assert not any(p.requires_grad for m in model.mlps for mod in (*m.stored, *m.sums) for p in mod.parameters())
    assert all(p.requires_grad for m in model.mlps for p in m.adapter.parameters())


def test_merge_after_a_step_pulls_the_current_adapter_towards_the_mean_of_the_stored_ones():
    model = tiny_model()
    snaps = finish_tasks(model, 2)  # learning task 2: target S_1 / 2, the mean of the two stored adapters
    randomize([m.adapter for m in model.mlps], seed=7)
    before = params(m.adapter for m in model.mlps)
    model.merge_step()
    after = params(m.adapter for m in model.mlps)
    for i, (b, a) in enumerate(zip(before, after)):
        assert torch.allclose(a, (1 - M) * b + M * (snaps[0][i] + snaps[1][i]) / 2, atol=1e-7)
    first = tiny_model()
    randomize([m.adapter for m in first.mlps], seed=7)
    kept = params(m.adapter for m in first.mlps)
    first.merge_step()  # task 0: nothing stored, nothing to merge (vit_mos.py:305, 333)
    assert all(torch.equal(a, b) for a, b in zip(kept, params(m.adapter for m in first.mlps)))


def test_literal_training_pass_pulls_block_i_adapter_i_plus_1_times_and_every_layer_depth_times(images):
    model = tiny_model().eval()
    snaps = finish_tasks(model, 1)  # learning task 1: target S_0 / 1 = the stored adapter
    randomize([m.adapter for m in model.mlps], seed=9)
    start = [params([m.adapter]) for m in model.mlps]
    depth = len(model.mlps)
    # what the reference computes: block i runs with its adapter pulled i + 1 times (every layer is pulled before
    # every block), written into a clean model whose adapters are used as they are
    clean = copy.deepcopy(model)
    clean.literal = False
    offset = 0
    for i, m in enumerate(clean.mlps):
        with torch.no_grad():
            for p, s0, target in zip(m.adapter.parameters(), start[i], snaps[0][offset:]):
                p.copy_(target + (1 - M) ** (i + 1) * (s0 - target))
        offset += len(start[i])
    with torch.no_grad():
        literal = model.current_features(images)
        expected = clean.current_features(images)
    assert torch.allclose(literal, expected, atol=1e-5)
    offset = 0
    for i, m in enumerate(model.mlps):  # after the pass: every layer pulled once per block
        for p, s0, target in zip(m.adapter.parameters(), start[i], snaps[0][offset:]):
            assert torch.allclose(p, target + (1 - M) ** depth * (s0 - target), atol=1e-6)
        offset += len(start[i])


def test_literal_gradient_is_taken_at_the_values_the_forward_used(images):
    # the reference replaces .data, so the saved tensors keep the pulled-so-far values: the gradient of the adapter of
    # block i is the gradient of the clean model run with those values
    model = tiny_model()
    finish_tasks(model, 1)
    randomize([m.adapter for m in model.mlps], seed=11)
    clean = copy.deepcopy(model)
    clean.literal = False
    for i, (m, c) in enumerate(zip(model.mlps, clean.mlps)):
        c.pull(c.adapter, 1, i + 1)
    model.eval(), clean.eval()
    model.current_features(images).square().sum().backward()
    clean.current_features(images).square().sum().backward()
    for m, c in zip(model.mlps, clean.mlps):
        for p, q in zip(m.adapter.parameters(), c.adapter.parameters()):
            assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6)
    assert any(p.grad.abs().sum() > 0 for m in model.mlps for p in m.adapter.parameters())


def test_literal_inference_drifts_stored_adapters_to_the_mean_of_the_earlier_ones_and_clean_does_not(images):
    for literal in (True, False):
        model = tiny_model(literal=literal).eval()
        snaps = finish_tasks(model, 3)
        with torch.no_grad():
            for _ in range(12):  # 12 evaluation batches: 144 pulls of 0.9
                for j in range(3):
                    model.stored_features(images[:1], j)
        for j in range(3):
            stored = params(m.stored[j] for m in model.mlps)
            if not literal or j == 0:
                assert all(torch.equal(a, b) for a, b in zip(stored, snaps[j]))  # adapter 0 is never pulled
            else:
                mean = [sum(s[i] for s in snaps[:j]) / j for i in range(len(stored))]
                assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(stored, mean))
                assert not torch.allclose(stored[0], snaps[j][0], atol=1e-3)


# ---------------------------------------------------------------------------------------------- retrieval
def test_self_refined_retrieval_follows_the_head_until_the_task_repeats_or_four_rounds():
    model = tiny_model(num_classes=6)
    model.class_task = torch.tensor([0, 0, 1, 1, 2, 2])
    model.prototypes.class_ids = torch.arange(6)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.weight[:, :6] = torch.eye(6)  # head logits = the first 6 feature dimensions
        model.head.bias.zero_()
    d = model.head.in_features
    feats = torch.zeros(3, 4, d)  # (task, sample, feature)

    def point(task, sample, cls):
        feats[task, sample, cls] = 1.0 + task  # distinct logits per task, to see which feature gave them

    point(0, 0, 1)                                # sample 0: task 0 names class 1 (task 0): stops in round 1
    point(0, 1, 2), point(1, 1, 3)                # sample 1: 0 -> task 1 -> class 3 (task 1): stops in round 2
    point(0, 2, 2), point(1, 2, 0)                # sample 2: 0 -> 1 -> 0 -> 1: cut at round 4 on task 1's feature
    point(0, 3, 5), point(2, 3, 4)                # sample 3: 0 -> 2 -> class 4 (task 2): round 2
    final, task, rounds = model.refine(feats, torch.zeros(4, dtype=torch.long))
    assert task.tolist() == [0, 1, 1, 2] and rounds.tolist() == [1, 2, 4, 2]
    assert torch.equal(final, feats[task, torch.arange(4), :6])


def test_prediction_is_head_softmax_plus_sharpened_prototype_softmax(tiny_bench):
    strategy = build(epochs=1, literal=False)
    for exp in tiny_bench.train_stream:
        strategy.train(exp)
    model = strategy.model.eval()
    x, _ = images_of(tiny_bench.test_stream[1])
    with torch.no_grad():
        feats = torch.stack([model.stored_features(x, j) for j in range(2)])
        cos = F.normalize(feats[0], dim=1) @ F.normalize(model.prototypes.prototypes, dim=1).T
        task = model.class_task[cos.argmax(1)]
        final, _, _ = model.refine(feats, task)
        expected = F.softmax(final, dim=1) + F.softmax(cos * 2, dim=1)  # 2 tasks: cosines times 2
        assert torch.allclose(model(x), expected, atol=1e-5)
        assert torch.equal(model(x), model(x))  # clean mode: evaluation leaves the model as it is


# --------------------------------------------------------------------------- loss, statistics, alignment
def test_orth_loss_is_cross_entropy_of_scaled_similarities_with_the_stored_means():
    g = torch.Generator().manual_seed(0)
    means, feats = torch.randn(2, 5, generator=g), torch.randn(3, 5, generator=g)
    M_ = torch.cat([means, feats])
    sim = M_ @ M_.T / 0.8
    expected = -torch.log_softmax(sim, dim=1).diagonal().mean()
    assert torch.allclose(mos.orth_loss(feats, means, 0.1), 0.1 * expected)
    alone = -torch.log_softmax(feats @ feats.T / 0.8, dim=1).diagonal().mean()
    assert torch.allclose(mos.orth_loss(feats, torch.zeros(0, 5), 0.1), 0.1 * alone)


def test_class_statistics_are_mean_and_unbiased_covariance_plus_ridge():
    f = torch.randn(10, 4, generator=torch.Generator().manual_seed(1))
    mean, cov = mos.class_statistics(f)
    centred = f - f.mean(0)
    assert torch.allclose(mean, f.mean(0))
    assert torch.allclose(cov, centred.T @ centred / 9 + 1e-4 * torch.eye(4), atol=1e-6)
    with pytest.raises(ValueError, match="at least 2 training images per class, got 1"):
        mos.class_statistics(f[:1])


def test_alignment_trains_the_head_on_samples_of_the_stored_gaussians():
    torch.manual_seed(0)
    head = torch.nn.Linear(4, 5)
    means = torch.tensor([[4.0, 0, 0, 0], [0, 4.0, 0, 0], [0, 0, 4.0, 0]])
    covs = torch.eye(4).expand(3, 4, 4) * 0.1
    classes = torch.tensor([3, 0, 4])  # head rows scored, in the order of the statistics; row 1, 2 unseen
    steps = []
    handle = register_optimizer_step_post_hook(lambda opt, a, k: steps.append(1))
    try:
        torch.manual_seed(1)
        losses = mos.align_classifier(head, classes, means, covs, epochs=3, lr=0.5, weight_decay=0.0,
                                      samples_per_class=20)
    finally:
        handle.remove()
    assert len(steps) == 3 * 3 and len(losses) == 3  # as many minibatches per epoch as seen classes
    assert losses[-1] < losses[0]
    assert head(means)[:, classes].argmax(1).tolist() == [0, 1, 2]
    torch.manual_seed(0)
    again = torch.nn.Linear(4, 5)
    torch.manual_seed(1)
    mos.align_classifier(again, classes, means, covs, epochs=3, lr=0.5, weight_decay=0.0, samples_per_class=20)
    assert torch.equal(again.weight, head.weight)  # deterministic under the seed


# ------------------------------------------------------------------------------------------- end to end
class Recorder(SupervisedPlugin):
    def __init__(self) -> None:
        super().__init__()
        self.lrs: list[list[float]] = []
        self.adapter_at_end: list[list[torch.Tensor]] = []

    def before_training_epoch(self, strategy, **kwargs) -> None:
        self.lrs.append([g["lr"] for g in strategy.optimizer.param_groups])

    def after_training_epoch(self, strategy, **kwargs) -> None:
        self.adapter_at_end.append(params(m.adapter for m in strategy.model.mlps))


def test_strategy_end_to_end_on_two_experiences(tiny_bench):
    rec = Recorder()
    strategy = build(epochs=2, plugins=[rec])
    model = strategy.model
    x0, y0 = images_of(tiny_bench.train_stream[0])
    strategy.train(tiny_bench.train_stream[0])
    # the stored copy is the adapter as training left it; nothing pulls at task 0
    assert all(torch.equal(a, b) for a, b in zip(params(m.stored[0] for m in model.mlps), rec.adapter_at_end[-1]))
    # adapters at lr, head at 0.1 lr, cosine per epoch
    assert rec.lrs == [pytest.approx([0.03, 0.003]), pytest.approx([0.015, 0.0015])]
    model.eval()
    with torch.no_grad():
        f = model.stored_features(x0, 0)
        for c in (0, 1):
            assert torch.allclose(model.prototypes.prototypes[c], f[y0 == c].mean(0), atol=1e-5)
            mean, cov = mos.class_statistics(f[y0 == c])  # at task 0 the current adapter is the stored one
            assert torch.allclose(model.class_means[c], mean, atol=1e-5)
            assert torch.allclose(model.class_covs[c], cov, atol=1e-4)
    head_before = model.head.weight.detach().clone()
    strategy.train(tiny_bench.train_stream[1])
    assert model.class_task.tolist() == [0, 0, 1, 1] and model.stat_classes.tolist() == [0, 1, 2, 3]
    assert len(strategy.ca_losses) == 1 and len(strategy.ca_losses[0]) == 2  # alignment from task 1 on
    assert not torch.allclose(model.head.weight[:2], head_before[:2])
    calls = []
    embeds = [m for m in model.modules() if isinstance(m, PatchEmbed)]
    handles = [e.register_forward_hook(lambda *a: calls.append(1)) for e in embeds]
    try:
        acc = stream_acc(strategy.eval(tiny_bench.test_stream[:2]))
    finally:
        for h in handles:
            h.remove()
    assert 0.0 <= acc <= 1.0
    assert len(calls) == 2 * mos.inference_forward_passes(2)  # two test experiences, one batch each
    parts = mos.stored_breakdown(strategy)
    L, d, r, C = 12, 192, 16, 4
    A = L * (2 * d * r + r + d)
    assert parts == {"task_adapters": 2 * A, "adapter_sums": 2 * A, "current_adapter": A, "head": C * (d + 1),
                     "prototypes": C * d, "class_means": C * d, "class_covariances": C * d * d}
    assert mos.stored_params(strategy) == sum(parts.values())


def test_any_timm_vit_runs_two_experiences(tiny_bench):
    strategy = build(model_name="vit_small_patch16_224", ca_epochs=1)
    for i, exp in enumerate(tiny_bench.train_stream):
        strategy.train(exp)
        assert 0.0 <= stream_acc(strategy.eval(tiny_bench.test_stream[: i + 1])) <= 1.0
    assert strategy.model.class_covs.shape == (4, 384, 384)


def test_bad_arguments_are_named(tiny_bench):
    with pytest.raises(ValueError, match="adapter_momentum must be in"):
        build(adapter_momentum=1.5)
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        build(optimizer="rmsprop")
    strategy = build(num_classes=2)
    strategy.train(tiny_bench.train_stream[0])
    with pytest.raises(ValueError, match=r"classes \[2, 3\] not below num_classes=2"):
        strategy.train(tiny_bench.train_stream[1])
    with pytest.raises(RuntimeError, match="predicts after its first experience"):
        tiny_model()(torch.zeros(1, 3, TINY_IMG, TINY_IMG))


def test_retrieval_runs_in_float32_under_an_evaluation_autocast(tiny_bench):
    strategy = build(literal=False, ca_epochs=1)
    strategy.train(tiny_bench.train_stream[0])
    x, _ = images_of(tiny_bench.test_stream[0])
    model = strategy.model.eval()
    f = torch.randn(3, 192)
    with torch.no_grad():
        plain = model.head(f)[:, :2]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert model(x).dtype == torch.float32
            assert torch.allclose(model.seen_logits(f), plain, atol=1e-6)
