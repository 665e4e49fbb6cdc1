"""DualPrompt and CODA-Prompt: the prefix-tuning ViT, each method's mechanism, and Avalanche integration."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from conftest import TINY_IMG, make_evaluator, stream_acc
from timm.layers import Attention

from avalanche_sdlora.model import create_backbone
from benchmarks.peers import coda_prompt, dualprompt
from benchmarks.peers.coda_prompt import CodaPromptViT, orthonormal_new
from benchmarks.peers.dualprompt import DualPromptViT
from benchmarks.peers.prefix_vit import PrefixAttention, PrefixViT

TINY = "vit_tiny_patch16_224"


pytestmark = pytest.mark.usefixtures("one_thread")


def backbone(seed: int = 0, name: str = TINY):
    torch.manual_seed(seed)
    return create_backbone(name, img_size=TINY_IMG).eval()


def build(module, n_experiences: int = 2, name: str = TINY, plugins=(), **options):
    torch.manual_seed(0)
    return module.build_strategy(model_name=name, checkpoint=None, img_size=TINY_IMG, num_classes=4,
                                 n_experiences=n_experiences, epochs=1, batch_size=8, eval_batch_size=16, device="cpu",
                                 evaluator=make_evaluator(), plugins=list(plugins), **options)


class Snapshot(SupervisedPlugin):
    """Copies of chosen tensors at the first epoch of each experience (after the task's prompts were opened)."""

    def __init__(self, get) -> None:
        super().__init__()
        self.get, self.taken = get, []

    def before_training_epoch(self, strategy, **kwargs) -> None:
        self.taken.append(self.get(strategy.model).detach().clone())


# ------------------------------------------------------------------------------------ prefix attention
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_zero_length_prefix_equals_timm_attention(fused, qk_norm):
    torch.manual_seed(0)
    attn = Attention(48, num_heads=3, qkv_bias=True, qk_norm=qk_norm, norm_layer=torch.nn.LayerNorm).eval()
    attn.fused_attn = fused
    wrapped = PrefixAttention(attn)
    x = torch.randn(2, 5, 48)
    empty = torch.zeros(2, 0, 48)
    wrapped.prefix = (empty, empty)
    assert torch.allclose(wrapped(x), attn(x), atol=1e-6, rtol=0)
    wrapped.prefix = None
    assert torch.equal(wrapped(x), attn(x))


def test_prefix_attention_attends_over_prefix_then_tokens():
    """Fused and explicit paths agree with a hand-written softmax over [prefix keys; keys]."""
    torch.manual_seed(0)
    attn = Attention(48, num_heads=3, qkv_bias=True).eval()
    wrapped = PrefixAttention(attn)
    x, pk, pv = torch.randn(2, 5, 48), torch.randn(2, 4, 48), torch.randn(2, 4, 48)
    q, k, v = attn.qkv(x).reshape(2, 5, 3, 3, 16).permute(2, 0, 3, 1, 4)
    heads = lambda t: t.reshape(2, -1, 3, 16).transpose(1, 2)  # noqa: E731  (a prefix token splits over heads)
    k, v = torch.cat([heads(pk), k], 2), torch.cat([heads(pv), v], 2)
    ref = ((q @ k.transpose(-2, -1)) * 16 ** -0.5).softmax(-1) @ v
    ref = attn.proj(ref.transpose(1, 2).reshape(2, 5, 48))
    wrapped.prefix = (pk, pv)
    for fused in (True, False):
        attn.fused_attn = fused
        assert torch.allclose(wrapped(x), ref, atol=1e-5)
    assert not torch.allclose(ref, attn(x), atol=1e-3)


def test_query_pass_sees_no_prompt(images):
    plain = backbone()
    model = DualPromptViT(copy.deepcopy(plain)).eval()
    with torch.no_grad():
        for p in [model.g_prompt, *model.e_prompts]:
            p.mul_(3.0)  # large prompts: any leak into the query would show
        expected = plain(images)
        assert torch.equal(model.vit.query(images), expected)
        prompted = model.logits_with(images, torch.zeros(3, dtype=torch.long))  # a prompted pass in between
        assert torch.equal(model.vit.query(images), expected)
        feats = model.vit(images, model._prefixes(torch.stack(list(model.e_prompts))[[0, 0, 0]], 3))
    assert not torch.allclose(feats, expected, atol=1e-3)
    assert prompted.shape == (3, 0)  # no class seen yet: the head has no rows


def test_prefix_vit_refuses_what_it_cannot_prompt():
    b = backbone()

    class RotaryLike(Attention):
        pass

    b.blocks[1].attn = RotaryLike(b.embed_dim, num_heads=3)
    with pytest.raises(ValueError, match="block 1 .* has RotaryLike attention"):
        PrefixViT(b, layers=(0, 1))
    with pytest.raises(ValueError, match=r"0\.\.11"):
        PrefixViT(backbone(), layers=(12,))
    with pytest.raises(TypeError, match="timm VisionTransformer"):
        PrefixViT(torch.nn.Linear(3, 3), layers=(0,))


# ------------------------------------------------------------------------------------ DualPrompt
def test_dualprompt_trains_with_task_prompt_and_tests_with_matched_key(images):
    model = DualPromptViT(backbone(), pool_size=4)
    model.head.add_classes([0, 1, 2])
    with torch.no_grad():
        for p in model.e_prompts:
            p.mul_(2.0)
        q = model.vit.query(images)
        # Hand-built keys: image b's own query direction is key slot (3, 0, 2)[b]; slot 1 is orthogonal to all.
        for b, slot in enumerate((3, 0, 2)):
            model.e_keys[slot].copy_(q[b])
        model.e_keys[1].copy_(torch.linalg.svd(q.T.double(), full_matrices=True)[0][:, -1].float())
    model.eval()
    assert model.select(q).tolist() == [3, 0, 2]
    with torch.no_grad():
        expected = model.logits_with(images, torch.tensor([3, 0, 2]))
        assert torch.equal(model(images), expected)
        assert not torch.allclose(expected, model.logits_with(images, torch.tensor([1, 1, 1])), atol=1e-4)

    model.start_task(), model.end_task()
    model.start_task()  # task 1: its E-prompt (a copy of prompt 0, init_from_previous) is the trainable one
    assert torch.equal(model.e_prompts[1], model.e_prompts[0])
    with torch.no_grad():
        model.e_prompts[1].add_(0.5)
        model.e_keys[1].copy_(q[0] + torch.randn(q.shape[1]))
    model.train()
    logits, pull = model.forward_train(images)
    with torch.no_grad():
        assert torch.allclose(logits, model.logits_with(images, torch.tensor([1, 1, 1])), atol=1e-6)
        cos = F.cosine_similarity(q, model.e_keys[1][None], dim=1)
        assert math.isclose(float(pull), -float(cos.mean()), rel_tol=1e-5)
    assert [p.requires_grad for p in model.e_prompts] == [False, True, False, False]
    assert [p.requires_grad for p in model.e_keys] == [False, True, False, False]
    logits.sum().backward()
    assert model.e_prompts[0].grad is None and model.e_keys[0].grad is None


def test_dualprompt_batchwise_vote_and_seen_only_matching():
    model = DualPromptViT(backbone(), pool_size=4).eval()
    e = torch.eye(model.vit.query_dim)
    q = e[:3]  # hand-made queries e0, e1, e2
    with torch.no_grad():
        for slot, key in enumerate((e[1] + e[2], -e[0], -e[1], e[0])):
            model.e_keys[slot].copy_(key)
    assert model.select(q).tolist() == [3, 0, 0]  # per image, over the whole pool (the references)
    model.batchwise_prompt = True
    assert model.select(q).tolist() == [0, 0, 0]  # one prompt per batch: the majority vote
    model.batchwise_prompt, model.key_match = False, "seen"
    model.start_task(), model.end_task(), model.start_task()  # tasks 0 and 1 seen: slot 3 is out of reach
    assert model.select(q).tolist() == [0, 0, 0]


def test_dualprompt_old_prompts_and_keys_bit_identical_after_next_task(tiny_bench):
    s = build(dualprompt)
    m = s.model
    s.train(tiny_bench.train_stream[0])
    frozen = {"e0": m.e_prompts[0].clone(), "k0": m.e_keys[0].clone(), "w0": m.head.weights[0].clone(),
              "b0": m.head.biases[0].clone(), "future": m.e_prompts[2].clone(), "k_future": m.e_keys[2].clone()}
    g, k1 = m.g_prompt.clone(), m.e_keys[1].clone()
    s.train(tiny_bench.train_stream[1])
    for name, t in (("e0", m.e_prompts[0]), ("k0", m.e_keys[0]), ("w0", m.head.weights[0]), ("b0", m.head.biases[0]),
                    ("future", m.e_prompts[2]), ("k_future", m.e_keys[2])):
        assert torch.equal(t, frozen[name]), name
    assert not torch.equal(m.g_prompt, g)  # the G-prompt is shared and trained in every task
    assert not torch.equal(m.e_prompts[1], frozen["e0"]) and not torch.equal(m.e_keys[1], k1)
    assert all(n.startswith(("g_prompt", "e_prompts.1", "e_keys.1", "head.rows.1."))
               for n in s.optimized_param_id)
    assert not any(p.requires_grad for p in m.vit.parameters())


# ------------------------------------------------------------------------------------ CODA-Prompt
def test_orthonormal_new_is_orthogonal_to_a_non_orthogonal_old_set():
    g = torch.Generator().manual_seed(0)
    old = torch.randn(30, 64, generator=g) + 2.0  # strongly correlated rows (like trained components)
    new = orthonormal_new(old, 20, generator=g)
    assert (new @ old.T / old.norm(dim=1)).abs().max() < 1e-5
    assert torch.allclose(new @ new.T, torch.eye(20), atol=1e-5)
    with pytest.raises(ValueError, match="pool_size"):
        orthonormal_new(old, 40)


def test_coda_prompt_is_attention_weighted_sum_of_components(images):
    model = CodaPromptViT(backbone(), n_tasks=2, pool_size=6, prompt_length=4).eval()
    model.start_task()
    pool = model.pools[0]
    q = torch.randn(3, model.vit.query_dim)
    keys, values = pool.prompt(q)
    P, K, A = pool.P[0], pool.K[0], pool.A[0]
    for b in range(3):
        alpha = torch.stack([F.cosine_similarity(q[b] * A[m], K[m], dim=0) for m in range(3)])
        p = (alpha[:, None, None] * P).sum(0)
        assert torch.allclose(keys[b], p[:2], atol=1e-6) and torch.allclose(values[b], p[2:], atol=1e-6)
    assert len(pool.P[0]) == 3  # pool 6 over 2 tasks


def test_coda_new_components_orthogonal_to_trained_old_ones(tiny_bench):
    s = build(coda_prompt, pool_size=40)
    s.train(tiny_bench.train_stream[0])
    m = s.model
    old = [[p.detach().clone() for p in (pool.P[0], pool.K[0], pool.A[0])] for pool in m.pools]
    flat = lambda t: t.reshape(t.shape[0], -1)  # noqa: E731
    gram = flat(old[0][0]) @ flat(old[0][0]).T
    assert (gram - torch.eye(20)).abs().max() > 1e-4  # training broke their orthonormality
    m.start_task()
    for pool, (P0, K0, A0) in zip(m.pools, old):
        for new, prev in ((pool.P[1], P0), (pool.K[1], K0), (pool.A[1], A0)):
            new, prev = flat(new.detach()), flat(prev)
            assert (new @ prev.T / prev.norm(dim=1)).abs().max() < 1e-5
            assert torch.allclose(new @ new.T, torch.eye(20), atol=1e-5)
        assert all(not p.requires_grad for p in (pool.P[0], pool.K[0], pool.A[0]))
        assert all(p.requires_grad for p in (pool.P[1], pool.K[1], pool.A[1]))


def test_coda_old_components_bit_identical_after_next_task(tiny_bench):
    current = Snapshot(lambda m: m.pools[2].K[-1])
    s = build(coda_prompt, pool_size=40, plugins=[current])
    m = s.model
    s.train(tiny_bench.train_stream[0])
    before = [[p.clone() for p in (pool.P[0], pool.K[0], pool.A[0])] for pool in m.pools]
    w0, b0 = m.head.weights[0].clone(), m.head.biases[0].clone()
    s.train(tiny_bench.train_stream[1])
    for pool, snap in zip(m.pools, before):
        for now, then in zip((pool.P[0], pool.K[0], pool.A[0]), snap):
            assert torch.equal(now, then)
    assert torch.equal(m.head.weights[0], w0) and torch.equal(m.head.biases[0], b0)
    assert not torch.equal(m.pools[2].K[1], current.taken[1])  # the current task's keys did train
    assert not any(p.requires_grad for p in m.vit.parameters())


def test_coda_cosine_schedule_per_epoch(tiny_bench):
    seen = []

    class LR(SupervisedPlugin):
        def before_training_epoch(self, strategy, **kwargs):
            seen.append(strategy.optimizer.param_groups[0]["lr"])

    torch.manual_seed(0)
    s = coda_prompt.build_strategy(model_name=TINY, checkpoint=None, img_size=TINY_IMG, num_classes=4, n_experiences=2,
                                   epochs=3, batch_size=16, eval_batch_size=16, device="cpu",
                                   evaluator=make_evaluator(), plugins=[LR()], pool_size=20)
    s.train(tiny_bench.train_stream[0])
    s.train(tiny_bench.train_stream[1])
    factor = [math.cos(99 * math.pi * e / 400) for e in range(3)]  # CODA: cos(99 pi e / (200 (K - 1))), K = 3
    assert seen == pytest.approx([1e-3 * f for f in factor] * 2)
    assert isinstance(s.optimizer, torch.optim.Adam) and s.optimizer.defaults["betas"] == (0.9, 0.999)


def test_coda_state_dict_round_trip(images, tiny_bench):
    s = build(coda_prompt, pool_size=20)
    s.train(tiny_bench.train_stream[0])
    fresh = CodaPromptViT(backbone(seed=5), n_tasks=2, pool_size=20)
    fresh.load_state_dict(s.model.state_dict(), strict=True)
    s.model.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(images), s.model(images))
    assert int(fresh.task) == 0 and not any(p.requires_grad for p in fresh.pools.parameters())


