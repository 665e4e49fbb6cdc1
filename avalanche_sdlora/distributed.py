"""Data-parallel training under ``torchrun`` on Avalanche 0.6's ``DistributedHelper``.

The script sets up the process group the Avalanche way (``DistributedHelper.init_distributed(seed)``: gloo on CPU,
NCCL on GPUs, one seed on every rank); without ``torchrun`` nothing here is active and a strategy behaves exactly as
in one process. Avalanche 0.6 itself stops short of data-parallel training, so :class:`DataParallelMixin` adds the
three parts it lacks, each for a reason found in its code:

* **DDP, rebuilt per experience.** No Avalanche template calls ``DistributedHelper.wrap_model``, and ``wrap_model``
  builds ``DistributedDataParallel(find_unused_parameters=True)`` with per-forward buffer broadcasts: an extra
  autograd-graph traversal every step, and every stored SD-LoRA direction (buffers that grow with each task)
  broadcast at every forward. Here every trainable parameter takes part in every step and no buffer changes in a
  forward, so the wrapper syncs buffers once, when it is built. The trainable set changes at every experience (a new
  pair, a new magnitude, new head rows), so the wrapper is built after the experience's growth and optimizer
  re-pointing, and dropped (its gradient hooks removed) when the experience ends. Building it broadcasts rank 0's
  parameters and buffers, so every rank starts each experience from rank 0's state.
* **A sharded training loader with a seeded shuffle.** ``SupervisedTemplate.make_train_dataloader`` shards only for
  experiences with task labels (``TaskBalancedDataLoader``); for a ``class_incremental_benchmark`` without them it is a
  plain ``DataLoader``, so every rank trains on the whole experience. The task-labelled path creates a fresh
  ``DistributedSampler`` (seed 0, epoch 0) at each iteration, so every epoch of every run sees one order whatever the
  seed. Here a ``DistributedSampler`` gets a seed made from the run's seed and the experience index (rank 0's), and
  ``set_epoch`` at every epoch.
* **Evaluation over the whole set.** Avalanche's eval loader shards the set with ``DistributedSampler`` (padded so
  every rank has the same number of samples) but its metrics never reduce: each rank would report the accuracy of
  its own shard, padding duplicates included. Here, after each eval forward, the ranks' outputs, targets and task
  labels are gathered (``DistributedHelper.gather_all``) without the padding, so every metric (Avalanche's
  accuracy, loss, forgetting, BWT, our AAA, a user's own) sees the whole set, on every rank, and every rank returns
  the same values from ``eval`` (early stopping and schedulers on a validation metric agree across ranks).
  ``strategy.mb_x`` stays the rank's own shard.

Loggers are Avalanche's business: its ``default_loggers`` exist on rank 0 only and creating a logger elsewhere
raises, so a script builds its loggers on rank 0 (``DistributedHelper.is_main_process``). ``CheckpointPlugin``
writes on rank 0 only.
"""

from __future__ import annotations

import torch
from avalanche.benchmarks.utils.data_loader import MultiDatasetDataLoader, collate_from_data_or_kwargs
from avalanche.distributed import DistributedHelper
from avalanche.models import MultiTaskModule
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler


def is_distributed() -> bool:
    """Whether a process group is up (a script launched by torchrun that called ``init_distributed``)."""
    return DistributedHelper.is_distributed


def sampler_seed(experience: int) -> int:
    """The training sampler's seed for one experience: the run's torch seed and the experience index, from rank 0.

    Derived from ``torch.initial_seed()`` (the seed ``init_distributed`` set) rather than drawn from the torch RNG, so
    the RNG stream, and with it every initialisation, is the one a single-process run draws.
    """
    seed = torch.tensor([(torch.initial_seed() + 1_000_003 * int(experience)) % 2**62], dtype=torch.int64)
    return int(DistributedHelper.broadcast(seed))


def any_rank(flag: Tensor) -> Tensor:
    """``flag`` (a one-element tensor, 1 = set) OR-ed over the ranks, left on its device: no host read."""
    if not is_distributed():
        return flag
    t = flag.to(torch.float32).reshape(1)
    if DistributedHelper.forced_cuda_comm and not t.is_cuda:  # NCCL reduces CUDA tensors only
        t = t.cuda()
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return t.to(flag.device)


def data_parallel(model: nn.Module, device: torch.device) -> DistributedDataParallel | None:
    """``model`` in DistributedDataParallel for one experience (None: nothing trains).

    Not ``DistributedHelper.wrap_model``: see the module docstring (no unused parameters to look for, no buffer
    changed by a forward). ``device`` is the strategy's: ``cuda:<local rank>`` on GPUs, cpu with gloo.
    """
    if not any(p.requires_grad for p in model.parameters()):
        return None
    ids = None
    if device.type == "cuda":
        ids = [device.index if device.index is not None else torch.cuda.current_device()]
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=False, forward_sync_buffers=False)


def _eval_sharding(loader) -> int | None:
    """Size of the whole set when ``loader`` shards it as ``DistributedSampler(shuffle=False)`` does, else None."""
    if isinstance(loader, MultiDatasetDataLoader):  # Avalanche's eval loader
        if not loader.distributed_sampling:
            return None
        if len(loader.datasets) != 1:
            raise ValueError("under torch.distributed an eval loader must hold one dataset to be gathered in order; "
                             f"this one holds {len(loader.datasets)}")
        shuffle, drop_last = loader.loader_kwargs.get("shuffle", True), loader.loader_kwargs.get("drop_last", False)
        n = len(loader.datasets[0])
    elif isinstance(loader, DataLoader) and isinstance(loader.sampler, DistributedSampler):
        shuffle, drop_last, n = loader.sampler.shuffle, loader.sampler.drop_last, len(loader.sampler.dataset)
    else:
        return None  # not sharded: every rank evaluates the whole set
    if shuffle or drop_last:
        raise ValueError("under torch.distributed evaluation is gathered across ranks in the sampler's order; call "
                         "eval without shuffle=True or drop_last=True")
    return n


