"""Run by tests/test_distributed.py as ``torchrun --standalone --nproc_per_node 2 tests/ddp_worker.py OUT``.

A plain Avalanche script on two ranks (gloo, CPU): tiny SD-LoRA models on a tensor benchmark whose test
experiences hold an odd number of images (7 and 5), so Avalanche's eval shards are padded. Each rank writes what
it saw to OUT/rank<r>.json; rank 0 also writes the adapters of the shuffle-free run for the one-process comparison.
Importing this module (the test does, for ``benchmark`` and ``build``) runs nothing.
"""

from __future__ import annotations

import hashlib
import json
import sys
import warnings
from pathlib import Path

import torch
from avalanche.benchmarks.scenarios import class_incremental_benchmark
from avalanche.core import SupervisedPlugin
from avalanche.distributed import DistributedHelper
from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
from avalanche.logging import TextLogger
from avalanche.training.plugins import EvaluationPlugin
from random_images import random_images
from torch.utils.data import DataLoader

from avalanche_sdlora import DistillationPlugin, SDLoRA, SDLoRAKD, sdlora_vit
from avalanche_sdlora.adapter_io import adapter_state_dict
from avalanche_sdlora.checkpoint import CheckpointPlugin
from avalanche_sdlora.metrics import AverageAnytimeAccuracy

IMG = 32
TRAIN_PER_CLASS = 8  # 16 images per experience: 2 steps of 4 per rank and epoch
TEST_COUNTS = (4, 3, 3, 2)  # 7 and 5 test images per experience


def metric(res: dict, prefix: str, suffix: str = "") -> float:
    """The value of the one metric named ``prefix...suffix`` (task-label parts differ between benchmarks)."""
    names = [k for k in res if k.startswith(prefix) and k.endswith(suffix)]
    assert len(names) == 1, (prefix, suffix, sorted(res))
    return float(res[names[0]])


def exp_accs(res: dict) -> list[float]:
    return [metric(res, "Top1_Acc_Exp/eval_phase/test_stream", f"Exp{j:03d}") for j in range(2)]


def benchmark():
    g = torch.Generator().manual_seed(0)

    def data(counts):
        y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
        return random_images(y, g, IMG)

    return class_incremental_benchmark({"train": data([TRAIN_PER_CLASS] * 4), "test": data(TEST_COUNTS)},
                                       num_experiences=2, class_order=[0, 1, 2, 3])


