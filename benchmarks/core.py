"""The run loop every study shares: build a case's implementations, check them against the reference, time them in
turn, and put each time beside the case's bound.

Timing. A *block* is ``iters`` back-to-back calls; a *repetition* is one block (``Budget.blocks_per_rep`` = 1) or, in
the per-call mode the overhead study uses, the median per call over many short blocks. The implementations of a case
(and the case's copy) are timed in turn, repetition by repetition, so that a change of the machine's load hits them
alike; each timing gives the median, the quartiles and the best repetition (``min_s``). Before timing, every
implementation has run once (its check) and once more untimed, whose duration plans ``iters`` and the repetitions.
Each timed block follows an untimed one of the same calls: the first calls after another row run slow (caches, clocks:
on the Xeon guest, the 3x3 backward at 37.6 MB took 5.9, 2.8, 2.1 ms for its first calls after torch.mm, then 1.46),
which timed alone charged to whichever row came first (the fused operators' backward at 1.4x the same kernel timed a
row later).
CPU blocks use ``time.perf_counter``; CUDA blocks CUDA events after a synchronize. The garbage collector is off while
timing (a collection would be charged to whichever call triggered it).

Backward alone through autograd: its forwards run outside the timed region (:func:`calls_after_setup`).

The bound (docs/design.md, section 7). Per metric, max(copy bound, compute bound):

- copy bound: ``bytes_moved`` over the rate of ``dst.copy_(src)`` with src as large as the case's output (its own
  working set: a cache that speeds the copy speeds the op alike), timed in turn with the implementations, counting
  bytes read plus bytes written;
- compute bound: the case's multiply-adds (the bank plan's taps per output pixel x pixels) at the multiply-add rate
  of ``torch.mm`` (square matrices of ``mm_size``, 1024 by default), also timed in turn with the implementations.

Each percentage is ``100 * bound / time`` from best repetitions (the least disturbed by other processes), its kind
(copy or compute) named beside it; ``pct_dram`` uses the DRAM copy's rate (a 256 MiB copy) instead.
"""

from __future__ import annotations

import gc
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from .report import log

# docs/design.md's tolerances, relative to the largest magnitude of the reference's output. bfloat16 baselines round
# every intermediate to 8 bits of mantissa while the fused op accumulates in float32, so they differ by a few ulps.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 4e-2}

Block = Callable[[int], float]  # runs ``iters`` timed calls, returns their seconds


@dataclass(frozen=True)
class Budget:
    """A block lasts at least ``min_block_s``; repetitions until about ``target_s`` is spent, in [min_reps,
    max_reps]. ``blocks_per_rep`` > 1 is the per-call mode: a repetition is the median over that many blocks."""

    min_block_s: float
    target_s: float
    min_reps: int
    max_reps: int
    blocks_per_rep: int = 1


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def calls(fn: Callable[[], object], device: torch.device, no_grad: bool = False) -> Block:
    """Blocks of back-to-back ``fn()`` calls (under ``torch.no_grad()`` if asked, entered outside the timing)."""

    def block(iters: int) -> float:
        with torch.no_grad() if no_grad else torch.enable_grad():
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
    """Blocks of ``fn(setup())`` in which only ``fn`` is timed: call by call on the CPU; on CUDA the setups of a block
    (at most 2 GiB of them) run first and the ``fn`` calls are timed as one block, which overlaps their host work."""
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

    def cuda_block(iters: int) -> float:
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
        return start.elapsed_time(end) / 1e3 * iters / n

    return cuda_block


