"""Why EWC stops with a NaN loss: ``python -m benchmarks.ewc_trace [--ewc-lambda 1000] [--seeds 0]``.

Reruns compare's ``ewc`` run of ``cifar100-tiny128`` (or of the settings its flags, compare's own, give) exactly
(same seeding, evaluator and evaluation between experiences, through ``benchmarks.runner.run``) with one extra
plugin that prints, every 8 iterations and at the end of experience 2 onwards, the total loss, its cross-entropy
part and the EWC penalty part (total minus cross-entropy), the norms of the LoRA and head weights and the largest
logit. With lambda 1000 the penalty, not the cross-entropy, runs away first.
Results go to a temporary folder; nothing in ``results/`` is touched. About 8 minutes on one CPU thread.
"""

from __future__ import annotations

import math
import sys
import tempfile

import torch
from avalanche.core import SupervisedPlugin

from . import compare, inputs, runner
from .config import add_run_flags, check_seeds, config_from_flags, default_seeds


class LossPartsTrace(SupervisedPlugin):
    """Prints the loss split into cross-entropy and everything the plugins added (here: the EWC penalty)."""

    def __init__(self, every: int = 8, dense_from: int = 250) -> None:
        super().__init__()
        self.every, self.dense_from = every, dense_from

    def after_backward(self, strategy, **kwargs) -> None:
        # After the backward pass every plugin's before_backward has run (ours runs before EWC's, which adds the
        # penalty there), so strategy.loss holds cross-entropy + penalty.
        total = float(strategy.loss.detach())
        ce = float(torch.nn.functional.cross_entropy(strategy.mb_output.detach(), strategy.mb_y))
        it = strategy.clock.train_iterations
        if it % self.every and math.isfinite(total) and it < self.dense_from:
            return
        named = list(strategy.model.named_parameters())
        lora = sum(float(p.detach().norm() ** 2) for n, p in named if "lora" in n) ** 0.5
        head = sum(float(p.detach().norm() ** 2) for n, p in named if "classifier" in n) ** 0.5
        print(f"exp {strategy.experience.current_experience} it {it} loss {total:.4g} ce {ce:.4g} "
              f"penalty {total - ce:.4g} lora {lora:.4g} head {head:.4g} "
              f"maxlogit {float(strategy.mb_output.detach().abs().max()):.4g}", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = compare.Parser(prog="python -m benchmarks.ewc_trace", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", nargs="+", type=int, help="default: 0 (with --class-order seed: 1993 1994 1995)")
    add_run_flags(p, defaults={"ewc_lambda": 1000.0, "threads": 1})  # the lambda that diverged; one thread, as run
    args = p.parse_args(argv)
    try:
        cfg = inputs.resolved(config_from_flags(args))
        args.seeds = default_seeds(cfg) if args.seeds is None else args.seeds
        check_seeds(args.seeds)
    except ValueError as exc:
        p.error(str(exc))
    torch.set_num_threads(cfg.threads)
    for seed in args.seeds:
        runner.run("ewc", seed, cfg, inputs.benchmark_for(cfg, seed), tempfile.mkdtemp(), plugins=[LossPartsTrace()],
                   on_row=lambda row: print(f"experience {row['experience']} done: seen-class accuracy "
                                            f"{100 * row['acc_seen']:.2f}%", flush=True))


if __name__ == "__main__":
    sys.exit(compare.cli(main=main))  # errors as one line, as compare's
