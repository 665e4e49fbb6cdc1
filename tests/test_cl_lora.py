"""CL-LoRA: the shared/specific split, what trains when, the distillation step, the prototype classifier.

Pathways are checked against an independent computation: a plain copy of the timm ViT whose qkv weights have the
routed LoRA merged in (``W_q + w_q * up_q down_q``, likewise v), run block by block.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from conftest import TINY_IMG, make_evaluator, stream_acc
from torch import nn

from avalanche_sdlora.model import create_backbone
from benchmarks.peers import cl_lora
from benchmarks.peers.cl_lora import (CLLoRAQKV, CLLoRAViT, LoRAPair, gradient_reassignment, kd_loss,
                                      orthogonality_loss)

TINY = "vit_tiny_patch16_224"  # 12 blocks, width 192


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(seed: int = 0, **kwargs) -> CLLoRAViT:
    torch.manual_seed(seed)
    return CLLoRAViT(create_backbone(TINY, img_size=TINY_IMG).eval(), **kwargs)


def randomize(pairs, seed: int, scale: float = 0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in pairs:
            for pair in block:
                pair.up.weight.copy_(torch.randn(pair.up.weight.shape, generator=g) * scale)


def merged_blocks(model: CLLoRAViT, shared, specific=None, weights=None) -> nn.Module:
    """A plain copy of the backbone with the given pairs merged into its qkv weights (slots q and v)."""
    plain = copy.deepcopy(model.backbone)
    d = model.width
    for j, block in enumerate(plain.blocks):
        base = block.attn.qkv.base_layer
        w = base.weight.detach().clone()
        if j < model.n_shared:
            pairs, scale = shared[j], torch.ones(3)
        elif specific is not None:
            pairs, scale = specific[j - model.n_shared], weights[:, j - model.n_shared].detach()
        else:
            pairs = None
        if pairs is not None:
            for slot, pair in zip((0, 2), pairs):
                w[slot * d:(slot + 1) * d] += scale[slot] * (pair.up.weight @ pair.down.weight).detach()
        block.attn.qkv = nn.Linear(base.in_features, base.out_features)
        with torch.no_grad():
            block.attn.qkv.weight.copy_(w)
            block.attn.qkv.bias.copy_(base.bias)
    return plain


def plain_readout(plain: nn.Module, x: torch.Tensor, n_blocks: int) -> torch.Tensor:
    h = plain.norm_pre(plain.patch_drop(plain._pos_embed(plain.patch_embed(x))))
    for block in plain.blocks[:n_blocks]:
        h = block(h)
    return plain.norm(h)[:, 0]


# ------------------------------------------------------------------------------------------------ building blocks
def test_lora_pair_starts_with_orthonormal_down_rows_and_zero_up():
    torch.manual_seed(0)
    pair = LoRAPair(192, 8)
    down = pair.down.weight.double()
    assert torch.allclose(down @ down.T, torch.eye(8, dtype=torch.float64), atol=1e-5)
    assert not pair.up.weight.any()


def test_routed_pairs_change_only_their_slots_by_the_block_weight():
    torch.manual_seed(0)
    qkv = CLLoRAQKV(nn.Linear(16, 48))
    q, v = LoRAPair(16, 2), LoRAPair(16, 2)
    for p in (q, v):
        nn.init.normal_(p.up.weight)
    x = torch.randn(2, 5, 16)
    base = qkv(x)
    qkv.route = (((0, q), (2, v)), torch.tensor([0.5, 7.0, 3.0]))
    delta = (qkv(x) - base).detach()
    assert torch.allclose(delta[..., :16], 0.5 * q(x), atol=1e-6)
    assert not delta[..., 16:32].any()  # k is not adapted (msa [1, 0, 1]); its weight is unused
    assert torch.allclose(delta[..., 32:], 3.0 * v(x), atol=1e-6)
    qkv.route = (((0, q),), None)  # the shared blocks: weight 1
    assert torch.allclose((qkv(x) - base)[..., :16], q(x), atol=1e-6)


def test_kd_loss_is_the_references_formula():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    manual = -(torch.softmax(t / 2, 1) * torch.log_softmax(s / 2, 1)).sum() / 5  # cllora.py:17-20: no T^2
    assert kd_loss(s, t, 2.0).item() == pytest.approx(manual.item(), rel=1e-6)
    assert kd_loss(s, s, 2.0) > 0  # a cross-entropy, not a KL divergence: not 0 at equality


def test_gradient_reassignment_scales_rows_by_the_teachers_row_norms():
    now, old = LoRAPair(4, 2), LoRAPair(4, 2)
    with torch.no_grad():
        old.up.weight.copy_(torch.tensor([[3.0, 4.0], [0.0, 1.0], [0.0, 0.0], [6.0, 8.0]]))  # row norms 5, 1, 0, 10
    now.up.weight.grad = torch.ones(4, 2)
    gradient_reassignment(now, old)
    expected = torch.tensor([5.0, 1.0, 0.0, 10.0]) * 4 / 16
    assert torch.allclose(now.up.weight.grad, expected[:, None].expand(4, 2))
    with torch.no_grad():
        old.up.weight.zero_()  # a teacher that never moved: the reference divides by 0; here weight 1
    now.up.weight.grad = torch.ones(4, 2)
    gradient_reassignment(now, old)
    assert torch.equal(now.up.weight.grad, torch.ones(4, 2))


def test_orthogonality_loss_is_the_mean_absolute_cosine_to_earlier_block_weights():
    cur = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    prev = [torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]), torch.tensor([[-2.0, 0.0], [0.0, 0.0], [0.0, 0.0]])]
    assert orthogonality_loss(prev, cur).item() == pytest.approx((2 ** -0.5 + 1.0) / 2, rel=1e-5)
    assert orthogonality_loss([], cur).item() == 0.0


def test_refusals_name_the_argument():
    bb = create_backbone(TINY, img_size=TINY_IMG)
    with pytest.raises(ValueError, match="shared_blocks must be between 1 and 11"):
        CLLoRAViT(copy.deepcopy(bb), shared_blocks=12)
    with pytest.raises(ValueError, match="rank must be between 1 and the width 192"):
        CLLoRAViT(copy.deepcopy(bb), rank=193)
    with pytest.raises(ValueError, match="slots must be distinct names"):
        CLLoRAViT(copy.deepcopy(bb), slots=("q", "x"))
    with pytest.raises(TypeError, match="CL-LoRA needs a timm VisionTransformer"):
        CLLoRAViT(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop' for CL-LoRA"):
        build(optimizer="rmsprop")


# ------------------------------------------------------------------------------------------------ the split
def test_shared_blocks_are_the_first_half_and_specific_the_rest(images):
    model = tiny_model()
    model.start_task([0, 1])
    randomize(model.shared, 1)
    randomize(model.specific[-1], 2)
    seen = {}
    hooks = [b.attn.qkv.register_forward_pre_hook(lambda m, a, j=j: seen.__setitem__(j, m.route))
             for j, b in enumerate(model.backbone.blocks)]
    model.features(images)
    for h in hooks:
        h.remove()
    assert model.n_shared == 6 and model.n_specific == 6
    for j in range(12):
        pairs, weight = seen[j]
        assert [s for s, _ in pairs] == [0, 2]  # q and v
        if j < 6:
            assert [p for _, p in pairs] == list(model.shared[j]) and weight is None
        else:
            assert [p for _, p in pairs] == list(model.specific[-1][j - 6])
            assert torch.equal(weight, model.block_weights[-1][:, j - 6])
    assert all(b.attn.qkv.route is None for b in model.backbone.blocks)  # routes never outlive a forward
    # the same features as the plain ViT with those pairs merged into its weights
    plain = merged_blocks(model, model.shared, model.specific[-1], model.block_weights[-1])
    assert torch.allclose(model.features(images), plain_readout(plain, images, 12), atol=1e-5)
    assert not torch.allclose(model.features(images), model.backbone(images), atol=1e-3)


def test_with_zero_up_matrices_the_pathway_is_the_timm_forward(images):
    model = tiny_model()
    model.start_task([0, 1])
    assert torch.allclose(model.features(images), model.backbone(images), atol=1e-6)


def test_shared_blocks_option_moves_the_split(images):
    model = tiny_model(shared_blocks=3)
    model.start_task([0])
    assert len(model.shared) == 3 and len(model.specific[-1]) == 9 and model.block_weights[-1].shape == (3, 9)


# ------------------------------------------------------------------------------------------------ a two-task run
def build(epochs: int = 2, plugins=(), **options):
    torch.manual_seed(0)
    return cl_lora.build_strategy(model_name=TINY, checkpoint=None, img_size=TINY_IMG, num_classes=4, n_experiences=2,
                                  epochs=epochs, batch_size=8, eval_batch_size=32, device="cpu",
                                  evaluator=make_evaluator(), plugins=list(plugins), **options)


def trainable(model: CLLoRAViT) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


class Recorder(SupervisedPlugin):
    """Snapshots at the first iteration of each task, after each task, and the prototypes recomputed independently."""

    def __init__(self) -> None:
        super().__init__()
        self.first: list[dict] = []
        self.after: list[dict] = []

    def before_training_iteration(self, strategy, **kwargs) -> None:
        if strategy.clock.train_exp_iterations == 0:
            self.first.append({"model": copy.deepcopy(strategy.model), "x": strategy.mb_x.clone(),
                               "y": strategy.mb_y.clone(), "lr": strategy.optimizer.param_groups[0]["lr"],
                               "optimised": {id(p) for g in strategy.optimizer.param_groups for p in g["params"]},
                               "live_trainable": {id(p) for p in strategy.model.parameters() if p.requires_grad},
                               "trainable": trainable(strategy.model)})

    def after_training_iteration(self, strategy, **kwargs) -> None:
        if strategy.clock.train_exp_iterations == 0:
            self.first[-1]["stepped"] = copy.deepcopy(strategy.model)

    def after_training_exp(self, strategy, **kwargs) -> None:  # after CLLoRA's prototypes and end_task
        model = strategy.model
        data = torch.utils.data.DataLoader(strategy.experience.dataset.eval(), batch_size=64)
        xs, ys = map(torch.cat, zip(*[(mb[0], mb[1]) for mb in data]))
        with torch.no_grad():
            plain = merged_blocks(model, model.shared, model.specific[-1], model.block_weights[-1])
            feats = plain_readout(plain, xs, 12)
        means = {int(c): feats[ys == c].mean(0) for c in ys.unique()}
        self.after.append({"model": copy.deepcopy(model), "means": means})


@pytest.fixture(scope="module")
def run(tiny_bench):
    rec = Recorder()
    strategy = build(plugins=[rec])
    accs = []
    for exp in tiny_bench.train_stream:
        strategy.train(exp)
        accs.append(stream_acc(strategy.eval(tiny_bench.test_stream[: exp.current_experience + 1])))
    return strategy, rec, accs


def test_what_trains_in_each_task(run):
    strategy, rec, _ = run
    for t, snap in enumerate(rec.first):
        shared_up = {f"shared.{j}.{s}.up.weight" for j in range(6) for s in range(2)}
        specific = {f"specific.{t}.{j}.{s}.{m}.weight" for j in range(6) for s in range(2) for m in ("down", "up")}
        assert snap["trainable"] == shared_up | specific | {f"block_weights.{t}", "head.weight", "head.sigma"}
        assert snap["optimised"] == snap["live_trainable"]  # the optimizer steps exactly those
    start, end0, end1 = rec.first[0]["model"], rec.after[0]["model"], rec.after[1]["model"]
    for a, b, c in zip(start.shared, end0.shared, end1.shared):
        for pa, pb, pc in zip(a, b, c):
            assert torch.equal(pa.down.weight, pc.down.weight)  # shared down: frozen random projection
            assert not torch.equal(pa.up.weight, pb.up.weight) and not torch.equal(pb.up.weight, pc.up.weight)
    for p0, p1 in zip(end0.specific[0].parameters(), end1.specific[0].parameters()):
        assert torch.equal(p0, p1)  # task 0's specific LoRA untouched by task 1
    assert torch.equal(end0.block_weights[0], end1.block_weights[0])
    assert not torch.equal(rec.first[1]["model"].block_weights[1], end1.block_weights[1])  # task 1's weights train
    assert strategy.model.head is None and not trainable(strategy.model)


def test_teacher_is_the_shared_lora_after_the_previous_task(run):
    _, rec, _ = run
    assert rec.first[0]["model"].teacher is None
    end0, start1, end1 = rec.after[0]["model"], rec.first[1]["model"], rec.after[1]["model"]
    for a, b in zip(end0.shared.parameters(), start1.teacher.parameters()):
        assert torch.equal(a, b)  # task 1 distils towards the shared LoRA as task 0 left it
    for a, b in zip(end1.shared.parameters(), end1.teacher.parameters()):
        assert torch.equal(a, b)  # and task 2 would distil towards task 1's
    assert not all(torch.equal(a, b) for a, b in zip(start1.teacher.parameters(), end1.teacher.parameters()))
    assert not any(p.requires_grad for p in end1.teacher.parameters())


def test_distillation_target_is_the_head_on_the_teachers_shared_blocks(run, images):
    _, rec, _ = run
    m = copy.deepcopy(rec.first[1]["model"])  # task 1 before its first step: teacher = shared after task 0
    randomize(m.shared, 3)  # let student and teacher differ
    student, teacher = m.distillation_logits(images)
    with torch.no_grad():
        plain_t = merged_blocks(m, m.teacher)
        plain_s = merged_blocks(m, m.shared)
        cos = lambda f: m.head.sigma * F.normalize(f, dim=1) @ F.normalize(m.head.weight, dim=1).T  # noqa: E731
        assert torch.allclose(teacher, cos(plain_readout(plain_t, images, 6)), atol=1e-5)
        assert torch.allclose(student, cos(plain_readout(plain_s, images, 6)), atol=1e-5)
    assert student.shape == (len(images), 2) and not torch.allclose(student, teacher, atol=1e-4)
    randomize(m.specific[-1], 4)  # the specific blocks do not enter the distillation
    assert torch.allclose(m.distillation_logits(images)[1], teacher)
    # the teacher's logits are not detached: the head gets gradient through both (cllora.py:361-368)
    loss = kd_loss(*m.distillation_logits(images), 2.0)
    both = torch.autograd.grad(loss, m.head.weight)[0]
    s, t = m.distillation_logits(images)
    only_student = torch.autograd.grad(kd_loss(s, t.detach(), 2.0), m.head.weight)[0]
    assert not torch.allclose(both, only_student, atol=1e-6)


def test_a_later_tasks_step_is_a_distillation_step_then_the_cross_entropy_step(run):
    _, rec, _ = run
    snap = rec.first[1]
    m = copy.deepcopy(snap["model"])
    x, y, lr = snap["x"], snap["y"], snap["lr"]
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    # cross-entropy over the task's head (targets shifted) + 1e-4 * orthogonality, at the weights of the forward
    classes = m.head.class_ids
    logits = m.head.sigma * F.normalize(m.features(x), dim=1) @ F.normalize(m.head.weight, dim=1).T
    ce = F.cross_entropy(logits, torch.searchsorted(classes, y))
    bw = m.block_weights
    ce = ce + 1e-4 * (F.normalize(bw[1].flatten(), dim=0) @ F.normalize(bw[0].flatten(), dim=0)).abs()
    ce_grads = torch.autograd.grad(ce, params)
    # the distillation step: 5 * KD(T=2), rows of each shared up gradient scaled by the teacher's row norms
    opt.zero_grad()
    s, t = m.distillation_logits(x)
    (5.0 * -(torch.softmax(t / 2, 1) * torch.log_softmax(s / 2, 1)).sum() / len(x)).backward()
    for now, old in zip(m.shared, m.teacher):
        for pair, teacher_pair in zip(now, old):
            n = teacher_pair.up.weight.norm(dim=1)
            pair.up.weight.grad *= (len(n) * n / n.sum())[:, None]
    opt.step()
    for p, g in zip(params, ce_grads):
        p.grad = g
    opt.step()
    stepped = [p for p in snap["stepped"].parameters() if p.requires_grad]
    assert len(stepped) == len(params)
    for a, b in zip(params, stepped):
        assert torch.allclose(a, b, atol=1e-7, rtol=1e-5)
    # and the distillation step mattered: the cross-entropy step alone lands elsewhere
    alone = copy.deepcopy(snap["model"])
    ps = [p for p in alone.parameters() if p.requires_grad]
    opt = torch.optim.SGD(ps, lr=lr, momentum=0.9, weight_decay=1e-4)
    for p, g in zip(ps, ce_grads):
        p.grad = g
    opt.step()
    assert max((a - b).abs().max().item() for a, b in zip(ps, stepped)) > 1e-5


def test_prototypes_are_class_means_through_their_own_tasks_pathway(run):
    strategy, rec, _ = run
    model = strategy.model
    assert model.proto_task.tolist() == [0, 0, 1, 1]
    for t, after in enumerate(rec.after):
        for c, mean in after["means"].items():
            row = (model.proto_class == c).nonzero().item()
            assert model.proto_task[row] == t
            assert torch.allclose(model.prototypes[row], mean, atol=1e-5)  # kept, never recomputed


def test_inference_scores_each_tasks_classes_through_that_tasks_pathway(run, images):
    strategy, _, accs = run
    model = copy.deepcopy(strategy.model).eval()
    randomize(model.specific[0], 5, 0.2)  # trained 2 epochs on 16 images, the pathways barely differ; make them
    randomize(model.specific[1], 6, 0.2)
    with torch.no_grad():
        logits = model(images)
        expected = torch.empty_like(logits)
        other = torch.empty_like(logits)
        for c, t, proto in zip(model.proto_class, model.proto_task, model.prototypes):
            feats = [plain_readout(merged_blocks(model, model.shared, model.specific[k], model.block_weights[k]),
                                   images, 12) for k in (int(t), 1 - int(t))]
            expected[:, c] = F.cosine_similarity(feats[0], proto[None], dim=1)
            other[:, c] = F.cosine_similarity(feats[1], proto[None], dim=1)
    assert torch.allclose(logits, expected, atol=1e-5)
    assert not torch.allclose(logits, other, atol=1e-3)  # the pathway matters
    assert all(0.0 <= a <= 1.0 for a in accs)


def test_stored_state_after_two_tasks(run):
    strategy, _, _ = run
    parts = cl_lora.stored_breakdown(strategy)
    lora = 2 * 2 * 192 * 8  # q and v pairs, down + up
    assert parts == {"shared_lora": 6 * lora, "kd_teacher": 6 * lora, "specific_lora": 2 * 6 * lora,
                     "block_weights": 2 * 3 * 6, "prototypes": 4 * 192, "training_head": 0}
    assert cl_lora.stored_params(strategy) == sum(parts.values())
    assert cl_lora.blocks_per_image(10) == 66  # 6 shared once + 10 tasks x 6 specific


def test_an_experience_repeating_classes_is_refused_before_the_model_changes():
    from test_errors import _overlapping_streams  # {0, 1} then {1, 2}

    a, b = _overlapping_streams()
    s = build(epochs=1)
    s.train(a.train_stream[0])
    before = {k: v.clone() for k, v in s.model.state_dict().items()}
    with pytest.raises(ValueError, match=r"shares classes \[1\] with earlier experiences; CL-LoRA is class-incremental"):
        s.train(b.train_stream[0])
    after = s.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert s.model.num_tasks == 1 and s.model.head is None
