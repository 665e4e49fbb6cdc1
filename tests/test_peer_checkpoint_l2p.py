"""L2P checkpoints: the prompted model's state dict is L2P's whole trained state (one pool, one head, a fresh Adam per
experience); a restored strategy learns the next experience as the uninterrupted one does, and a checkpoint of
other prompts or other backbone weights is refused."""

from __future__ import annotations

import warnings

import pytest
import torch
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training.plugins import EvaluationPlugin
from torch.utils.data import DataLoader

from avalanche_sdlora.checkpoint import load_state
from benchmarks import peer_checkpoint
from benchmarks.peers.l2p import L2PStrategy, build_l2p

from conftest import TINY_IMG

CONFIG = {"method": "l2p", "seed": 0}


def build(seed: int = 0, **kwargs) -> L2PStrategy:
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "random backbone", "No loggers specified"
        evaluator = EvaluationPlugin(accuracy_metrics(stream=True), loggers=[])
        return build_l2p(model_name="vit_tiny_patch16_224", checkpoint=None, img_size=TINY_IMG, optimizer_lr=0.03,
                         train_mb_size=8, train_epochs=1, eval_mb_size=32, device="cpu", evaluator=evaluator,
                         num_classes=4, **kwargs)


def state(strategy: L2PStrategy) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in strategy.model.state_dict().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_restored_l2p_learns_the_next_experience_as_the_uninterrupted_one(tiny_bench, tmp_path, one_thread):
    train, test = tiny_bench.train_stream, tiny_bench.test_stream
    images = torch.cat([mb[0] for exp in test for mb in DataLoader(exp.dataset.eval(), batch_size=64)])
    clean = build()
    fresh_prompts = clean.model.prompt.prompt.detach().clone()
    clean.train(train[0])
    clean.eval(test[:1])
    after_first = state(clean)
    assert not torch.equal(after_first["prompt.prompt"], fresh_prompts)  # the pool trained
    peer_checkpoint.save(clean, tmp_path, 0, config=CONFIG)
    clean.train(train[1])
    clean.eval(test[:2])
    expected = state(clean)
    with torch.no_grad():
        expected_logits = clean.inference_model().eval()(images)

    resumed = build()
    extra = peer_checkpoint.load(resumed, tmp_path, 0, config=CONFIG)
    peer_checkpoint.restore_strategy_state(resumed, extra)
    assert_same(state(resumed), after_first)
    resumed.train(train[1])
    resumed.eval(test[:2])
    assert_same(state(resumed), expected)
    with torch.no_grad():
        assert torch.equal(resumed.inference_model().eval()(images), expected_logits)


def test_a_checkpoint_of_other_prompts_or_other_weights_is_refused(tiny_bench, tmp_path, one_thread):
    strategy = build()
    strategy.train(tiny_bench.train_stream[0])
    peer_checkpoint.save(strategy, tmp_path, 0, config=CONFIG)
    tensors, structure, _ = load_state(tmp_path, 0)
    with pytest.raises(ValueError, match=r"L2PStrategy: the checkpoint does not fit .*differing \['prompt\.prompt "
                                         r"\(20, 5, 192\)"):
        build(pool_size=10).restore_checkpoint(tensors, structure)  # a smaller prompt pool
    with pytest.raises(ValueError, match=r"frozen '\w+.*' differs from the weights this strategy was built from"):
        build(seed=1).restore_checkpoint(tensors, structure)  # other backbone weights: other query features
    with pytest.raises(ValueError, match="is not L2P's"):
        build().restore_checkpoint(tensors, {"tasks": 1})
    fresh = build()
    fresh.restore_checkpoint(tensors, structure)
    assert_same(state(fresh), state(strategy))