def quantile(sorted_values: list[float], q: float) -> float:
    pos = q * (len(sorted_values) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(samples: list[float], iters: int) -> dict:
    s = sorted(samples)
    q1, q3 = quantile(s, 0.25), quantile(s, 0.75)
    return {"median_s": quantile(s, 0.5), "iqr_s": q3 - q1, "q1_s": q1, "q3_s": q3, "min_s": s[0], "reps": len(s),
            "iters": iters}


def time_interleaved(blocks: dict, budget: Budget) -> dict:
    """Timings of several block runners, their repetitions taken in turn."""
    plans = {}
    for key, block in blocks.items():
        seconds = block(1)
        if seconds < 0.1 * budget.target_s:  # a fast call gets a second warm-up, the steadier estimate
            seconds = block(1)
        iters = max(1, math.ceil(budget.min_block_s / max(seconds, 1e-7)))
        reps = int(budget.target_s / (iters * max(seconds, 1e-7) * budget.blocks_per_rep))
        plans[key] = iters, min(max(reps, budget.min_reps), budget.max_reps)
    samples: dict = {key: [] for key in blocks}
    gc.collect()
    gc.disable()
    try:
        for rep in range(max((r for _, r in plans.values()), default=0)):
            for key, block in blocks.items():
                iters, reps = plans[key]
                if rep < reps:
                    block(iters)  # settles: untimed, so that no row pays for the state its predecessor left
                    per_call = [block(iters) / iters for _ in range(budget.blocks_per_rep)]
                    samples[key].append(statistics.median(per_call))
    finally:
        gc.enable()
    return {key: summarize(samples[key], plans[key][0]) for key in blocks}


# ---------------------------------------------------------------------------------------------------------------
# Implementations and cases.


@dataclass
class Impl:
    """One implementation: a block runner per metric, and what its check compares (``outputs()``: the output and
    then the gradients, compared position by position with the ``check`` implementation's; None: not checked)."""

    label: str
    blocks: dict[str, Block]
    outputs: Callable[[], list[torch.Tensor]] | None = None
    check: str | None = "reference"
    compiled: bool = False
    forward_fn: Callable[[], torch.Tensor] | None = None  # for the memory measurement


def autograd_impl(label: str, fn: Callable[[], torch.Tensor], wrt: list[torch.Tensor], grad: torch.Tensor,
                  metrics: Iterable[str], device: torch.device, before: Callable[[], object] | None = None,
                  check: str | None = "reference", compiled: bool = False) -> Impl:
    """A differentiable call. Metrics: ``forward`` (recording autograd), ``forward_nograd``, ``backward``
    (``torch.autograd.grad`` alone) and ``forward_backward``. ``before`` runs before every forward and backward."""

    def forward():
        if before is not None:
            before()
        return fn()

    def backward(out):
        if before is not None:
            before()
        return torch.autograd.grad(out, wrt, grad)

    every = {
        "forward": lambda: calls(forward, device),
        "forward_nograd": lambda: calls(forward, device, no_grad=True),
        "backward": lambda: calls_after_setup(forward, backward, device),
        "forward_backward": lambda: calls(lambda: backward(forward()), device),
    }

    def outputs():
        out = forward()
        return [out, *backward(out)]

    return Impl(label, {m: every[m]() for m in metrics}, outputs, check, compiled, forward)


def operator_impl(label: str, forward: Callable[[], torch.Tensor], backward: Callable[[], torch.Tensor],
                  device: torch.device, check: str | None = "reference") -> Impl:
    """The registered operators called directly (no autograd, no Python front end): the kernels' own speed. Its
    outputs are the forward's output and the backward's dL/dy."""
    return Impl(label, {"forward": calls(forward, device), "backward": calls(backward, device)},
                lambda: [forward(), backward()], check)


def plain_impl(label: str, per_metric: dict[str, Callable[[], object]], device: torch.device) -> Impl:
    """Unchecked calls timed under given metrics: the yardsticks (``out.fill_(1)`` as a forward, ...)."""
    return Impl(label, {m: calls(fn, device) for m, fn in per_metric.items()}, None, None)


@dataclass
class Case:
    """One problem. ``build()`` makes its implementations (when the case runs, so only one case's tensors live at
    a time). ``bytes_moved`` and ``macs`` per metric
    give the bound, ``working_set`` the bytes of the op's output (the copy's size); ``memory`` measures the
    forward's memory too."""

    name: str
    params: dict
    build: Callable[[], dict[str, Impl]]
    bytes_moved: dict[str, int] | None = None
    macs: dict[str, int] | None = None
    working_set: int | None = None
    memory: bool = False
    budget: Budget | None = None  # instead of the preset's


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a, e = actual.detach().double(), expected.detach().double()
    if a.shape != e.shape:
        return float("inf")
    if e.numel() == 0:
        return 0.0
    return ((a - e).abs().max() / e.abs().max().clamp_min(1e-30)).item()


def check_impls(impls: dict[str, Impl], device: torch.device, dtype: torch.dtype) -> dict:
    """Runs every implementation once (this compiles the compiled ones) and compares its outputs with its ``check``
    implementation's, the check targets first (only their outputs are kept). Returns an entry per implementation:
    label and check, compile time, or the error it raised."""
    entries = {key: {"label": impl.label} for key, impl in impls.items()}
    targets, kept = {impl.check for impl in impls.values()}, {}
    for key in sorted(impls, key=lambda k: k not in targets):
        impl = impls[key]
        if impl.outputs is None:
            continue
        try:
            t0 = time.perf_counter()
            outputs = impl.outputs()
            synchronize(device)
            if impl.compiled:
                entries[key]["compile_s"] = time.perf_counter() - t0
        except Exception as exc:  # recorded, not fatal: the other implementations still run
            entries[key]["error"] = f"{type(exc).__name__}: {exc}".strip()[:500]
            continue
        if key in targets:
            kept[key] = outputs
        if impl.check in kept and impl.check != key:
            errors = [_relative_error(a, e) for a, e in zip(outputs, kept[impl.check])]
            tol = TOLERANCE[dtype]
            entries[key]["check"] = {"against": impl.check, "max_rel_err": max(errors), "tolerance": tol,
                                     "matched": max(errors) <= tol}
        del outputs
    return entries


def bound(case: Case, copy_s: float | None, fma_per_s: float, rates: dict) -> dict:
    """Per metric: the copy bound, the compute bound, the bound (their max) and its kind, and the DRAM copy bound."""
    out = {}
    for metric, nbytes in (case.bytes_moved or {}).items():
        copy = nbytes / (2 * case.working_set / copy_s) if copy_s else None
        compute = (case.macs or {}).get(metric, 0) / fma_per_s
        dram = nbytes / rates["dram_bytes_per_s"]
        s = max(copy or dram, compute)
        out[metric] = {"copy_s": copy, "compute_s": compute, "dram_copy_s": dram, "s": s,
                       "kind": "compute" if compute > (copy or dram) else "copy"}
    return out


def run_case(case: Case, device: torch.device, dtype: torch.dtype, budget: Budget, rates: dict) -> dict:
    """Builds, checks and times one case; returns its result entry."""
    torch._dynamo.reset()  # each case compiles afresh: no cache-limit fallback to eager across cases
    torch.manual_seed(0)
    t0 = time.perf_counter()
    impls = case.build()
    rows = check_impls(impls, device, dtype)
    # The yardsticks first in each repetition; each block settles untimed before it is timed (time_interleaved).
    blocks = {}
    if case.macs:
        size = rates["mm_size"]
        a, b, c = (torch.ones(size, size, device=device, dtype=dtype) for _ in range(3))
        blocks["mm", "mm"] = calls(lambda: torch.mm(a, b, out=c), device)
    if case.working_set:
        src = torch.empty(case.working_set // 4, device=device).fill_(1.0)
        dst = torch.empty_like(src)
        blocks["copy", "copy"] = calls(lambda: dst.copy_(src), device)
    blocks.update({(k, m): b for k, impl in impls.items() if "error" not in rows[k] for m, b in impl.blocks.items()})
    timings = time_interleaved(blocks, case.budget or budget)
    copy, mm = timings.pop(("copy", "copy"), None), timings.pop(("mm", "mm"), None)
    fma_per_s = rates["mm_size"] ** 3 / mm["min_s"] if mm else rates["fma_per_s"]
    bounds = bound(case, copy and copy["min_s"], fma_per_s, rates)
    for (key, metric), timing in timings.items():
        row = rows[key]
        row.setdefault("times", {})[metric] = timing
        if metric in bounds:
            b = bounds[metric]
            row.setdefault("pct_bound", {})[metric] = 100 * b["s"] / timing["min_s"]
            row.setdefault("pct_dram", {})[metric] = 100 * b["dram_copy_s"] / timing["min_s"]
    if case.memory:
        from .memory import forward_memory, saved_tensors

        for key, impl in impls.items():
            if "error" not in rows[key] and impl.forward_fn is not None:
                rows[key]["forward_memory"] = forward_memory(impl.forward_fn, device)
                rows[key]["saved_tensors"] = saved_tensors(impl.forward_fn)
    log(f"{case.name}: {time.perf_counter() - t0:.1f} s")
    return {"case": case.name, "params": case.params, "bytes_moved": case.bytes_moved, "macs": case.macs,
            "working_set": case.working_set, "copy": copy, "fma_per_s": fma_per_s, "bound": bounds, "rows": rows}


def yardsticks(out_shape: tuple[int, ...], branches: int, device: torch.device, dtype: torch.dtype) -> dict[str, Impl]:
    """Two plain torch ops with a pass's traffic: ``out.fill_(1)`` (the forward's writes alone) and
    ``g.view(N, B, C, H, W).sum(1)`` (the backward's reads and writes, in branch order)."""
    n, bc, h, w = out_shape
    out = torch.empty(out_shape, device=device, dtype=dtype)
    g = torch.ones(n, branches, bc // branches, h, w, device=device, dtype=dtype)
    return {"fill": plain_impl("out.fill_(1)", {"forward": lambda: out.fill_(1)}, device),
            "sum": plain_impl("g.view(N,B,C,H,W).sum(1)", {"backward": lambda: g.sum(1)}, device)}


def measure_rates(device: torch.device, dtype: torch.dtype, preset: dict) -> dict:
    """The run's machine rates: torch.mm's multiply-adds per second (the compute bound's rate) and the DRAM copy's
    bytes per second (read + write, ``dram_bytes`` tensors, 256 MiB by default, 1 GiB on a GPU), best repetitions."""
    size = preset.get("mm_size", 1024)
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    c = torch.empty(size, size, device=device, dtype=dtype)
    nbytes = preset.get("dram_bytes", 256 << 20 if device.type == "cpu" else 1 << 30)
    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    t = time_interleaved({"mm": calls(lambda: torch.mm(a, b, out=c), device),
                          "copy": calls(lambda: dst.copy_(src), device)}, Budget(0.02, 0.5, 3, 10))
    return {"fma_per_s": size**3 / t["mm"]["min_s"], "mm_size": size, "mm": t["mm"],
            "dram_bytes_per_s": 2 * nbytes / t["copy"]["min_s"], "dram_copy_bytes": nbytes, "dram_copy": t["copy"]}


def run_study(name: str, study, preset_name: str, device: torch.device) -> dict:
    """Every case of a study: the one result schema."""
    from . import machine

    start = time.perf_counter()
    preset = study.PRESETS[preset_name]
    dtype = preset.get("dtype", torch.float32)
    # Strict float32 everywhere: TF32 would time a different arithmetic.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    facts = machine.facts(device)
    rates = measure_rates(device, dtype, preset)
    log(f"{name}: torch.mm {2 * rates['fma_per_s'] / 1e9:.1f} GFLOP/s, DRAM copy "
        f"{rates['dram_bytes_per_s'] / 1e9:.1f} GB/s")
    cases = [run_case(case, device, dtype, preset["budget"], rates) for case in study.cases(preset, device)]
    return {
        "schema": 1,
        "study": name,
        "preset": preset_name,
        "settings": {"device": str(device), "device_type": device.type, "dtype": str(dtype).removeprefix("torch."),
                     "threads": torch.get_num_threads(), "budget": vars(preset["budget"])},
        "machine": facts,
        "rates": rates,
        "cases": cases,
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        "wall_time_s": time.perf_counter() - start,
    }
