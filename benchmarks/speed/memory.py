"""Peak memory of one SD-LoRA training step: a forked child per setting on CPU (VmHWM), the allocator on CUDA."""

from __future__ import annotations

import ctypes
import gc
import multiprocessing as mp

import torch

from .models import build_sdlora
from .timing import batch, train_step_fn


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
        conn.send({"peak_delta_mib": (peak - rss_before) / 1024, "state_mib": (rss_before - rss_start) / 1024,
                   "peak_rss_mib": peak / 1024})
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
        del model, step
        return {"peak_delta_mib": (peak - before) / 2**20, "state_mib": before / 2**20, "peak_rss_mib": peak / 2**20}
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
