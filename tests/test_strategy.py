"""SD-LoRA as an Avalanche strategy: what trains, what stays frozen, accuracy, second width, determinism."""

from __future__ import annotations

import torch
from avalanche.core import SupervisedPlugin
from conftest import make_evaluator, stream_acc

from avalanche_sdlora import SDLoRA, sdlora_vit


class Probe(SupervisedPlugin):
    """Records, at the first backward of each experience, which parameters got a gradient and what
    the optimizer holds; also keeps the head's initial new rows."""

    def __init__(self):
        super().__init__()
        self.records = []

    def before_backward(self, strategy, **kwargs):
        if strategy.clock.train_exp_iterations == 0:
            for p in strategy.model.parameters():
                p.grad = None  # stale grads of earlier experiences' params are not "reaching" them now

    def after_backward(self, strategy, **kwargs):
        if strategy.clock.train_exp_iterations != 0:
            return
        m = strategy.model
        named = dict(m.named_parameters())
        self.records.append({
            "grad": {n for n, p in named.items() if p.grad is not None},
            "grad_nonzero": {n for n, p in named.items() if p.grad is not None and p.grad.abs().sum() > 0},
            "requires_grad": {n for n, p in named.items() if p.requires_grad},
            "optimizer": [{id(p) for p in g["params"]} for g in strategy.optimizer.param_groups],
            "lrs": [g["lr"] for g in strategy.optimizer.param_groups],
            "ids": {n: id(p) for n, p in named.items()},
            "head_init": (m.head.weights[-1].detach().clone(), m.head.biases[-1].detach().clone()),
        })


def expected_trainable(model, exp_index):
    names = {"magnitudes.alpha", f"head.rows.{exp_index}.weight", f"head.rows.{exp_index}.bias"}
    for i in range(len(model.backbone.blocks)):
        names |= {f"backbone.blocks.{i}.attn.qkv.lora_A", f"backbone.blocks.{i}.attn.qkv.lora_B"}
    return names


def test_only_current_pair_alpha_and_new_head_rows_train(tiny_vit, tiny_bench, make_strategy):
    model = tiny_vit()
    probe = Probe()
    strategy = make_strategy(SDLoRA, model, plugins=[probe], alpha_lr=0.05)
    frozen0 = {k: v.clone() for k, v in model.backbone.state_dict().items()}

    strategy.train(tiny_bench.train_stream[0])
    dirs1 = [(a.dir_A.clone(), a.dir_B.clone(), a.dir_scale.clone(), a.dir_slot.clone()) for a in model.adapters]
    head1 = (model.head.weights[0].detach().clone(), model.head.biases[0].detach().clone())
    alpha1 = model.magnitudes.alpha.detach().clone()

    strategy.train(tiny_bench.train_stream[1])

    # 5. frozen backbone bit-identical (every non-adapter tensor), old directions bit-identical
    after = model.backbone.state_dict()
    checked = 0
    for k, v in frozen0.items():
        if not any(s in k for s in ("dir_A", "dir_B", "dir_scale", "dir_slot", "qkv.merged")):
            assert torch.equal(after[k], v), k
            checked += 1
    assert checked == len(list(model.backbone.parameters())) > 100
    for a, (A, B, sc, sl) in zip(model.adapters, dirs1):
        r = A.shape[1]
        assert r == 4 and a.stored_rank == 8
        assert torch.equal(a.dir_A[:, :r], A) and torch.equal(a.dir_B[:, :, :r], B)
        assert torch.equal(a.dir_scale[:, :r], sc) and torch.equal(a.dir_slot[:r], sl)
        assert torch.all(a.dir_slot[r:] == 1)
    # the second task did train: its direction is non-zero and differs from the first
    assert all(torch.count_nonzero(a.dir_B[:, :, 4:]) > 0 for a in model.adapters)
    # head rows of the first experience's classes unchanged; the new rows moved
    assert torch.equal(model.head.weights[0], head1[0]) and torch.equal(model.head.biases[0], head1[1])
    assert not torch.equal(model.head.weights[1], probe.records[1]["head_init"][0])
    assert sorted(model.head.class_ids.tolist()) == [0, 1, 2, 3]

    # 6. one magnitude per task seen; the old one was reset to 0.8 (authors' default) and retrained
    assert len(model.magnitudes) == 2 and model.num_directions == 2
    assert not torch.equal(model.magnitudes.alpha[:1], alpha1)

    # 7. gradients reach exactly the current pair, alpha and the new head rows; the optimizer holds
    # exactly the requires_grad set (alpha in its own group with alpha_lr)
    for t, rec in enumerate(probe.records):
        want = expected_trainable(model, t)
        assert rec["grad"] == want
        assert rec["requires_grad"] == want
        assert f"head.rows.{t}.weight" in rec["grad_nonzero"]
        # B = 0 at the first step, so alpha's gradient is non-zero only through stored directions
        assert ("magnitudes.alpha" in rec["grad_nonzero"]) == (t > 0)
        assert "backbone.blocks.0.attn.qkv.lora_B" in rec["grad_nonzero"]
        alpha_id = rec["ids"]["magnitudes.alpha"]
        assert rec["optimizer"] == [{rec["ids"][n] for n in want if n != "magnitudes.alpha"}, {alpha_id}]
        assert rec["lrs"] == [0.01, 0.05]
    assert len(probe.records) == 2


