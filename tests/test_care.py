"""CaRE: its bi-level routing, the shared adapter's anchor, the class Gaussians, the classifier alignment, the loss,
the inference combination, each pinned directly; then the strategy's schedule end to end on a tiny slice."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from timm.layers import PatchEmbed

from benchmarks.peers import care, care_routing
from benchmarks.peers.care import TaskCosineHead
from benchmarks.peers.care_routing import BiLevelMoE
from benchmarks.peers.classifier_alignment import ClassGaussians, align_classifier

from conftest import TINY_IMG, make_evaluator, stream_acc

DIM = 8


def moe_with_tasks(n_tasks: int, classes: int = 2, seed: int = 0) -> BiLevelMoE:
    """A block's module with ``n_tasks`` tasks, every adapter non-trivial (the reference's start at scale 0)."""
    torch.manual_seed(seed)
    moe = BiLevelMoE(DIM)
    for _ in range(n_tasks):
        moe.add_task(classes)
    with torch.no_grad():
        for a in [moe.shared, *moe.experts]:
            a.scale.normal_()
    return moe.eval()


def set_constant(linear: torch.nn.Linear, bias: list[float]) -> None:
    """Input-independent outputs: zero weight, the given bias."""
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.copy_(torch.tensor(bias))


def masked_softmax(scores: list[float], keep: int = 3) -> torch.Tensor:
    """A router's expert weights as the reference forms them: outside the top ``keep`` -> -100, then softmax."""
    s = torch.tensor(scores, dtype=torch.float32)
    out = torch.full_like(s, -100.0)
    top = s.topk(keep).indices
    out[top] = s[top]
    return torch.softmax(out, 0)


