"""Timing, copy bandwidth and memory measurements, on the CPU and on CUDA.

Timing. A *block* is ``iters`` back-to-back calls; its time over ``iters`` is one sample, and the median,
inter-quartile range (IQR) and minimum (the best repetition) are taken over the samples (repetitions). Warm-up
calls are excluded: the output check runs every implementation (and compiles the compiled ones) first, and each
timing starts with one or two more untimed calls, the last of which also estimates the time of a call. ``iters``
is chosen so a block lasts at least ``Budget.min_block_s`` and the repetitions so that about ``Budget.target_s`` is
spent. On the CPU a block is timed with ``time.perf_counter``; on CUDA with CUDA events recorded on the current
stream around the block, after a ``torch.cuda.synchronize()``, and read after the end event has completed.

Backward alone: the forwards run outside the timed region and only ``torch.autograd.grad`` is timed, call by
call on the CPU, as a block after all its forwards on CUDA (see :func:`calls_after_setup`).

The implementations of a point are timed in turn, repetition by repetition (:func:`time_interleaved`), so that
the load of a shared machine changing during the run does not favour whichever ran in a quiet moment.

Copy bound. ``bytes_moved = itemsize * (numel(read) + numel(written))``, the fewest bytes an implementation must
move through memory: forward reads y and writes the K+1 maps of out; backward reads the K+1 gradient maps and
writes dL/dy. The copy bandwidth is measured in the same run with ``dst.copy_(src)`` on two preallocated tensors
of ``copy_bytes`` each, counting bytes read plus bytes written. The copy bound time is bytes_moved over that
bandwidth: the time a plain copy of the same traffic would take, a floor no implementation can beat by much.

Roofline. Large filters are limited by arithmetic rather than by memory: the roofline time of a pass is the larger
of its copy bound and its multiply-adds (output pixels x taps per pixel) at the rate of ``torch.mm`` measured in
the same run (:func:`matmul_rate`), the rate tuned vectorised code reaches on the device.

Memory. On CUDA: ``torch.cuda.max_memory_allocated`` over the call, minus the allocated bytes before it. On the
CPU: the call runs under ``torch.profiler.profile(profile_memory=True)``, whose allocation events (every
allocation and free of the CPU allocator, with its size) are replayed in time order; the peak of the running sum
is the peak. Both count only memory allocated during the call, so inputs and parameters that already exist are
not counted, and the output is. ``retained`` is what is still allocated after the call minus the output: the
memory held for backward. ``saved_tensors`` are the tensors autograd saves (``saved_tensors_hooks``), counted
once per storage, with ``new`` excluding the storages of tensors that existed before the call.
"""

from __future__ import annotations

import gc
import math
import time
import warnings
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass

import torch

from .presets import Budget


