"""Every committed result stays reproducible: a few tiny training steps of SD-LoRA, -RR, -KD, every Table 4 variant
and every model option give the logits, magnitudes and optimizer layout recorded in ``tests/data/training_trace.json``.

The recording was made on the code before the options/variants refactor (issue 33); ``python tests/test_training_trace.py``
writes it again (only for an intended change of behaviour). Tolerances absorb another CPU's float kernels, not a
changed random stream, initialisation or update, which move these numbers by orders of magnitude more.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from avalanche.benchmarks.scenarios import class_incremental_benchmark
from avalanche.training.plugins import EvaluationPlugin
from random_images import random_images

from avalanche_sdlora import SDLoRA, SDLoRAKD, SDLoRARR, sdlora_vit

TRACE = Path(__file__).parent / "data" / "training_trace.json"
IMG = 32

# name: (strategy class, sdlora_vit keywords, strategy keywords)
CASES: dict[str, tuple[type, dict, dict]] = {
    "sdlora": (SDLoRA, {}, {}),
    "sdlora-rr": (SDLoRARR, {}, {"rank_schedule": {0: 3, 1: 2, 2: 1}}),
    "sdlora-kd": (SDLoRAKD, {}, {"kd_threshold": 1.0}),
    "fixed-direction": (SDLoRA, {}, {"variant": "fixed-direction"}),
    "single-component": (SDLoRA, {}, {"variant": "single-component"}),
    "single-component-normalized": (SDLoRA, {"normalize_current": True}, {"variant": "single-component"}),
    "frozen-old-magnitudes": (SDLoRA, {}, {"variant": "frozen-old-magnitudes", "reset_alphas": False}),
    "span": (SDLoRA, {"pair_init": "span"}, {}),
    "paper-form": (SDLoRA, {"normalize_current": True, "direction_norm": "frobenius", "head_init": "zeros"},
                   {"reset_alphas": False, "alpha_init": 0.5}),
    "alpha-lr": (SDLoRA, {}, {"alpha_lr": 0.2}),
}


# Looser tolerances for a case that float kernels move more than the defaults allow (logits: rtol 1e-4, atol 1e-5;
# summed |delta W|: rel 1e-5). "span": task 2's A starts inside span(A_1) and leaves it only by two SGD steps, so half
# of the basis task 3 projects onto is set by those steps' float rounding. Measured on one Intel Xeon: mkldnn on against
# off moves its logits by 0.037-0.055 and its summed |delta W| by 1.5e-4 relative (the other cases' logits by < 4e-6);
# the recording (AMD EPYC) sits 0.032 and 2.9e-4 away; a 1 % larger learning rate moves them by 0.29 and 8.2e-3, another
# seed moves the logits by 6.3. The tolerances below pass the first two and fail the others.
LOGIT_ATOL = {"span": 0.15}
DELTA_REL = {"span": 2e-3}


def _benchmark():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(6).repeat_interleave(4)
    train = random_images(y, g, IMG)
    return class_incremental_benchmark({"train": train, "test": train}, num_experiences=3,
                                       class_order=[0, 1, 2, 3, 4, 5])


def trace(name: str) -> dict:
    """Train case ``name`` for three experiences (one epoch, batch 4) and read back what it learned."""
    cls, model_kw, strategy_kw = CASES[name]
    torch.manual_seed(0)
    model = sdlora_vit("vit_tiny_patch16_224", img_size=IMG, rank=3, **model_kw)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "No loggers specified"
        strategy = cls(model=model, optimizer=optimizer, train_mb_size=4, train_epochs=1, device="cpu",
                       evaluator=EvaluationPlugin(loggers=[]), **strategy_kw)
        for exp in _benchmark().train_stream:
            strategy.train(exp, num_workers=0)
    names = {id(p): n for n, p in model.named_parameters()}
    images = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model.eval()(images)
    return {"logits": logits.flatten().tolist(), "alpha": model.magnitudes.alpha.detach().tolist(),
            "stored_rank": [a.stored_rank for a in model.adapters[:1]],
            "delta_sum": float(sum(a.delta_weight().detach().double().abs().sum() for a in model.adapters)),
            "groups": [[names.get(id(p), "?") for p in g["params"]] for g in optimizer.param_groups],
            "lrs": [g["lr"] for g in optimizer.param_groups]}


@pytest.mark.parametrize("name", list(CASES))
def test_training_trace_is_unchanged(name):
    expected = json.loads(TRACE.read_text())[name]
    got = trace(name)
    assert got["groups"] == expected["groups"] and got["lrs"] == expected["lrs"]
    assert got["stored_rank"] == expected["stored_rank"]
    torch.testing.assert_close(torch.tensor(got["alpha"]), torch.tensor(expected["alpha"]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor(got["logits"]), torch.tensor(expected["logits"]), rtol=1e-4,
                               atol=LOGIT_ATOL.get(name, 1e-5))
    assert got["delta_sum"] == pytest.approx(expected["delta_sum"], rel=DELTA_REL.get(name, 1e-5))


if __name__ == "__main__":
    TRACE.parent.mkdir(exist_ok=True)
    TRACE.write_text(json.dumps({name: trace(name) for name in CASES}, indent=1) + "\n")
    print(f"wrote {TRACE}")