def build(cls=SDLoRA, *, mb: int, epochs: int = 1, plugins=(), loggers=(), **kwargs):
    torch.manual_seed(0)
    model = sdlora_vit("vit_tiny_patch16_224", img_size=IMG, rank=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "No loggers specified"
        evaluator = EvaluationPlugin(accuracy_metrics(experience=True, stream=True), loss_metrics(stream=True),
                                     AverageAnytimeAccuracy(), loggers=list(loggers))
    return cls(model=model, optimizer=optimizer, train_mb_size=mb, eval_mb_size=3, train_epochs=epochs,
               evaluator=evaluator, plugins=list(plugins), device="cpu", **kwargs)


def digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def state_digests(model) -> dict:
    a = model.adapters
    return {"alpha": digest(model.magnitudes.alpha), "alpha_values": model.magnitudes.alpha.tolist(),
            "directions": digest(*[t for x in a for t in (x.dir_A, x.dir_B, x.dir_scale, x.dir_slot)]),
            "head": digest(*model.head.weights, *model.head.biases, model.head.class_ids)}


class Probe(SupervisedPlugin, supports_distributed=True):
    """What one rank trains on and holds: sample ids per epoch, the wrapper, the state after each experience."""

    def __init__(self):
        super().__init__()
        self.samples, self.wrapped, self.exps, self.eval_sizes = {}, [], [], {}

    def before_forward(self, strategy, **kwargs):
        key = f"{strategy.experience.current_experience}/{strategy.clock.train_exp_epochs}"
        self.samples.setdefault(key, []).extend(round(float(v), 5) for v in strategy.mb_x[:, 0, 0, 0])
        ddp, model = strategy._ddp, strategy.model
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        self.wrapped.append(ddp is not None and ddp.module is model and id(model.magnitudes.alpha) in trainable
                            and {id(p) for p in ddp.parameters() if p.requires_grad} == trainable)

    def after_training_epoch(self, strategy, **kwargs):
        a = strategy.model.adapters
        self.pair = digest(*[t for x in a if x.lora_A is not None for t in (x.lora_A, x.lora_B)])

    def after_training_exp(self, strategy, **kwargs):  # after the growth plugin froze the pair (and KD's fit)
        self.exps.append({"pair": self.pair, "unwrapped": strategy._ddp is None, **state_digests(strategy.model)})

    def before_eval_exp(self, strategy, **kwargs):
        self.eval_sizes[str(strategy.experience.current_experience)] = 0

    def after_eval_iteration(self, strategy, **kwargs):
        self.eval_sizes[str(strategy.experience.current_experience)] += len(strategy.mb_y)


@torch.no_grad()
def reference(model, stream, seen: set[int]) -> dict:
    """Accuracy of ``model`` on every image of ``stream``, one process, a plain loop: per experience, all, seen."""
    model.eval()
    per_exp, total, hits, seen_n, seen_hits = [], 0, 0, 0, 0
    for exp in stream:
        n = c = 0
        for x, y, *_ in DataLoader(exp.dataset, batch_size=100):
            right = model(x).argmax(1) == y
            keep = torch.tensor([int(v) in seen for v in y])
            n, c = n + len(y), c + int(right.sum())
            seen_n, seen_hits = seen_n + int(keep.sum()), seen_hits + int(right[keep].sum())
        per_exp.append(c / n)
        total, hits = total + n, hits + c
    return {"exp": per_exp, "stream": hits / total, "seen": seen_hits / seen_n}


def run_main(out: Path, rank: int) -> dict:
    """SD-LoRA-KD, shuffled, 2 epochs, checkpoints and a log on rank 0: the usual script."""
    bm = benchmark()
    probe = Probe()
    ckpt = CheckpointPlugin(out / f"ckpt-rank{rank}")  # one folder per rank here, to see who writes
    loggers = [TextLogger(open(out / f"log-rank{rank}.txt", "w"))] if DistributedHelper.is_main_process else []
    s = build(SDLoRAKD, mb=4, epochs=2, plugins=[ckpt, probe], loggers=loggers)
    record = {"compatible": s._check_distributed_training_compatibility(), "evals": []}
    seen: set[int] = set()
    for exp in bm.train_stream:
        s.train(exp)
        seen |= set(exp.classes_in_this_experience)
        res = s.eval(bm.test_stream)
        record["evals"].append({"stream": metric(res, "Top1_Acc_Stream/eval_phase/test_stream"), "exp": exp_accs(res),
                                "aaa": metric(res, "AAA/eval_phase/test_stream"),
                                "loss": metric(res, "Loss_Stream/eval_phase/test_stream"),
                                "reference": reference(s.model, bm.test_stream, seen),
                                "eval_sizes": dict(probe.eval_sizes)})
    ckpt.save(s)
    model = s.model
    model.merge()
    record["merged"] = digest(*[a.base_layer.weight for a in model.adapters])
    model.unmerge()
    record.update(samples=probe.samples, wrapped=probe.wrapped, exps=probe.exps,
                  kd=next(p for p in s.plugins if isinstance(p, DistillationPlugin)).history)
    if rank:
        try:
            TextLogger(sys.stdout)
            record["logger_refused"] = False
        except RuntimeError as exc:  # Avalanche: loggers exist on the main process only
            record["logger_refused"] = "non-main process" in str(exc)
    return record


def run_resume(out: Path, rank: int) -> dict:
    """A new strategy on every rank resumes from rank 0's folder (the one a real run shares)."""
    plugin = CheckpointPlugin(out / "ckpt-rank0")
    s = build(SDLoRAKD, mb=4, epochs=2, plugins=[plugin])
    return {"start": plugin.resume(s), **state_digests(s.model)}


def run_no_shuffle(out: Path, rank: int, name: str = "no-shuffle", **kwargs) -> dict:
    """SD-LoRA, no shuffle, batch 4 per rank: the same minibatches as one process with batch 8."""
    bm = benchmark()
    probe = Probe()
    s = build(SDLoRA, mb=4, plugins=[probe], **kwargs)
    accs = []
    for exp in bm.train_stream:
        s.train(exp, shuffle=False)
        accs.append(exp_accs(s.eval(bm.test_stream)))
    if rank == 0:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in adapter_state_dict(s.model).items()}, str(out / f"{name}.safetensors"))
    return {"accs": accs, "exps": probe.exps, "wrapped": probe.wrapped}


def run_fixed_direction(out: Path, rank: int) -> dict:
    """The magnitude stays one trainable Parameter into the second experience, under a new wrapper."""
    return run_no_shuffle(out, rank, "fixed-direction", variant="fixed-direction")


def run_twice(out: Path, rank: int) -> dict:
    """The same shuffled 2-epoch run twice in one process: a fixed seed and world size give the same model."""
    digests = []
    for _ in range(2):
        bm = benchmark()
        probe = Probe()
        s = build(SDLoRA, mb=4, epochs=2, plugins=[probe])
        for exp in bm.train_stream:
            s.train(exp)
        digests.append(probe.exps)
    return {"exps": digests}


def run_nan_on_rank1(out: Path, rank: int) -> dict:
    """Rank 1's inputs turn NaN at iteration 1: both ranks stop there, before that step's update."""

    class Poison(SupervisedPlugin, supports_distributed=True):
        def before_forward(self, strategy, **kwargs):
            if rank == 1 and strategy.clock.train_epoch_iterations == 1:
                strategy.mbatch[0] = strategy.mb_x * float("nan")

        def after_update(self, strategy, **kwargs):
            self.after_first = digest(*[p for p in strategy.model.parameters() if p.requires_grad])

    poison = Poison()
    s = build(SDLoRA, mb=4, plugins=[poison])
    try:
        s.train(benchmark().train_stream[0])
        return {"error": None}
    except FloatingPointError as exc:
        now = digest(*[p for p in s.model.parameters() if p.requires_grad])
        return {"error": str(exc), "unchanged": now == poison.after_first}


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    DistributedHelper.init_distributed(random_seed=0, use_cuda=False)
    rank = DistributedHelper.rank
    record = {"world": DistributedHelper.world_size, "backend": DistributedHelper.backend}
    for name, run in (("main", run_main), ("resume", run_resume), ("no_shuffle", run_no_shuffle), ("fixed_direction", run_fixed_direction),
                      ("twice", run_twice), ("nan", run_nan_on_rank1)):
        record[name] = run(out, rank)
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