def mixture(moe: BiLevelMoE, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return sum(w * e(x) for w, e in zip(weights, moe.experts)) + moe.shared(x)


# ------------------------------------------------------------------------------------------------- bi-level routing
def test_lowest_entropy_and_expert_topk_are_per_sample():
    ent = torch.tensor([[0.1, 0.9, 0.5], [0.7, 0.2, 0.4], [0.3, 0.8, 0.1]])  # (routers, samples)
    assert care_routing.lowest_entropy(ent, 1).tolist() == [[0, 1, 2]]
    assert care_routing.lowest_entropy(ent, 2).sort(0).values.tolist() == [[0, 1, 1], [2, 2, 2]]
    assert care_routing.lowest_entropy(ent, 5).tolist() == [[0, 0, 0], [1, 1, 1], [2, 2, 2]]  # fewer routers: all
    scores = torch.tensor([[[4.0, 3.0, 2.0, 1.0]], [[0.0, 1.0, float("-inf"), float("-inf")]]])  # 2 routers, 1 sample
    w = care_routing.expert_weights(scores, topk=3)
    expected = masked_softmax([4, 3, 2, 1]) + torch.softmax(torch.tensor([0.0, 1.0, -100, -100]), 0)
    assert torch.allclose(w[0], expected)
    assert w.sum() == pytest.approx(2.0)  # summed over the picked routers, not averaged
    assert w[0, 3] < 1e-40  # outside router 0's top-3


def test_known_task_uses_its_router_and_the_least_uncertain_earlier_one():
    moe = moe_with_tasks(4)
    for j, head in enumerate(moe.latent_heads):  # head 1 is sure, heads 0 and 2 are not
        set_constant(head[1], [5.0, 0.0] if j == 1 else [0.0, 0.0])
    set_constant(moe.routers[1], [4.0, 0.0])
    set_constant(moe.routers[2], [0.0, 0.0, 9.0])
    set_constant(moe.routers[3], [0.0, 1.0, 2.0, 3.0])
    x = torch.randn(2, 5, DIM)
    moe.route = 3
    with torch.no_grad():
        out = moe(x)
        latent3 = moe.latent_heads[3](moe.experts[3](x)[:, 0])
    router1 = torch.cat([torch.softmax(torch.tensor([4.0, 0.0]), 0), torch.zeros(2)])  # its -inf pads weigh nothing
    expected = router1 + masked_softmax([0, 1, 2, 3])  # router 3 drops expert 0 (top-3)
    assert torch.allclose(out, mixture(moe, x, expected), atol=1e-6)
    assert torch.allclose(moe.latent, latent3)  # the latent logits of the known task's head
    set_constant(moe.latent_heads[2][1], [0.0, 8.0])  # now head 2 is the surest: router 2 replaces router 1
    with torch.no_grad():
        out = moe(x)
    router2 = torch.cat([torch.softmax(torch.tensor([0.0, 0.0, 9.0]), 0), torch.zeros(1)])
    assert torch.allclose(out, mixture(moe, x, router2 + masked_softmax([0, 1, 2, 3])), atol=1e-6)


def test_unknown_task_uses_the_two_least_uncertain_routers_of_all_tasks():
    moe = moe_with_tasks(4)
    sure = {0: [6.0, 0.0], 2: [0.0, 7.0]}
    for j, head in enumerate(moe.latent_heads):
        set_constant(head[1], sure.get(j, [0.0, 0.0]))
    set_constant(moe.routers[2], [1.0, 0.0, 2.0])
    set_constant(moe.routers[3], [9.0, 9.0, 9.0, 9.0])  # not picked, so it must not count
    x = torch.randn(3, 5, DIM)
    moe.route = None
    with torch.no_grad():
        out = moe(x)
    router0 = torch.tensor([1.0, 0.0, 0.0, 0.0])  # one finite score: all weight on expert 0
    router2 = torch.cat([torch.softmax(torch.tensor([1.0, 0.0, 2.0]), 0), torch.zeros(1)])
    assert torch.allclose(out, mixture(moe, x, router0 + router2), atol=1e-6)
    assert moe.latent is None


def test_one_task_is_its_expert_plus_the_shared_adapter():
    moe = moe_with_tasks(1)
    x = torch.randn(2, 5, DIM)
    for route in (0, None):
        moe.route = route
        with torch.no_grad():
            assert torch.allclose(moe(x), moe.experts[0](x) + moe.shared(x))


def test_new_experts_start_from_the_mean_of_all_but_the_newest_and_only_the_newest_train():
    moe = moe_with_tasks(3)
    moe.add_task(2)  # expert 3: the mean of experts 0 and 1 (vit_brmoe.py:101-113 leaves the newest, 2, out)
    for name, p in moe.experts[3].named_parameters():
        mean = (moe.experts[0].get_parameter(name) + moe.experts[1].get_parameter(name)) / 2
        assert torch.allclose(p, mean)
    fresh = BiLevelMoE(DIM)
    fresh.add_task(2)
    fresh.add_task(2)  # expert 1 is fresh: scale 0, as the reference's
    assert fresh.experts[1].scale.abs().sum() == 0
    trainable = {n for n, p in moe.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in moe.named_parameters()
                         if n.startswith(("shared.", "experts.3.", "routers.3.", "latent_heads.3."))}
    assert moe.routers[3].out_features == 4 and moe.latent_heads[3][1].out_features == 2


def test_the_shared_adapter_is_pulled_back_to_its_snapshot_at_each_training_forward():
    moe = moe_with_tasks(2).train()
    moe.route = 1
    moe.anchor_shared()
    snap = [p.detach().clone() for p in moe.shared.parameters()]
    with torch.no_grad():
        for p in moe.shared.parameters():
            p.add_(1.0)
    moved = [p.detach().clone() for p in moe.shared.parameters()]
    moe(torch.randn(2, 5, DIM))
    for p, a, m in zip(moe.shared.parameters(), snap, moved):
        assert torch.allclose(p, 0.999 * a + 0.001 * m)
    moe.release_anchor()
    before = [p.detach().clone() for p in moe.shared.parameters()]
    moe(torch.randn(2, 5, DIM))
    assert all(torch.equal(p, b) for p, b in zip(moe.shared.parameters(), before))


# -------------------------------------------------------------------------- class Gaussians and classifier alignment
def test_class_statistics_are_mean_and_ridged_covariance_in_learned_order():
    g = torch.Generator().manual_seed(0)
    feats, labels = torch.randn(20, 4, generator=g), torch.tensor([7] * 10 + [3] * 10)
    stats = ClassGaussians(4)
    order = torch.tensor([3, 7])
    stats.absorb(feats, labels, order)
    for row, c in enumerate(order.tolist()):
        f = feats[labels == c]
        assert torch.allclose(stats.means[row], f.mean(0))
        assert torch.allclose(stats.covs[row], torch.cov(f.T) + 1e-4 * torch.eye(4))
    diag = ClassGaussians(4, kind="variance")
    diag.absorb(feats, labels, order)
    assert diag.covs.shape == (2, 4) and torch.allclose(diag.covs, stats.covs.diagonal(dim1=1, dim2=2))
    torch.manual_seed(0)
    x, y = stats.sample(20000)
    assert y.tolist()[:3] == [0, 0, 0] and (y == 1).sum() == 20000
    for row in range(2):
        assert torch.allclose(x[y == row].mean(0), stats.means[row], atol=0.05)
        assert torch.allclose(torch.cov(x[y == row].T), stats.covs[row], atol=0.06)
    with pytest.raises(ValueError, match="at least 2 images"):
        ClassGaussians(4).absorb(feats[:1], labels[:1], order)


def test_alignment_refits_every_task_row_from_the_stored_gaussians():
    d = 16
    stats = ClassGaussians(d)
    means = 3 * torch.eye(d)[:4]
    g = torch.Generator().manual_seed(1)
    feats = torch.cat([m + 0.3 * torch.randn(30, d, generator=g) for m in means])
    labels = torch.arange(4).repeat_interleave(30)
    stats.absorb(feats, labels, torch.arange(4))
    torch.manual_seed(0)
    head = TaskCosineHead(d)
    head.add_task([0, 1])
    head.add_task([2, 3])
    before = [w.detach().clone() for w in head.weights]
    assert (head(means).argmax(1) == torch.arange(4)).sum() < 4  # the random rows misclassify
    losses = align_classifier(head, stats, epochs=30, per_class=40)
    assert len(losses) == 30 and losses[-1] < 0.2 * losses[0]
    assert all(not torch.equal(b, w) for b, w in zip(before, head.weights))  # the old task's rows too
    assert (head(means).argmax(1) == torch.arange(4)).all()


# ----------------------------------------------------------------------------------------- loss and inference
def test_care_loss_is_main_plus_the_blocks_mean_of_hard_and_distilled_terms():
    g = torch.Generator().manual_seed(0)
    cos = torch.rand(4, 3, generator=g) * 2 - 1
    latents = [torch.randn(4, 3, generator=g) for _ in range(8)]
    y = torch.tensor([0, 2, 1, 2])
    main = F.cross_entropy(20 * cos, y)
    hard = [F.cross_entropy(20 * z, y) for z in latents]
    plain = care.care_loss(cos, latents, y, self_distill=False)
    assert plain == pytest.approx(float(main + sum(hard) / 8), rel=1e-6)
    terms = []
    for b, z in enumerate(latents):
        t = 1.0 if b < 6 else 2.0
        kl = (F.softmax(cos / t, 1) * (F.log_softmax(cos / t, 1) - F.log_softmax(z / t, 1))).sum(1).mean() * t * t
        terms.append((hard[b] + kl) / 2)
    assert care.care_loss(cos, latents, y) == pytest.approx(float(main + sum(terms) / 8), rel=1e-5)


def test_inference_keeps_the_least_uncertain_known_pass_and_adds_the_unknown_one():
    known = torch.tensor([[[1.0, 1.2, 0.9]], [[0.0, 0.0, 9.0]], [[2.0, 0.0, 0.0]]])  # 3 tasks, 1 sample
    unknown = torch.tensor([[0.0, 3.0, 0.0]])
    out = care.combine_predictions(known, unknown)
    expected = torch.log((torch.softmax(known[1, 0], 0) + torch.softmax(unknown[0], 0)) / 2)
    assert torch.allclose(out[0], expected)
    assert out.exp().sum() == pytest.approx(1.0) and out.argmax() == 2


def test_inference_forward_passes_grow_with_the_tasks():
    assert [care.inference_forward_passes(t) for t in (1, 2, 10, 61, 62)] == [1, 3, 11, 62, 1]
    assert care.inference_forward_passes(10, iterative=False) == 1
    torch.manual_seed(0)
    strategy = build()
    for t in range(3):
        strategy.model.add_task([2 * t, 2 * t + 1])
    calls = []
    embed = next(m for m in strategy.model.modules() if isinstance(m, PatchEmbed))
    embed.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        out = strategy.model.eval()(torch.randn(2, 3, TINY_IMG, TINY_IMG))
    assert len(calls) == 4 and out.shape == (2, 6)


# --------------------------------------------------------------------------------------------- the strategy
def build(**options):
    return care.build_strategy(model_name="vit_tiny_patch16_224", checkpoint=None, img_size=TINY_IMG, num_classes=4,
                               n_experiences=2, epochs=options.pop("epochs", 2), batch_size=8, eval_batch_size=32,
                               device="cpu", evaluator=make_evaluator(), plugins=options.pop("plugins", []), **options)


class Recorder(SupervisedPlugin):
    """Per training epoch: the optimised tensors and whether the shared adapters are anchored; expert 0 after each."""

    def __init__(self) -> None:
        super().__init__()
        self.optimised, self.anchored, self.expert0 = [], [], []

    def before_training_epoch(self, strategy, **kwargs) -> None:
        self.optimised.append({id(p) for g in strategy.optimizer.param_groups for p in g["params"]})
        self.anchored.append(all(m.anchor is not None for m in strategy.model.moes))

    def after_training_exp(self, strategy, **kwargs) -> None:
        self.expert0.append([p.detach().clone() for m in strategy.model.moes for p in m.experts[0].parameters()])


@pytest.fixture(scope="module")
def care_run(tiny_bench):
    torch.manual_seed(0)
    rec = Recorder()
    strategy = build(plugins=[rec], align_epochs=3)
    accs = []
    for i, exp in enumerate(tiny_bench.train_stream):
        strategy.train(exp)
        accs.append(stream_acc(strategy.eval(tiny_bench.test_stream[: i + 1])))
    return strategy, rec, accs


def test_schedule_one_phase_then_two_anchored_phases_with_alignment(care_run):
    strategy, rec, accs = care_run
    # task 0: 2 epochs annealing 0.05 -> 0; task 1: 1 epoch to 0.025, align, 1 epoch from 0.025
    assert strategy.phase_lrs == [pytest.approx([0.05, 0.025]), [0.05], pytest.approx([0.025])]
    assert rec.anchored == [False, False, True, True]
    assert len(strategy.align_losses) == 2 and all(len(a) == 3 for a in strategy.align_losses)
    model = strategy.model
    assert model.head.class_ids.tolist() == [0, 1, 2, 3] and model.stats.covs.shape == (4, 192, 192)
    assert all(0.0 <= a <= 1.0 for a in accs)


def test_task_one_trains_the_shared_adapter_its_own_modules_and_the_whole_head(care_run):
    strategy, rec, _ = care_run
    model = strategy.model
    expected = {id(p) for m in model.moes
                for mod in (m.shared, m.experts[1], m.routers[1], m.latent_heads[1]) for p in mod.parameters()}
    expected |= {id(p) for p in model.head.parameters()}
    assert rec.optimised[-1] == expected
    assert all(torch.equal(a, b) for a, b in zip(*rec.expert0))  # task 0's expert untouched by task 1


def test_builder_refuses_bad_options():
    with pytest.raises(ValueError, match="class_statistics"):
        build(class_statistics="full")
    with pytest.raises(ValueError, match="unknown optimizer"):
        build(optimizer="lbfgs")
    with pytest.raises(ValueError, match="topk_routers"):
        build(topk_routers=0)


def test_stored_state_by_part(care_run):
    strategy, _, _ = care_run
    parts = care.stored_breakdown(strategy)
    d, depth = 192, 12
    assert parts["class_covariances"] == 4 * d * d and parts["class_means"] == 4 * d
    assert parts["routers"] == depth * ((d + 1) * 1 + (d + 1) * 2)  # Linear(d, 1) and Linear(d, 2)
    assert parts["experts"] == depth * 2 * (2 * d + d * 16 + 16 + 16 * d + d + d)
    assert care.stored_params(strategy) == sum(parts.values())
    assert math.isfinite(care.stored_params(strategy))
