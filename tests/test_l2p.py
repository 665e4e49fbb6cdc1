"""Avalanche's LearningToPrompt through benchmarks.peers.l2p: timm 1.x, local weights, any ViT width."""

from __future__ import annotations

import warnings

import pytest
import torch
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.plugins import EvaluationPlugin

import avalanche.training.supervised.l2p as avl_l2p
from avalanche_sdlora.assets import default_asset
from avalanche_sdlora.data import split_cifar100
from avalanche_sdlora.model import create_backbone
from benchmarks.peers.l2p import L2PStrategy, build_l2p, build_l2p_model

IMG = 32  # 2x2 patches: 1 cls + 25 prompt + 4 patch tokens


@pytest.fixture(scope="module")
def bench():
    if default_asset("cifar100.npz") is None:
        pytest.skip("shared cifar100.npz not found")
    return split_cifar100(n_experiences=2, train_per_class=5, test_per_class=5, img_size=IMG, classes=list(range(4)))


def _evaluator() -> EvaluationPlugin:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "No loggers specified"
        return EvaluationPlugin(accuracy_metrics(stream=True), loggers=[])


def _strategy(model_name: str, checkpoint: str | None, **kw) -> L2PStrategy:
    torch.manual_seed(0)
    return build_l2p(model_name=model_name, checkpoint=checkpoint, img_size=IMG, optimizer_lr=0.03, train_mb_size=4,
                     train_epochs=1, eval_mb_size=20, device="cpu", evaluator=_evaluator(), num_classes=4, **kw)


def _run(strategy: L2PStrategy, bench) -> float:
    for exp in bench.train_stream:
        strategy.train(exp)
    res = strategy.eval(bench.test_stream)
    acc = float(res["Top1_Acc_Stream/eval_phase/test_stream/Task000"])
    assert 0.0 <= acc <= 1.0
    return acc


def _snapshot(model, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith(prefix)}


def test_real_vit_tiny_two_experiences(bench):
    ckpt = default_asset("vit_tiny_patch16_224.safetensors")
    if ckpt is None:
        pytest.skip("shared ViT-Tiny weights not found")
    original_factory = avl_l2p.create_model
    s = _strategy("vit_tiny_patch16_224", str(ckpt))
    assert avl_l2p.create_model is original_factory  # the swap is scoped to construction
    m = s.model
    assert m.head.in_features == 192 and m.head.out_features == 4
    assert m.prompt.prompt.shape == (20, 5, 192) and m.prompt.top_k == 5  # Avalanche's defaults
    assert isinstance(s.optimizer, torch.optim.Adam) and s.optimizer.param_groups[0]["lr"] == 0.03
    # Real weights in both ViTs: the query ViT reproduces timm's features; prompt positions = cls position.
    x = bench.test_stream[0].dataset[0][0].unsqueeze(0)
    ref = create_backbone("vit_tiny_patch16_224", checkpoint=ckpt, img_size=IMG).eval()
    with torch.no_grad():
        torch.testing.assert_close(s.original_vit(x)["pre_logits"], ref(x))
        torch.testing.assert_close(m.pos_embed[:, :26], ref.pos_embed[:, :1].expand(-1, 26, -1))
        torch.testing.assert_close(m.pos_embed[:, 26:], ref.pos_embed[:, 1:])
    assert not s.original_vit.training
    frozen, prompts, head = _snapshot(m, "blocks."), _snapshot(m, "prompt."), _snapshot(m, "head.")

    _run(s, bench)

    after = m.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in frozen.items()), "backbone must stay frozen"
    assert not all(torch.equal(v, after[k]) for k, v in prompts.items()), "prompts/keys must train"
    assert not all(torch.equal(v, after[k]) for k, v in head.items()), "head must train"
    with torch.no_grad():  # the inference wrapper is the strategy's eval forward
        logits = s.inference_model()(x)
    assert logits.shape == (1, 4) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name,width", [("vit_small_patch16_224", 384), ("deit_tiny_patch16_224", 192)])
def test_random_other_vits(bench, name, width):
    s = _strategy(name, None)
    assert s.model.head.in_features == width and s.model.prompt.prompt.shape[-1] == width
    _run(s, bench)


def test_build_l2p_model_any_width():
    m = build_l2p_model("vit_small_patch16_224", None, IMG, 7)
    out = m(torch.randn(2, 3, IMG, IMG))
    assert out.shape == (2, 7) and not m.training
    assert m.prompt_model.pos_embed.shape == (1, 1 + 25 + 4, 384)


def test_rejects_what_it_cannot_run():
    with pytest.raises(ValueError, match="no_embed_class"):
        build_l2p_model("deit3_small_patch16_224", None, IMG, 4)
    with pytest.raises(ValueError, match="pretrained"):
        _strategy("vit_tiny_patch16_224", None, pretrained=True)
