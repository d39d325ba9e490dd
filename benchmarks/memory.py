"""What a forward allocates and what autograd saves, for the suite's memory columns.

Peak: on CUDA, ``torch.cuda.max_memory_allocated`` over the call minus the bytes allocated before it; on the CPU, the
allocation events of ``torch.profiler.profile(profile_memory=True)`` replayed in time order, the peak of their
running sum. Both count only memory allocated during the call (the output included, inputs and parameters not).
``retained`` is what is still allocated after the call minus the output: the memory held for backward.
``saved_tensors``: the storages autograd saves (``saved_tensors_hooks``), ``new_bytes`` leaving out those that existed
before the call.
"""

from __future__ import annotations

import gc
import os
import warnings
from collections.abc import Callable

import torch

# kineto logs a trace mark at its USDT severity (5, its highest) on every profiler start and stop, on the process's
# output; a level above every severity keeps the benchmarks' output to their tables. Read when the profiler starts.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")


def _storage_bytes(out) -> int:
    seen, total = set(), 0
    for t in out if isinstance(out, (list, tuple)) else [out]:
        if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            total += t.untyped_storage().nbytes()
    return total


def forward_memory(fn: Callable[[], torch.Tensor], device: torch.device) -> dict | None:
    """Peak bytes allocated during ``fn()`` and bytes still held after it besides the output; None where the
    profiler gives no allocation events."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        out = fn()
        torch.cuda.synchronize(device)
        held = torch.cuda.memory_allocated(device) - base
        return {"peak_bytes": torch.cuda.max_memory_allocated(device) - base,
                "retained_bytes": held - _storage_bytes(out)}
    try:
        from torch._C._profiler import _EventType
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            out = fn()
        stack = list(prof.profiler.kineto_results.experimental_event_tree())
    except (ImportError, AttributeError):
        return None
    allocs = []
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            allocs.append((node.start_time_ns, node.extra_fields.alloc_size))
        stack.extend(node.children)
    running = peak = 0
    for _, size in sorted(allocs):
        running += size
        peak = max(peak, running)
    return {"peak_bytes": peak, "retained_bytes": running - _storage_bytes(out)}


def _live_storages() -> set[int]:
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
    """Bytes of the storages autograd saves during ``fn()``; ``new_bytes`` only those that did not exist before."""
    known, storages = _live_storages(), {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return {"bytes": sum(storages.values()), "new_bytes": sum(b for p, b in storages.items() if p not in known),
            "count": len(storages)}
