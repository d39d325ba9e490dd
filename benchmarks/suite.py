"""Runs one point: builds the inputs, checks every implementation against the fused op, then times them.

Outputs are compared before anything is timed (forward output and every gradient, max |difference| relative to
the largest magnitude of the fused op's, at the tolerances below) and the comparison is recorded with the timings. An
implementation that raises is recorded with its error and not timed; one that mismatches is still timed, and
its ``check.matched`` says so.

The pieces (:class:`Impl`, :func:`check_impls`, :func:`impl_blocks`, :func:`record_timing`,
:func:`operator_blocks`) also serve the other benchmarks of the package (options.py, banks.py), whose rows are not
the suite's fixed set of baselines.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from . import baselines, measure
from .presets import Budget, Point

# docs/design.md's tolerances, relative to the largest magnitude, except bfloat16: a bfloat16 baseline rounds every
# intermediate (each branch, each of the K additions that accumulate dL/dy) to 8 bits of mantissa, while the fused op
# accumulates in float32 and rounds once, so the two differ by a few bfloat16 ulps (~1.2e-2 seen on the layer's
# dx), beyond the 1e-2 the tests allow the fused op against a float64 reference.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 4e-2}
METRICS = ("forward", "backward", "forward_backward")


def pass_bytes(itemsize: int, y_numel: int, out_numel: int) -> dict[str, int]:
    """Fewest bytes each pass of a branch stage must move through memory, the numerator of the copy bound (see
    measure.py): forward reads y and writes out once; backward reads the output gradient (numel(out)) and writes
    dL/dy (numel(y)) once; forward_backward is their sum."""
    one_pass = itemsize * (y_numel + out_numel)
    return {"forward": one_pass, "backward": one_pass, "forward_backward": 2 * one_pass}


def branch_bytes(point: Point) -> dict[str, int]:
    """:func:`pass_bytes` of the plain branch stage at ``point``: y and the K+1 maps of out (identity included,
    stride 1)."""
    itemsize = torch.empty((), dtype=getattr(torch, point.dtype)).element_size()
    y = point.n * point.c * point.h * point.w
    return pass_bytes(itemsize, y, (point.k + 1) * y)


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


@dataclass
class Impl:
    """One implementation to check and time.

    ``fn()`` returns the output, differentiable in ``wrt``; ``grad`` (the output's shape) is the gradient that
    backward is fed. ``against`` names the implementations it is compared with, in order of preference: the first
    that ran. ``before`` runs before every forward and every backward call, timed or not (the fused rows of the bank
    sweep set the CPU kernels' factoring policy with it). ``bytes_moved`` and ``macs`` (per metric) give the copy
    bound and the roofline of its rows; ``compiled`` says that its first call compiles.
    """

    label: str
    fn: Callable[[], torch.Tensor]
    wrt: list[torch.Tensor]
    grad: torch.Tensor
    against: tuple[str, ...] = ()
    before: Callable[[], object] | None = None
    bytes_moved: dict[str, int] | None = None
    macs: dict[str, int] | None = None
    compiled: bool = False

    def forward(self) -> torch.Tensor:
        if self.before is not None:
            self.before()
        return self.fn()

    def backward(self, out: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.before is not None:
            self.before()
        return torch.autograd.grad(out, self.wrt, self.grad)


def check_impls(impls: dict[str, Impl], device: torch.device, dtype: torch.dtype, grad_names: list[str]) -> dict:
    """Runs every implementation once, forward and backward (this compiles the compiled ones), and compares its
    output and gradients with those of the first of its ``against`` that ran. Returns an entry per implementation,
    in ``impls``' order: label, check (with the key compared against) and compile time, or the error it raised."""
    entries, firsts = {}, {}
    for key, impl in impls.items():
        try:
            t0 = time.perf_counter()
            out = impl.forward()
            grads = impl.backward(out)
            measure.synchronize(device)
            firsts[key] = (out, grads, time.perf_counter() - t0)
        except Exception as exc:  # recorded, not fatal: the other implementations still run
            entries[key] = {"label": impl.label, "error": f"{type(exc).__name__}: {exc}".strip()[:500]}
    for key, (out, grads, seconds) in firsts.items():
        impl = impls[key]
        entry = {"label": impl.label}
        target = next((t for t in impl.against if t in firsts), None)
        if target is not None:
            t_out, t_grads, _ = firsts[target]
            entry["check"] = {**_check([out, *grads], [t_out, *t_grads], grad_names, dtype), "against": target}
        if impl.compiled:
            entry["compile_s"] = seconds
        entries[key] = entry
    return {key: entries[key] for key in impls}


def impl_blocks(impls: dict[str, Impl], entries: dict, device: torch.device, metrics: tuple[str, ...]) -> dict:
    """Block runners per (implementation, metric) of every implementation that ran without error."""
    blocks = {}
    for key, impl in impls.items():
        if "error" in entries[key]:
            continue
        if "forward" in metrics:
            blocks[key, "forward"] = measure.calls(impl.forward, device)
        if "backward" in metrics:
            blocks[key, "backward"] = measure.calls_after_setup(impl.forward, impl.backward, device)
        if "forward_backward" in metrics:
            blocks[key, "forward_backward"] = measure.calls(lambda impl=impl: impl.backward(impl.forward()), device)
    return blocks


def record_timing(entry: dict, metric: str, timing: measure.Timing, bytes_moved: dict | None, macs: dict | None,
                  rates: dict) -> None:
    """Puts a timing into a result entry, with its bandwidth and % of the copy bound when the bytes are known, and
    its % of the roofline when the multiply-adds and the matmul rate are.

    ``rates``: ``bytes_per_s`` (the copy bandwidth, from the median copy) and optionally ``fma_per_s`` (the matmul
    rate, from the median); with ``best_bytes_per_s`` (and ``best_fma_per_s``) the same percentages are also computed
    from the best repetitions (``pct_copy_bound_best``, ``pct_roofline_best``): the best call against the best
    copy, the comparison least disturbed by other processes on a shared machine.
    """
    entry[metric] = timing.as_dict()
    if bytes_moved is None:
        return
    entry.setdefault("bytes_per_s", {})[metric] = bytes_moved[metric] / timing.median_s
    best = (timing.min_s, rates.get("best_bytes_per_s"), rates.get("best_fma_per_s"))
    for suffix, seconds, bw, fma in (("", timing.median_s, rates["bytes_per_s"], rates.get("fma_per_s")),
                                     ("_best", *best)):
        if bw is None:
            continue
        copy_s = bytes_moved[metric] / bw
        entry.setdefault(f"pct_copy_bound{suffix}", {})[metric] = 100 * copy_s / seconds
        if macs is not None and fma:
            roof_s = max(copy_s, macs[metric] / fma)
            entry.setdefault(f"roofline_s{suffix}", {})[metric] = roof_s
            entry.setdefault(f"pct_roofline{suffix}", {})[metric] = 100 * roof_s / seconds


def operator_blocks(y: torch.Tensor, g: torch.Tensor, bank: torch.Tensor, padding_mode: str, device: torch.device,
                    identity: bool = True, order: str = "branch", stride: int = 1) -> dict[str, measure.Block]:
    """Block runners of the two registered operators called directly, without autograd or the Python front end:
    the kernels' own speed. ``bank`` must already be in y's dtype."""
    ops, yd, s = torch.ops.fixedbranch, y.detach(), [stride, stride]
    size = list(y.shape[-2:])
    return {
        "forward": measure.calls(lambda: ops.fixed_branch(yd, bank, padding_mode, [], identity, order, s), device),
        "backward": measure.calls(
            lambda: ops._fixed_branch_backward(g, bank, padding_mode, [], identity, order, s, size), device),
    }


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
    bytes_moved = None
    if stage == "branch":
        bytes_moved = result["bytes_moved"] = branch_bytes(point)
        result["copy_bound_s"] = {m: b / copy_bytes_per_s for m, b in bytes_moved.items()}
    # Every implementation is compared with the fused op (or, where the fused op cannot run on this device, with
    # the eager reference), in the tables' order.
    impls = {key: Impl(labels[key], fn, wrt, g, against=("fused", "reference"), bytes_moved=bytes_moved,
                       compiled=key in baselines.COMPILED)
             for key, (fn, wrt) in sorted(impls.items(), key=lambda item: list(labels).index(item[0]))}

    # 1. Outputs first: every implementation once, compared with the fused op.
    result["impls"] = check_impls(impls, device, dtype, grad_names)
    checked = [e["check"]["against"] for e in result["impls"].values() if "check" in e]
    result["compared_against"] = checked[0] if checked else None

    # 2. Timings, every (implementation, metric) in turn; then memory.
    blocks = impl_blocks(impls, result["impls"], device, metrics)
    if stage == "branch" and "error" not in result["impls"].get("fused", {"error": ""}):
        for metric, block in operator_blocks(y, g, bank, point.padding_mode, device).items():
            blocks["fused_op_alone", metric] = block
        result["fused_op_alone"] = {}
    timings = measure.time_interleaved(blocks, budget)
    rates = {"bytes_per_s": copy_bytes_per_s}
    for (key, metric), timing in timings.items():
        entry = result["fused_op_alone"] if key == "fused_op_alone" else result["impls"][key]
        record_timing(entry, metric, timing, bytes_moved, None, rates)
    if with_memory:
        for key, impl in impls.items():
            if "error" not in result["impls"][key]:
                result["impls"][key]["forward_memory"] = measure.forward_memory(impl.fn, device)
                result["impls"][key]["saved_tensors"] = measure.saved_tensors(impl.fn)

    fused = result["impls"].get("fused", {})
    for key, entry in result["impls"].items():
        if key != "fused" and "error" not in entry and "error" not in fused:
            entry["fused_speedup"] = {m: entry[m]["median_s"] / fused[m]["median_s"] for m in metrics}
    return result
