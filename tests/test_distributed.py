"""SD-LoRA under ``torchrun --nproc_per_node 2`` (gloo, CPU) on Avalanche's DistributedHelper (issue 20).

One launch of tests/ddp_worker.py (about 15 s on 2 cores) trains four tiny runs on two ranks; the tests read what
each rank wrote. The test sets hold 7 and 5 images, so Avalanche's eval shards are padded with repeated images.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from avalanche_sdlora.adapter_io import adapter_state_dict

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "ddp_worker.py"


def _why_not() -> str | None:
    if not dist.is_available() or not dist.is_gloo_available():
        return "torch.distributed with gloo is not available in this torch build"
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
    except OSError as exc:
        return f"cannot open a local socket for the rendezvous ({exc})"
    return None


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=str(_why_not()))


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER), str(out)]
    try:
        proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("the 2-rank run did not finish in 240 s (a rank waiting on a collective?)")
    if proc.returncode != 0:
        pytest.fail(f"torchrun failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return out, [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_two_gloo_ranks_and_every_plugin_declares_distributed_support(ranks):
    _, (r0, r1) = ranks
    assert (r0["world"], r0["backend"]) == (2, "gloo") == (r1["world"], r1["backend"])
    # Avalanche warns about plugins without supports_distributed: SD-LoRA's, CheckpointPlugin and the evaluator pass
    assert r0["main"]["compatible"] and r1["main"]["compatible"]


@pytest.mark.parametrize("run", ["main", "no_shuffle", "fixed_direction"])
def test_magnitudes_pair_directions_and_head_are_identical_across_ranks(ranks, run):
    _, (r0, r1) = ranks
    e0, e1 = r0[run]["exps"], r1[run]["exps"]
    assert len(e0) == len(e1) == 2
    assert e0 == e1  # sha256 of alpha, of the last pair, of every stored direction and of the head, per experience
    assert len(e0[-1]["alpha_values"]) == (1 if run == "fixed_direction" else 2)
    assert e0[0]["alpha"] != e0[1]["alpha"] and e0[0]["head"] != e0[1]["head"]  # they did change
    assert all(e["unwrapped"] for e in e0)  # the wrapper is dropped when the experience ends


def test_a_fixed_seed_and_world_size_give_the_same_run(ranks):
    _, (r0, r1) = ranks
    first, second = r0["twice"]["exps"]
    assert first == second == r1["twice"]["exps"][0] == r1["twice"]["exps"][1]
    assert first != r0["main"]["exps"]  # another run (SDLoRA, not the KD run) is another model


def test_merged_model_and_kd_decisions_are_identical_across_ranks(ranks):
    _, (r0, r1) = ranks
    assert r0["main"]["merged"] == r1["main"]["merged"]
    assert r0["main"]["kd"] == r1["main"]["kd"] and len(r0["main"]["kd"]) == 1


def test_every_training_forward_goes_through_a_wrapper_holding_this_experiences_trainable_set(ranks):
    _, (r0, r1) = ranks
    for r in (r0, r1):
        # at every step: DDP wraps the model, holds exactly the trainable parameters, the new magnitude among them
        assert len(r["main"]["wrapped"]) == 2 * 2 * 2 and all(r["main"]["wrapped"])
        assert all(r["fixed_direction"]["wrapped"])


def test_training_shards_each_experience_and_reshuffles_every_epoch(ranks):
    from ddp_worker import TRAIN_PER_CLASS, benchmark

    _, (r0, r1) = ranks
    bm = benchmark()
    for exp in bm.train_stream:
        ids = Counter(round(float(x[0, 0, 0]), 5) for x, *_ in exp.dataset)
        assert len(ids) == 2 * TRAIN_PER_CLASS
        orders = []
        for epoch in range(2):
            key = f"{exp.current_experience}/{epoch}"
            a, b = r0["main"]["samples"][key], r1["main"]["samples"][key]
            assert len(a) == len(b) == TRAIN_PER_CLASS and not set(a) & set(b)  # disjoint halves
            assert Counter(a + b) == ids  # together: the whole experience, each image once
            orders.append(a + b)
        assert orders[0] != orders[1]  # set_epoch: another order in the second epoch


def test_reported_accuracy_and_aaa_are_over_the_whole_test_set(ranks):
    _, (r0, r1) = ranks
    assert r0["main"]["evals"] == r1["main"]["evals"]  # every rank reports the same numbers
    seen = []
    for ev in r0["main"]["evals"]:
        ref = ev["reference"]  # one process, a plain loop over every test image, same model
        assert ev["eval_sizes"] == {"0": 7, "1": 5}  # the metrics saw each image once: no shard, no padding
        assert ev["stream"] == ref["stream"] and ev["exp"] == ref["exp"]
        seen.append(ref["seen"])
        assert ev["aaa"] == pytest.approx(sum(seen) / len(seen), abs=1e-12)
    assert r0["main"]["evals"][-1]["exp"] != [0.0, 0.0]


def test_only_rank_0_writes_checkpoints_and_logs(ranks):
    out, (_, r1) = ranks
    assert sorted(p.name for p in (out / "ckpt-rank0").iterdir()) == ["exp0.json", "exp0.safetensors", "exp1.json",
                                                                     "exp1.safetensors"]
    assert not (out / "ckpt-rank1").exists()
    assert (out / "log-rank0.txt").stat().st_size > 0 and not (out / "log-rank1.txt").exists()
    assert r1["main"]["logger_refused"]  # Avalanche refuses a logger on another rank


def test_every_rank_resumes_from_the_checkpoint_rank_0_wrote(ranks):
    _, (r0, r1) = ranks
    final = {k: r0["main"]["exps"][-1][k] for k in ("alpha", "directions", "head")}
    for r in (r0, r1):
        assert r["resume"]["start"] == 2
        assert {k: r["resume"][k] for k in final} == final


def test_a_nan_loss_on_one_rank_stops_both_before_the_update(ranks):
    _, (r0, r1) = ranks
    assert r1["nan"]["error"].startswith("loss is nan at experience 0, epoch 0, iteration 1: training stopped.")
    assert r0["nan"]["error"].startswith("loss is not finite on another rank at experience 0, epoch 0, iteration 1")
    assert r0["nan"]["unchanged"] and r1["nan"]["unchanged"]  # weights as after iteration 0 on both ranks


@pytest.mark.parametrize("run,variant", [("no_shuffle", "full"), ("fixed_direction", "fixed-direction")])
def test_two_ranks_of_batch_4_equal_one_process_of_batch_8(ranks, run, variant):
    """Without shuffling, rank r takes images r, r + 2, ...: each global minibatch is one process's minibatch of 8.

    Tolerance: DDP averages the two ranks' mean gradients, which is the one-process mean over 8 summed in another
    order; the float32 rounding (~1e-7 relative) then runs through 4 SGD steps with momentum, so the weights agree to
    1e-6 absolute or 1e-5 relative, not bit for bit (measured: 7e-8 absolute at most, 5e-7 relative on the 1 / norm
    scales of ~5e3). Accuracies are counts of argmax hits and agree exactly unless a logit pair lies within
    that rounding (at most one image of 7 or 5 is allowed to flip). 'fixed-direction' keeps training one magnitude
    Parameter into the second experience, under a second wrapper.
    """
    from ddp_worker import benchmark, build, exp_accs

    out, (r0, _) = ranks
    torch.set_num_threads(1)
    bm = benchmark()
    s = build(mb=8, variant=variant)
    accs = []
    for exp in bm.train_stream:
        s.train(exp, shuffle=False)
        accs.append(exp_accs(s.eval(bm.test_stream)))
    two = load_file(str(out / f"{run.replace('_', '-')}.safetensors"))
    one = adapter_state_dict(s.model)
    assert sorted(one) == sorted(two)
    for k in one:
        torch.testing.assert_close(one[k], two[k], rtol=1e-5, atol=1e-6, msg=k)
    alpha = one["magnitudes.alpha"]
    assert not torch.allclose(alpha, torch.full_like(alpha, 0.8), atol=1e-3)  # it did train
    for row_one, row_two in zip(accs, r0[run]["accs"]):
        for a, b, n in zip(row_one, row_two, (7, 5)):
            assert abs(a - b) <= 1 / n + 1e-12