class DataParallelMixin:
    """Data-parallel training and whole-set evaluation for a ``SupervisedTemplate`` under torch.distributed.

    Put it before the template in the bases (``class SDLoRA(DataParallelMixin, SupervisedTemplate)``); a plugin
    cannot route the strategy's forward through a wrapper, hence a mixin. Without a process group every method
    defers to the template unchanged. ``train_mb_size`` is per rank: the global batch is ``world_size`` times it.
    """

    _ddp: DistributedDataParallel | None = None
    _train_sampler: DistributedSampler | None = None
    _eval_total: int | None = None  # whole eval set size when this rank holds a shard of it
    _eval_position = 0  # samples of this rank's shard seen in the current eval experience

    # ------------------------------------------------------------------ training data
    def make_train_dataloader(self, num_workers: int = 0, shuffle: bool = True, pin_memory: bool | None = None,
                              persistent_workers: bool = False, drop_last: bool = False, **kwargs) -> None:
        """Avalanche's loader, with this rank's shard of every experience under torchrun."""
        self._train_sampler = None
        if not is_distributed():
            return super().make_train_dataloader(num_workers=num_workers, shuffle=shuffle, pin_memory=pin_memory,
                                                 persistent_workers=persistent_workers, drop_last=drop_last, **kwargs)
        args = self._obtain_common_dataloader_parameters(batch_size=self.train_mb_size, num_workers=num_workers,
                                                         pin_memory=pin_memory, persistent_workers=persistent_workers)
        collate_from_data_or_kwargs(self.adapted_dataset, args)
        seed = sampler_seed(self.clock.train_exp_counter)  # the number of experiences trained so far
        self._train_sampler = DistributedSampler(self.adapted_dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.dataloader = DataLoader(self.adapted_dataset, sampler=self._train_sampler, drop_last=drop_last, **args)

    def _before_training_epoch(self, **kwargs) -> None:
        if self._train_sampler is not None and self.dataloader is not None \
                and getattr(self.dataloader, "sampler", None) is self._train_sampler:
            self._train_sampler.set_epoch(self.clock.train_exp_epochs)
        super()._before_training_epoch(**kwargs)

    # ------------------------------------------------------------------ training forward
    def _before_training_exp(self, **kwargs) -> None:
        super()._before_training_exp(**kwargs)  # model and optimizer adaptation, then every plugin (growth)
        # A parameter that stays trainable into this experience (the magnitude of 'fixed-direction', the pair of
        # 'single-component') keeps the last wrapper's gradient hooks while that wrapper lives; they are inert, since
        # DDP's reducer acts only on a backward that follows its own forward (tests/test_distributed.py trains one).
        self._ddp = data_parallel(self.model, self.device) if is_distributed() else None

    def _after_training_exp(self, **kwargs) -> None:
        self._ddp = None  # before the plugins change the trainable set (the growth plugin freezes the pair)
        super()._after_training_exp(**kwargs)

    def forward(self) -> Tensor:
        """The model's forward (through DistributedDataParallel under torchrun)."""
        if self._ddp is None or not self.is_training:
            return super().forward()
        if isinstance(self.model, MultiTaskModule):
            return self._ddp(self.mb_x, self.mb_task_id)
        return self._ddp(self.mb_x)

    # ------------------------------------------------------------------ evaluation
    def _before_eval_exp(self, **kwargs) -> None:
        super()._before_eval_exp(**kwargs)  # builds the eval loader
        self._eval_total = _eval_sharding(self.dataloader) if is_distributed() else None
        self._eval_position = 0

    def _after_eval_forward(self, **kwargs) -> None:
        if self._eval_total is not None:
            self._gather_eval_minibatch()
        super()._after_eval_forward(**kwargs)

    def _gather_eval_minibatch(self) -> None:
        """Replace the minibatch's outputs, targets and task labels by every rank's, padding left out.

        ``DistributedSampler(shuffle=False)`` gives rank q the positions q, q + W, q + 2W, ... of the set padded to a
        multiple of W; a position at or past the set's size is a repeated sample. They come last, so each rank's
        real samples in a minibatch are a prefix whose length is known on the host (no device read).
        """
        world, n, start = DistributedHelper.world_size, self._eval_total, self._eval_position
        fields = [self.mb_output, self.mbatch[1]] + ([self.mbatch[-1]] if len(self.mbatch) > 2 else [])
        gathered = [DistributedHelper.gather_all(t.contiguous()) for t in fields]
        size = len(self.mb_output)
        self._eval_position += size
        # rank q's real samples number ceil((n - q) / W); those before this minibatch number ``start`` on every rank
        real = [max(0, min(len(part), -(-(n - q) // world) - start)) for q, part in enumerate(gathered[0])]
        merged = [torch.cat([t[:k] for t, k in zip(parts, real)]) for parts in gathered]
        self.mb_output, self.mbatch[1] = merged[0], merged[1]
        if len(merged) > 2:
            self.mbatch[-1] = merged[2]
