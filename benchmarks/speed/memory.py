"""Peak memory of one SD-LoRA training step: a forked child per setting on CPU (VmHWM and torch's own CPU
allocations, read from its profiler's memory events), the allocator on CUDA; and what the step's forward keeps for
backward (tensors saved, their bytes, graph nodes), the measure that would grow if activations or autograd graphs
were kept per stored direction."""

from __future__ import annotations

import ctypes
import gc
import multiprocessing as mp
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

from .models import build_sdlora
from .timing import batch, sdlora_loss, train_step_fn


def autograd_footprint(model: nn.Module, loss: Callable[[], Tensor]) -> dict[str, int]:
    """What the forward of ``loss()`` keeps for its backward: ``saved_tensors`` (every tensor autograd saves),
    ``saved_new_bytes`` (the storage bytes of those the model does not hold anyway as a parameter or buffer: the
    activations), ``graph_nodes`` (backward functions reachable from the loss) and the model's ``trainable_tensors``
    and ``trainable_numbers``. Flat in the number of stored tasks means no activation or graph is kept per task."""
    owned = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    saved, new_storages = 0, {}

    def pack(t: Tensor) -> Tensor:
        nonlocal saved
        saved += 1
        storage = t.untyped_storage()
        if storage.data_ptr() not in owned:
            new_storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        value = loss()
    nodes, stack = set(), [value.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is not None and fn not in nodes:
            nodes.add(fn)
            stack.extend(f for f, _ in fn.next_functions)
    trainable = [p for p in model.parameters() if p.requires_grad]
    return {"saved_tensors": saved, "saved_new_bytes": sum(new_storages.values()), "graph_nodes": len(nodes),
            "trainable_tensors": len(trainable), "trainable_numbers": sum(p.numel() for p in trainable)}


def torch_cpu_peak_bytes(step: Callable[[], object]) -> int:
    """Peak bytes torch's CPU allocator holds during ``step()`` above what it held when the step began: the running
    sum of the allocations and frees its profiler records (``profile_memory``), in time order."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted(((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU),
                    key=lambda e: e[0])
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _mem_child(args, img: int, tasks: int, conn) -> None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD fixed at 64 KiB: freed tensors leave RSS at once
        torch.set_num_threads(args.threads)
        gc.collect()
        libc.malloc_trim(0)
        rss_start = _rss_kb("VmRSS")
        model = build_sdlora(args, img, stored=tasks - 1)
        x, y, classes = batch(args, img)
        step = train_step_fn(model, x, y, classes)
        step()  # warm-up: gradients and momentum buffers exist from here on
        gc.collect()
        libc.malloc_trim(0)
        rss_before = _rss_kb("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        step()
        peak = _rss_kb("VmHWM")
        torch_peak = torch_cpu_peak_bytes(step)
        saved = autograd_footprint(model, sdlora_loss(model, x, y, classes))["saved_new_bytes"]
        conn.send({"peak_delta_mib": (peak - rss_before) / 1024, "state_mib": (rss_before - rss_start) / 1024,
                   "peak_rss_mib": peak / 1024, "torch_peak_mib": torch_peak / 2**20,
                   "saved_activations_mib": saved / 2**20})
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        conn.send({"error": repr(exc)})
    finally:
        conn.close()


def measure_memory(args, img: int, tasks: int) -> dict:
    """Peak memory of a training step above what the model and its state hold, at ``tasks`` learned tasks."""
    if args.device.startswith("cuda"):
        model = build_sdlora(args, img, stored=tasks - 1)
        x, y, classes = batch(args, img)
        step = train_step_fn(model, x, y, classes)
        step()
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        saved = autograd_footprint(model, sdlora_loss(model, x, y, classes))["saved_new_bytes"]
        del model, step
        return {"peak_delta_mib": (peak - before) / 2**20, "state_mib": before / 2**20, "peak_rss_mib": peak / 2**20,
                "torch_peak_mib": (peak - before) / 2**20, "saved_activations_mib": saved / 2**20}
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_mem_child, args=(args, img, tasks, child))
    proc.start()
    child.close()
    res = parent.recv() if parent.poll(300) else {"error": "timeout"}
    proc.join(30)
    if proc.is_alive():
        proc.kill()
    return res