def test_seen_class_accuracy_on_cifar_slice(cifar30_bench, make_strategy):
    """3 experiences x 10 CIFAR-100 classes with the shared pretrained ViT-Tiny at 64x64."""
    torch.manual_seed(0)
    model = sdlora_vit("vit_tiny_patch16_224", img_size=64, pretrained=True)
    strategy = make_strategy(SDLoRA, model, train_epochs=2)
    accs = []
    for t, exp in enumerate(cifar30_bench.train_stream):
        strategy.train(exp)
        accs.append(stream_acc(strategy.eval(cifar30_bench.test_stream[: t + 1])))
    n_seen = 30
    print(f"\n[test 8] SD-LoRA ViT-Tiny 64px, seen-class accuracy after each experience: "
          f"{[round(a, 4) for a in accs]} (chance after 3: {1 / n_seen:.4f}); alpha={model.magnitudes.alpha.tolist()}")
    assert len(model.magnitudes) == 3
    assert accs[-1] > 3.0 / n_seen
    assert accs[0] > 3.0 / 10


def test_second_width_runs_unchanged(tiny_bench, make_strategy):
    torch.manual_seed(0)
    model = sdlora_vit("vit_small_patch16_224", img_size=32, pretrained=False)
    strategy = make_strategy(SDLoRA, model)
    strategy.train(tiny_bench.train_stream[0])
    res = strategy.eval(tiny_bench.test_stream[:1])
    assert 0.0 <= stream_acc(res) <= 1.0
    a = model.adapters[0]
    assert a.dim == 384 and a.dir_B.shape == (2, 384, 10) and a.dir_A.shape == (2, 10, 384)
    assert len(model.adapters) == 12 and len(model.magnitudes) == 1
    assert torch.count_nonzero(a.dir_B) > 0


def test_deit_tiny_runs(tiny_bench, make_strategy):
    torch.manual_seed(0)
    model = sdlora_vit("deit_tiny_patch16_224", img_size=32, pretrained=False, rank=3)
    strategy = make_strategy(SDLoRA, model)
    strategy.train(tiny_bench.train_stream[0])
    strategy.eval(tiny_bench.test_stream[:1])
    assert model.adapters[0].stored_rank == 3 and len(model.magnitudes) == 1


def _tiny_run(seed, tiny_bench, make_strategy):
    torch.manual_seed(seed)
    model = sdlora_vit("vit_tiny_patch16_224", img_size=32, pretrained=False, rank=4)
    strategy = make_strategy(SDLoRA, model)
    for t, exp in enumerate(tiny_bench.train_stream):
        strategy.train(exp)
    acc = stream_acc(strategy.eval(tiny_bench.test_stream))
    return acc, model.magnitudes.alpha.detach().clone(), model.head.weights[-1].detach().clone()


def test_same_seed_same_result(tiny_bench, make_strategy):
    acc1, alpha1, head1 = _tiny_run(7, tiny_bench, make_strategy)
    acc2, alpha2, head2 = _tiny_run(7, tiny_bench, make_strategy)
    assert acc1 == acc2
    assert torch.equal(alpha1, alpha2) and torch.equal(head1, head2)
    _, alpha3, _ = _tiny_run(8, tiny_bench, make_strategy)
    assert not torch.equal(alpha1, alpha3)  # the seed matters, so the equality above is not vacuous


def test_rejects_non_sdlora_model():
    import pytest
    from torch import nn
    m = nn.Linear(2, 2)
    with pytest.raises(TypeError):
        SDLoRA(model=m, optimizer=torch.optim.SGD(m.parameters(), lr=0.1), evaluator=make_evaluator())
