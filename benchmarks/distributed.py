"""The harness under ``torchrun``: one process group, every rank trains its shard, rank 0 alone writes (issue 20).

``torchrun --nproc_per_node N -m benchmarks.compare ...`` runs each (method, seed) of the call on all N ranks, one
after another: the global ``--batch-size`` is split evenly between the ranks, every strategy is data-parallel through
the library's :class:`~avalanche_sdlora.distributed.DataParallelMixin` (added here to a method's strategy that lacks
it), and every rank evaluates its shard of the test set while the metrics see the whole set. Rank 0 alone takes the
run folder's lock and writes config.json, the parts, the reports, the checkpoints, Avalanche's CSV logs and DONE; a
decision it makes alone (a refused resume, a finished folder) reaches every rank through :func:`on_main`. Without
torchrun nothing here is active.

Under torchrun a failed (method, seed) ends the call (unlike one process, where the other runs go on): a rank cannot
tell whether the others stopped at the same step, and one that went on to the next run's collectives while another is
still inside this run's would mismatch them. The failing rank exits, torchrun stops the others, and ``--resume``
continues from what rank 0 wrote.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import torch
from avalanche.distributed import DistributedHelper
from avalanche.training.templates import SupervisedTemplate

from avalanche_sdlora.distributed import DataParallelMixin

from .config import RunConfig

T = TypeVar("T")
LAUNCH_HELP = "torchrun --nproc_per_node"

# Why a method cannot run data-parallel (its ``single_process_only`` trait), one sentence per mechanism.
SHARDED_FIT = ("its classifier is fitted from a pass over the training images, which Avalanche's loaders shard "
               "between the ranks under torchrun, so each rank would fit its own shard (the fit's statistics are not "
               "all-reduced)")
SHARDED_COVARIANCES = ("its input matrices and kept subspace come from covariances of the training loader's images, "
                       "which torchrun shards, so each rank would compute its own (they are not all-reduced)")
OWN_TRAINING_FORWARD = ("its training forward is the prompt model's forward_train (the task's prompts and an extra "
                        "loss term), which DataParallelMixin, calling model(x) through DistributedDataParallel, would "
                        "bypass")
AVALANCHE_L2P = ("Avalanche's own LearningToPrompt computes its key-matching loss in its own forward, which "
                 "DataParallelMixin would bypass")


def launched() -> bool:
    """Whether this process was started by torchrun (it sets LOCAL_RANK, as Avalanche's ``init_distributed`` reads)."""
    return os.environ.get("LOCAL_RANK") is not None


def world_size() -> int:
    """Processes of the launch (1 without torchrun); read from torchrun's environment, so known before the group."""
    return int(os.environ.get("WORLD_SIZE", "1")) if launched() else 1


def rank() -> int:
    return int(os.environ.get("RANK", "0")) if launched() else 0


def is_main() -> bool:
    """Rank 0, or the only process: the one that writes."""
    return rank() == 0


def backend(cfg: RunConfig) -> str | None:
    """The process group's backend (None without torchrun): NCCL for GPU runs, gloo on CPU, as Avalanche picks."""
    if not launched():
        return None
    if DistributedHelper.is_distributed:
        return DistributedHelper.backend
    return "nccl" if cfg.device.startswith("cuda") and torch.cuda.is_available() else "gloo"


def check_launch(cfg: RunConfig, jobs: int) -> None:
    """Refuse, in one sentence naming the flag, what a torchrun launch cannot run (nothing without torchrun)."""
    if not launched():
        return
    n = world_size()
    if jobs != 1:
        raise ValueError(f"--jobs {jobs}: under torchrun the {n} processes run each (method, seed) together, one after "
                         "another; leave --jobs out (it runs several small runs side by side in one process)")
    if cfg.batch_size % n:
        near = sorted({max(n, cfg.batch_size // n * n), (cfg.batch_size // n + 1) * n})
        raise ValueError(f"--batch-size {cfg.batch_size} is not divisible by the {n} processes of {LAUNCH_HELP} {n} "
                         f"(each trains batch-size / {n} images per step); pass e.g. --batch-size "
                         f"{' or '.join(map(str, near))}")
    if cfg.device.startswith("cuda:"):
        raise ValueError(f"--device {cfg.device}: under torchrun every rank uses the GPU of its own rank; pass "
                         "--device cuda")
    local = int(os.environ.get("LOCAL_WORLD_SIZE", n))
    if cfg.device.startswith("cuda") and local != n:
        raise ValueError(f"--device {cfg.device} on {n // max(local, 1)} nodes: Avalanche 0.6's DistributedHelper puts "
                         "rank r on cuda:r, which only the first node has; run on one node (torchrun --standalone "
                         f"--nproc_per_node {local}), or on CPUs with --device cpu")


def check_methods(methods: Sequence[str]) -> None:
    """Refuse the methods that cannot run data-parallel (their ``single_process_only`` trait says why)."""
    from .methods import get_method

    if not launched():
        return
    refused = [(m, get_method(m).single_process_only) for m in methods if get_method(m).single_process_only]
    if refused:
        why = "; ".join(f"{m}: {reason}" for m, reason in refused)
        raise ValueError(f"--methods: {', '.join(m for m, _ in refused)} cannot run under torchrun ({why}); run "
                         "them in one process (python -m benchmarks.compare, --jobs for several side by side)")


def start(cfg: RunConfig, seed: int) -> None:
    """Join torchrun's process group once per process (Avalanche's ``init_distributed``: the backend, the GPU of this
    rank, one seed on every rank); nothing without torchrun."""
    if launched() and not DistributedHelper.is_distributed:
        DistributedHelper.init_distributed(random_seed=seed, use_cuda=cfg.device.startswith("cuda"))


def stop() -> None:
    """Leave the process group (at the end of a command that joined it)."""
    if DistributedHelper.is_distributed:
        torch.distributed.destroy_process_group()


def device(cfg: RunConfig) -> str:
    """The device of this rank's strategy: ``cuda:<rank>`` (or cpu with gloo) under torchrun, else ``--device``."""
    return str(DistributedHelper.make_device()) if DistributedHelper.is_distributed else cfg.device


def train_batch(cfg: RunConfig) -> int:
    """This rank's training minibatch: the global ``--batch-size`` split evenly (checked by :func:`check_launch`)."""
    return cfg.batch_size // world_size()


def on_main(action: Callable[[], T]) -> T:
    """Run ``action`` on rank 0 alone and hand its result, or its refusal, to every rank.

    A ``SystemExit`` with a message (a refused resume, a folder in use) is raised on every rank with rank 0's message,
    so every rank stops there instead of waiting for a rank that left. Without a process group ``action`` just runs.
    """
    if not DistributedHelper.is_distributed:
        return action()
    outcome: tuple[str, object]
    if DistributedHelper.is_main_process:
        try:
            outcome = ("ok", action())
        except SystemExit as exc:
            outcome = ("exit", exc.code)
            DistributedHelper.broadcast_object(outcome)
            raise
        except BaseException as exc:  # noqa: BLE001 - the others must not wait for a rank that failed
            DistributedHelper.broadcast_object(("error", f"{type(exc).__name__} on rank 0: {exc}"))
            raise
        DistributedHelper.broadcast_object(outcome)
        return outcome[1]  # type: ignore[return-value]
    kind, value = DistributedHelper.broadcast_object(None)
    if kind == "ok":
        return value  # type: ignore[return-value]
    raise SystemExit(value if kind == "exit" else f"error: {value}")


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """A section rank 0 runs first while the others wait, then the others (e.g. rank 0 fills the image cache the
    others then map). Barriers only: Avalanche's ``main_process_first`` also steps every RNG when it ends."""
    if not DistributedHelper.is_distributed:
        yield
        return
    if not DistributedHelper.is_main_process:
        DistributedHelper.barrier()
    try:
        yield
    finally:
        if DistributedHelper.is_main_process:
            DistributedHelper.barrier()


def data_parallel(strategy, method: str):
    """``strategy`` made data-parallel under torchrun: DataParallelMixin put before its template.

    The library's strategies have the mixin already; a method's own ``SupervisedTemplate`` subclass (Avalanche's
    Naive, LwF, JointTraining, ...) gets it here, generically: the strategy is re-made as the subclass
    ``DataParallel<Class>`` holding the same attributes (the mixin keeps no state but class defaults, and no Avalanche
    plugin or template keeps a reference to the strategy object; ``__class__`` cannot simply be reassigned, as
    Avalanche's templates derive from ``typing.Protocol``, which gives them another layout). A strategy whose training
    forward is its own would have it bypassed by the mixin's forward, so it is refused naming the class. Without
    torchrun ``strategy`` is returned untouched.
    """
    if not DistributedHelper.is_distributed or isinstance(strategy, DataParallelMixin):
        return strategy
    cls = type(strategy)
    if not isinstance(strategy, SupervisedTemplate):
        raise ValueError(f"method {method}: its strategy {cls.__name__} is not an Avalanche SupervisedTemplate, so it "
                         "cannot be made data-parallel under torchrun; run it in one process")
    if cls.forward is not SupervisedTemplate.forward:
        owner = next(k for k in cls.__mro__ if "forward" in vars(k))
        raise ValueError(f"method {method}: {owner.__name__}.forward is its own training forward, which "
                         "DataParallelMixin would route around DistributedDataParallel; run it in one process (and "
                         "give the method a single_process_only reason)")
    made = object.__new__(_with_mixin(cls))
    made.__dict__.update(vars(strategy))
    return made


_MIXED: dict[type, type] = {}


def _with_mixin(cls: type) -> type:
    if cls not in _MIXED:
        _MIXED[cls] = type(f"DataParallel{cls.__name__}", (DataParallelMixin, cls),
                           {"__module__": __name__, "__doc__": f"{cls.__name__} with DataParallelMixin (torchrun)."})
    return _MIXED[cls]