@dataclass
class Timing:
    median_s: float
    iqr_s: float
    q1_s: float
    q3_s: float
    reps: int
    iters: int
    min_s: float  # the best repetition: what the code achieves when nothing else competes for the cores

    def as_dict(self) -> dict:
        return asdict(self)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    pos = q * (len(sorted_values) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(samples: list[float], iters: int) -> Timing:
    s = sorted(samples)
    q1, med, q3 = _quantile(s, 0.25), _quantile(s, 0.5), _quantile(s, 0.75)
    return Timing(median_s=med, iqr_s=q3 - q1, q1_s=q1, q3_s=q3, reps=len(s), iters=iters, min_s=s[0])


def _plan(one_call_s: float, budget: Budget) -> tuple[int, int]:
    one_call_s = max(one_call_s, 1e-7)
    iters = max(1, math.ceil(budget.min_block_s / one_call_s))
    reps = int(budget.target_s / (iters * one_call_s))
    return iters, min(max(reps, budget.min_reps), budget.max_reps)


# A block runner takes ``iters`` and returns the seconds that ``iters`` timed calls took.
Block = Callable[[int], float]


def calls(fn: Callable[[], object], device: torch.device) -> Block:
    """Blocks of back-to-back ``fn()`` calls."""

    def block(iters: int) -> float:
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return time.perf_counter() - t0

    return block


def calls_after_setup(setup: Callable[[], object], fn: Callable[[object], object], device: torch.device) -> Block:
    """Blocks of ``fn(setup())`` calls in which only ``fn`` is timed.

    On the CPU each call is timed on its own, its setup just before it. On CUDA a single call between two events
    would also time the host's work before its first launch (the GPU idles meanwhile), which back-to-back calls
    overlap: so the setups of a block all run first (at most 2 GiB of them; fewer calls if need be), then the
    ``fn`` calls are timed as one block.
    """
    if device.type != "cuda":

        def block(iters: int) -> float:
            total = 0.0
            for _ in range(iters):
                arg = setup()
                t0 = time.perf_counter()
                fn(arg)
                total += time.perf_counter() - t0
            return total

        return block

    cap = []

    def block(iters: int) -> float:
        if not cap:
            before = torch.cuda.memory_allocated(device)
            arg = setup()
            cap.append(max(1, (2 << 30) // max(torch.cuda.memory_allocated(device) - before, 1)))
            del arg
        n = min(iters, cap[0])
        args = [setup() for _ in range(n)]
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        while args:
            fn(args.pop())
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 * iters / n  # scaled to iters calls

    return block


def _warm_up(block: Block, budget: Budget) -> float:
    """Runs untimed warm-up calls and returns the last one's duration, the estimate that plans the blocks.

    Every implementation has already run once (the output check), so one more call warms a slow function; a fast
    one gets a second, whose time is the steadier estimate.
    """
    seconds = block(1)
    if seconds < 0.1 * budget.target_s:
        seconds = block(1)
    return seconds


def time_interleaved(blocks: dict[Hashable, Block], budget: Budget) -> dict[Hashable, Timing]:
    """Times several block runners, their repetitions taken in turn (round robin) rather than one after another,
    so that a change in the machine's load during the run affects every implementation alike."""
    plans = {key: _plan(_warm_up(block, budget), budget) for key, block in blocks.items()}
    samples: dict[Hashable, list[float]] = {key: [] for key in blocks}
    for rep in range(max((reps for _, reps in plans.values()), default=0)):
        for key, block in blocks.items():
            iters, reps = plans[key]
            if rep < reps:
                samples[key].append(block(iters) / iters)
    return {key: summarize(samples[key], plans[key][0]) for key in blocks}


def time_calls(fn: Callable[[], object], device: torch.device, budget: Budget) -> Timing:
    """Median and IQR of the time of ``fn()``, over blocks of back-to-back calls."""
    return time_interleaved({"fn": calls(fn, device)}, budget)["fn"]


def copy_bandwidth(device: torch.device, nbytes: int, budget: Budget) -> dict:
    """Bytes per second of ``dst.copy_(src)`` between two preallocated tensors, counting read + write bytes.

    Also reports the copy into a freshly allocated tensor (``torch.empty_like(src).copy_(src)``): on the CPU the
    first touch of new pages (page faults) can cost more than the copy itself, and every implementation that
    returns a new output pays it.
    """
    numel = nbytes // 4
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    t = time_calls(lambda: dst.copy_(src), device, budget)
    fresh = time_calls(lambda: torch.empty_like(src).copy_(src), device, budget)
    moved = 2 * numel * 4
    return {
        "tensor_bytes": numel * 4,
        "bytes_per_copy": moved,
        "copy": t.as_dict(),
        "bytes_per_s": moved / t.median_s,
        "best_bytes_per_s": moved / t.min_s,
        "fresh_alloc_copy": fresh.as_dict(),
        "fresh_alloc_bytes_per_s": moved / fresh.median_s,
    }


def matmul_rate(device: torch.device, dtype: torch.dtype, budget: Budget, size: int = 1024) -> dict:
    """Multiply-adds per second of ``torch.mm`` on two preallocated (size, size) matrices: the arithmetic rate that
    tuned vectorised code reaches on this device (BLAS), the compute roof of a roofline. One multiply-add counts as
    one (2 FLOP)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    t = time_calls(lambda: torch.mm(a, b, out=out), device, budget)
    fmas = size**3
    return {"size": size, "dtype": str(dtype).removeprefix("torch."), "mm": t.as_dict(), "fma_per_s": fmas / t.median_s,
            "best_fma_per_s": fmas / t.min_s, "gflop_per_s": 2 * fmas / t.median_s / 1e9}


# ---------------------------------------------------------------------------------------------------------------
# Memory.


def _storage_bytes(out) -> int:
    tensors = out if isinstance(out, (list, tuple)) else [out]
    seen, total = set(), 0
    for t in tensors:
        if isinstance(t, torch.Tensor):
            st = t.untyped_storage()
            if st.data_ptr() not in seen:
                seen.add(st.data_ptr())
                total += st.nbytes()
    return total


def forward_memory(fn: Callable[[], torch.Tensor], device: torch.device) -> dict | None:
    """Peak bytes allocated during ``fn()`` and bytes still held after it besides the output (see module doc).

    Returns None where it cannot be measured (a profiler without allocation events).
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        out = fn()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        held = torch.cuda.memory_allocated(device) - base
        return {"peak_bytes": peak, "retained_bytes": held - _storage_bytes(out), "method": "cuda_max_memory_allocated"}
    return _cpu_forward_memory(fn)


def _cpu_forward_memory(fn: Callable[[], torch.Tensor]) -> dict | None:
    try:
        from torch._C._profiler import _EventType
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        return None
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    try:
        tree = prof.profiler.kineto_results.experimental_event_tree()
    except AttributeError:
        return None
    allocs = []
    stack = list(tree)
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            allocs.append((node.start_time_ns, node.extra_fields.alloc_size))
        stack.extend(node.children)
    allocs.sort()
    running = peak = 0
    for _, size in allocs:
        running += size
        peak = max(peak, running)
    return {"peak_bytes": peak, "retained_bytes": running - _storage_bytes(out), "method": "cpu_profiler_allocations"}


def _live_storages() -> set[int]:
    """Data pointers of the storages of every tensor alive now (found through the garbage collector)."""
    ptrs = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some module-level objects warn when their type is inspected
        for obj in gc.get_objects():
            try:
                if isinstance(obj, torch.Tensor) and obj.layout == torch.strided and not obj.is_meta:
                    ptrs.add(obj.untyped_storage().data_ptr())
            except Exception:  # weak proxies to dead objects, tensor subclasses without storage
                continue
    return ptrs


def saved_tensors(fn: Callable[[], torch.Tensor]) -> dict:
    """Bytes of the tensors autograd saves for backward during ``fn()``, once per storage.

    ``new_bytes`` leaves out the storages of tensors that existed before the call (inputs, parameters, buffers,
    filter banks): it is what saving costs in memory.
    """
    known = _live_storages()
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        storages[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return {
        "bytes": sum(storages.values()),
        "new_bytes": sum(b for p, b in storages.items() if p not in known),
        "count": len(storages),
    }
