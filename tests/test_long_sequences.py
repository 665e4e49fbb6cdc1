"""Issue 32: SD-LoRA over 50 experiences of 2 classes of the shared CIFAR-100 (the long-sequence protocol at tiny
scale): every task gets its own direction and magnitude, the stored state grows by one task's directions per task,
and nothing goes non-finite."""

import torch
from conftest import _require_cifar

from avalanche_sdlora import SDLoRA
from avalanche_sdlora.data import split_cifar100

TASKS, RANK = 50, 2


def test_fifty_two_class_experiences_train_sdlora(tiny_vit, make_strategy):
    _require_cifar()
    bench = split_cifar100(n_experiences=TASKS, train_per_class=2, test_per_class=1, img_size=32)
    assert [len(e.classes_in_this_experience) for e in bench.train_stream] == [2] * TASKS
    model = tiny_vit(rank=RANK)
    strategy = make_strategy(SDLoRA, model, train_mb_size=4)
    stored = []
    for exp in bench.train_stream:
        strategy.train(exp, num_workers=0)
        stored.append(model.stored_adapter_params())
    assert len(model.magnitudes) == model.num_directions == TASKS
    assert all(a.stored_rank == TASKS * RANK and a.lora_A is None for a in model.adapters)
    per_task = stored[0]
    assert stored == [per_task * (t + 1) for t in range(TASKS)]  # one task's directions and magnitude per task
    assert all(torch.isfinite(p).all() for p in model.state_dict().values() if p.is_floating_point())
    assert len(model.head.class_ids) == 2 * TASKS
    res = strategy.eval(bench.test_stream[-1:], num_workers=0)
    assert 0.0 <= float(res["Top1_Acc_Stream/eval_phase/test_stream/Task000"]) <= 1.0
