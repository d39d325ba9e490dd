"""Runs one point: builds the inputs, checks every implementation against the fused op, then times them.

Outputs are compared before anything is timed (forward output and every gradient, max |difference| relative to
the largest magnitude of the fused op's, at the tolerances below) and the comparison is recorded with the timings. An
implementation that raises is recorded with its error and not timed; one that mismatches is still timed, and
its ``check.matched`` says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from . import baselines, measure
from .presets import Budget, Point

# DESIGN.md's tolerances, relative to the largest magnitude, except bfloat16: a bfloat16 baseline rounds every
# intermediate (each branch, each of the K additions that accumulate dL/dy) to 8 bits of mantissa, while the fused op
# accumulates in float32 and rounds once, so the two differ by a few bfloat16 ulps (~1.2e-2 seen on the layer's
# dx), beyond the 1e-2 the tests allow the fused op against a float64 reference.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 4e-2}
METRICS = ("forward", "backward", "forward_backward")


def branch_bytes(point: Point) -> dict[str, int]:
    """Fewest bytes each pass must move through memory, the numerator of the copy bound (see measure.py).

    forward: itemsize * (numel(y) + numel(out)), reading y once and writing the K+1 maps of out once;
    backward: itemsize * (numel(g) + numel(dL/dy)), reading the K+1 gradient maps once and writing dL/dy once
    (numel(g) = numel(out), numel(dL/dy) = numel(y)); forward_backward: their sum.
    """
    itemsize = torch.empty((), dtype=getattr(torch, point.dtype)).element_size()
    y = point.n * point.c * point.h * point.w
    one_pass = itemsize * (y + (point.k + 1) * y)
    return {"forward": one_pass, "backward": one_pass, "forward_backward": 2 * one_pass}


def _format(name: str) -> torch.memory_format:
    return torch.channels_last if name == "channels_last" else torch.contiguous_format


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a, e = actual.detach().double(), expected.detach().double()
    if a.shape != e.shape:
        return float("inf")
    if e.numel() == 0:
        return 0.0
    return ((a - e).abs().max() / e.abs().max().clamp_min(1e-30)).item()


def _check(results: list[torch.Tensor], expected: list[torch.Tensor], names: list[str], dtype) -> dict:
    errors = {name: _relative_error(r, e) for name, r, e in zip(names, results, expected)}
    return {"max_rel_err": errors, "tolerance": TOLERANCE[dtype], "matched": all(v <= TOLERANCE[dtype]
                                                                                 for v in errors.values())}


def _first_call(fn: Callable[[], torch.Tensor], grad_of: Callable[[torch.Tensor], tuple], device) -> tuple:
    """Forward and backward once (this compiles the compiled baselines); returns out, grads, seconds."""
    t0 = time.perf_counter()
    out = fn()
    grads = grad_of(out)
    measure.synchronize(device)
    return out, grads, time.perf_counter() - t0


def run_point(
    stage: str,
    point: Point,
    device: torch.device,
    budget: Budget,
    metrics: tuple[str, ...],
    compile_: bool,
    with_memory: bool,
    copy_bytes_per_s: float,
) -> dict:
    """Checks and times every implementation of ``stage`` ("branch" or "layer") at ``point``."""
    torch._dynamo.reset()  # each point compiles afresh: no cache-limit fallback to eager across the sweeps
    torch.manual_seed(0)
    dtype = getattr(torch, point.dtype)
    fmt = _format(point.memory_format)
    bank64, names = point.bank()
    bank = bank64.to(device=device, dtype=dtype)
    out_shape = (point.n, (point.k + 1) * point.c, point.h, point.w)
    g = torch.randn(out_shape, device=device, dtype=dtype).contiguous(memory_format=fmt)

    if stage == "branch":
        y = torch.randn(point.n, point.c, point.h, point.w, device=device, dtype=dtype)
        y = y.contiguous(memory_format=fmt).requires_grad_()
        impls = {
            key: (lambda f=f: f(y), [y])
            for key, f in baselines.branch_impls(bank, point.c, point.padding_mode, compile_).items()
        }
        grad_names = ["out", "dy"]
    else:
        x = torch.randn(point.n, point.in_channels, point.h, point.w, device=device, dtype=dtype)
        x = x.contiguous(memory_format=fmt).requires_grad_()
        conv = nn.Conv2d(point.in_channels, point.c, 3, padding=1).to(device=device, dtype=dtype, memory_format=fmt)
        impls = {
            key: (lambda m=m: m(x), [x, *params])
            for key, (m, params) in baselines.layer_impls(conv, bank, point.padding_mode, compile_).items()
        }
        grad_names = ["out", "dx", "dweight", "dbias"]

    labels = baselines.LABELS if stage == "branch" else baselines.LAYER_LABELS
    result = {
        "stage": stage,
        "point": point.as_dict(),
        "bank": names,
        "compile_measured": compile_,
        "impls": {},
    }
    if stage == "branch":
        result["bytes_moved"] = branch_bytes(point)
        result["copy_bound_s"] = {m: b / copy_bytes_per_s for m, b in result["bytes_moved"].items()}

    # 1. Outputs first: every implementation once, compared with the fused op (or, where the fused op cannot
    #    run on this device, with the eager reference).
    firsts = {}
    for key, (fn, wrt) in impls.items():
        try:
            firsts[key] = _first_call(fn, lambda out, wrt=wrt: torch.autograd.grad(out, wrt, g), device)
        except Exception as exc:  # recorded, not fatal: the other implementations still run
            result["impls"][key] = {"label": labels[key], "error": f"{type(exc).__name__}: {exc}".strip()[:500]}
    target = "fused" if "fused" in firsts else "reference"
    result["compared_against"] = target
    expected = [firsts[target][0], *firsts[target][1]] if target in firsts else None
    for key, (out, grads, seconds) in firsts.items():
        entry = {"label": labels[key]}
        if expected is not None:
            entry["check"] = _check([out, *grads], expected, grad_names, dtype)
        if key in baselines.COMPILED:
            entry["compile_s"] = seconds
        result["impls"][key] = entry
    del firsts, expected
    result["impls"] = {key: result["impls"][key] for key in labels if key in result["impls"]}  # the tables' order

    # 2. Timings, every (implementation, metric) in turn; then memory.
    blocks = {}
    for key, (fn, wrt) in impls.items():
        if "error" in result["impls"][key]:
            continue

        def grad(out, wrt=wrt):
            return torch.autograd.grad(out, wrt, g)

        if "forward" in metrics:
            blocks[key, "forward"] = measure.calls(fn, device)
        if "backward" in metrics:
            blocks[key, "backward"] = measure.calls_after_setup(fn, grad, device)
        if "forward_backward" in metrics:
            blocks[key, "forward_backward"] = measure.calls(lambda fn=fn, grad=grad: grad(fn()), device)
    if stage == "branch" and "fused" in impls and "error" not in result["impls"]["fused"]:
        # The two operators called directly, without autograd or the Python front end: the kernels' own speed.
        ops, yd = torch.ops.fixedbranch, y.detach()
        blocks["fused_op_alone", "forward"] = measure.calls(
            lambda: ops.fixed_branch(yd, bank, point.padding_mode, []), device)
        blocks["fused_op_alone", "backward"] = measure.calls(
            lambda: ops._fixed_branch_backward(g, bank, point.padding_mode, []), device)
        result["fused_op_alone"] = {}
    timings = measure.time_interleaved(blocks, budget)

    for (key, metric), timing in timings.items():
        entry = result["fused_op_alone"] if key == "fused_op_alone" else result["impls"][key]
        entry[metric] = timing.as_dict()
        if stage == "branch":
            entry.setdefault("bytes_per_s", {})[metric] = result["bytes_moved"][metric] / timing.median_s
            entry.setdefault("pct_copy_bound", {})[metric] = 100 * result["copy_bound_s"][metric] / timing.median_s
    if with_memory:
        for key, (fn, _) in impls.items():
            if "error" not in result["impls"][key]:
                result["impls"][key]["forward_memory"] = measure.forward_memory(fn, device)
                result["impls"][key]["saved_tensors"] = measure.saved_tensors(fn)

    fused = result["impls"].get("fused", {})
    for key, entry in result["impls"].items():
        if key != "fused" and "error" not in entry and "error" not in fused:
            entry["fused_speedup"] = {m: entry[m]["median_s"] / fused[m]["median_s"] for m in metrics}
    return result