# ------------------------------------------------------------------------------------ end to end
@pytest.mark.parametrize("module", [dualprompt, coda_prompt], ids=["dualprompt", "coda-prompt"])
@pytest.mark.parametrize("name", [TINY, "vit_small_patch16_224"], ids=["tiny", "small"])
def test_two_experiences_end_to_end(module, name, tiny_bench):
    s = build(module, name=name, **({"pool_size": 40} if module is coda_prompt else {}))
    for i, exp in enumerate(tiny_bench.train_stream):
        s.train(exp)
        res = s.eval(tiny_bench.test_stream[: i + 1])
        assert 0.0 <= stream_acc(res) <= 1.0
    assert s._seen_classes == {0, 1, 2, 3}
    assert module.INFERENCE_FORWARD_PASSES == 2
    width = s.model.vit.query_dim
    assert module.stored_params(s) >= 4 * (width + 1)  # at least the head rows
    assert module.stored_params(s) == sum(p.numel() for n, p in s.model.named_parameters() if not n.startswith("vit."))
    for key in ("optimizer", "lr", "schedule", "batch_size", "epochs"):
        value, source = module.REFERENCE_HPARAMS[key]
        assert source


def test_builders_refuse_bad_settings():
    with pytest.raises(ValueError, match="pool_size >= 12"):
        build(dualprompt, n_experiences=12)
    with pytest.raises(ValueError, match="even integer"):
        build(coda_prompt, prompt_length=7)
    with pytest.raises(ValueError, match="pool_size <= 192"):
        build(coda_prompt, n_experiences=2, pool_size=400)
    with pytest.raises(TypeError, match="unknown DualPrompt options"):
        build(dualprompt, pool=3)
    with pytest.raises(ValueError, match="optimizer='adam'"):
        build(coda_prompt, optimizer="lion")
    s = build(dualprompt, lr=0.01, optimizer="sgd", pull_coeff=1.0, e_length=20)
    assert isinstance(s.optimizer, torch.optim.SGD) and s.optimizer.defaults["lr"] == 0.01
    assert s.pull_coeff == 1.0 and s.model.e_prompts[0].shape[2] == 20
