"""``python -m benchmarks.banks``: the branch stage on banks from 3x3 edge filters to 11x11 Gabors, direct and
factored, against the copy bound, the roofline and the unfused baselines.

The banks (:data:`BANKS`): the standard 3x3 four (sobel_x, sobel_y, laplacian4, gaussian(3, 1)); the orthonormal 2-D
DCT bases of size 3, 5 and 7 (``fb.filters.dct(n)``, n² filters); Gaussians and Laplacians of Gaussian 7x7 at four
scales; Gabor filters 11x11 at 8 orientations. Each runs at y = 4 x C x 96 x 96 float32 with C chosen so that the
output (identity included) is about 37.5 MB, so every bank moves about the same bytes and only its arithmetic
differs. Rows per bank:

- the fused op with the CPU kernels' factoring policy forced (``torch.ops.fixedbranch._set_factoring``): "never"
  (every filter a direct correlation, K·S1·S2 multiply-adds per pixel) and "always" (the bank's plan,
  ``fixedbranch.plan.bank_plan(bank).plan_taps`` multiply-adds per pixel: separable filters as a column pass shared
  across the bank and a row pass each); which of the two the default policy ("auto") runs is read off its output
  (bit-identical to one of them), reported, and compared with ``bank_plan(bank).cpu_path``;
- the eager reference (``fb.reference.fixed_branch``), kornia (``kornia.filters.filter2d`` per filter, then cat) and
  ``torch.compile`` of the reference.

Each row's forward and backward are given in ms, as % of the copy bound (the time ``dst.copy_(src)`` needs to move
the bytes the pass must move: y and the K+1 maps) and as % of the roofline: the larger of the copy bound and the
multiply-adds the row computes (output pixels x taps, direct or the plan's) at the rate of ``torch.mm`` in float32
measured in the same run. Every row's output and dL/dy are compared with the direct fused op's before timing.

    python -m benchmarks.banks                     # the reported numbers, 2 threads (about 6 minutes on 2 cores)
    python -m benchmarks.banks --warm-malloc       # the same under an allocator that keeps freed memory
    python -m benchmarks.banks --preset quick      # every bank and row on a tiny size, in seconds

Writes ``<out>/<device>-banks.json``, ``.md`` and ``.png`` (``warm-malloc/`` with --warm-malloc, ``-banks-quick``
for the quick preset).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import torch  # noqa: E402

import fixedbranch as fb  # noqa: E402
from fixedbranch.plan import bank_plan  # noqa: E402

from . import baselines, cli, machine, measure, report, suite  # noqa: E402
from .presets import Budget, make_bank  # noqa: E402

GAUSSIAN_SIGMAS = (1.0, 1.5, 2.0, 3.0)
GABOR_ORIENTATIONS = 8


def _gaussian_log(size: int) -> tuple[torch.Tensor, list[str]]:
    specs = [fb.filters.gaussian(size, s) for s in GAUSSIAN_SIGMAS] + [fb.filters.log(size, s) for s in GAUSSIAN_SIGMAS]
    names = [f"gaussian({size},{s:g})" for s in GAUSSIAN_SIGMAS] + [f"log({size},{s:g})" for s in GAUSSIAN_SIGMAS]
    return fb.filters.bank(*specs), names


def _gabor(size: int) -> tuple[torch.Tensor, list[str]]:
    # sigma = size/4 and wavelength size/2, as presets.make_bank's Gabors: a few periods under the envelope.
    thetas = [math.pi * i / GABOR_ORIENTATIONS for i in range(GABOR_ORIENTATIONS)]
    specs = [fb.filters.gabor(size, size / 4, theta, size / 2) for theta in thetas]
    return fb.filters.bank(*specs), [f"gabor({size},theta={t:.2f})" for t in thetas]


def _dct(size: int) -> tuple[torch.Tensor, list[str]]:
    return fb.filters.dct(size), [f"dct{size}[{u},{v}]" for u in range(size) for v in range(size)]


# name: constructor of the float64 bank and a name per filter.
BANKS: dict[str, Callable[[], tuple[torch.Tensor, list[str]]]] = {
    "3x3 standard": partial(make_bank, 4, 3),
    "DCT 3x3": partial(_dct, 3),
    "DCT 5x5": partial(_dct, 5),
    "DCT 7x7": partial(_dct, 7),
    "Gaussian+LoG 7x7": partial(_gaussian_log, 7),
    "Gabor 11x11": partial(_gabor, 11),
}
LABELS = {
    "direct": "fused, direct",
    "factored": "fused, factored",
    "reference": "eager reference",
    "kornia": "kornia",
    "compile_reference": "compile(reference)",
}
FUSED = ("direct", "factored")
POLICY = {"direct": "never", "factored": "always"}
METRICS = ("forward", "backward")


@dataclass(frozen=True)
class BanksPreset:
    n: int
    h: int
    out_bytes: int  # the output size each bank's C is chosen for
    budget: Budget
    compile_at: tuple[str, ...]  # banks at which torch.compile runs (compiling costs tens of seconds a bank)
    copy_bytes: int
    matmul_size: int


PRESETS = {
    "quick": BanksPreset(1, 16, 100_000, Budget(0.002, 0.01, 3, 3), ("3x3 standard",), 32 << 20, 256),
    "full": BanksPreset(4, 96, 37_500_000, Budget(0.02, 0.8, 5, 15), tuple(BANKS), 256 << 20, 2048),
}


def channels_for(k: int, n: int, h: int, w: int, itemsize: int, out_bytes: int) -> int:
    """The C that makes the output, (N, (K+1)·C, H, W), closest to ``out_bytes``."""
    return max(1, round(out_bytes / (n * (k + 1) * h * w * itemsize)))


def _set_policy(policy: str) -> None:
    torch.ops.fixedbranch._set_factoring(policy)


def auto_choice(y: torch.Tensor, bank: torch.Tensor) -> str:
    """Which path the default policy runs for this bank: its output is bit-identical to that path's (the kernels
    are deterministic), while the two paths round differently."""
    with torch.no_grad():
        outs = {}
        for key, policy in (*POLICY.items(), ("auto", "auto")):
            _set_policy(policy)
            outs[key] = fb.fixed_branch(y, bank)
    if torch.equal(outs["direct"], outs["factored"]):
        return "either (both paths give the same bits)"
    return next((key for key in FUSED if torch.equal(outs["auto"], outs[key])), "neither")


def run_bank(name: str, preset: BanksPreset, device: torch.device, compile_: bool, rates: dict) -> dict:
    """Checks and times every row for one bank."""
    torch._dynamo.reset()  # each bank compiles afresh: no cache-limit fallback to eager across banks
    torch.manual_seed(0)
    dtype = torch.float32
    bank64, names = BANKS[name]()
    bank = bank64.to(device=device, dtype=dtype)
    k, s1, s2 = bank.shape
    c = channels_for(k, preset.n, preset.h, preset.h, bank.element_size(), preset.out_bytes)
    y = torch.randn(preset.n, c, preset.h, preset.h, device=device, dtype=dtype).requires_grad_()
    g = torch.randn(preset.n, (k + 1) * c, preset.h, preset.h, device=device, dtype=dtype)
    plan = bank_plan(bank)  # planned in the dtype the kernels round the bank to
    pixels = y.numel()  # output pixels of one filter over every channel; the adjoint has as many input pixels
    taps = {"direct": plan.direct_taps, "factored": plan.plan_taps}
    moved = suite.pass_bytes(y.element_size(), y.numel(), g.numel())

    fns = {
        "direct": partial(fb.fixed_branch, y, bank),
        "factored": partial(fb.fixed_branch, y, bank),
        "reference": partial(baselines.reference_branch, y, bank, "zeros"),
        "kornia": partial(baselines.kornia_branch, y, bank, "zeros"),
    }
    if compile_ and name in preset.compile_at:
        fns["compile_reference"] = partial(baselines.compiled(baselines.reference_branch), y, bank=bank,
                                           padding_mode="zeros")
    impls = {}
    for key, fn in fns.items():
        t = taps["factored" if key == "factored" else "direct"]
        before = partial(_set_policy, POLICY[key]) if key in POLICY else None
        impls[key] = suite.Impl(LABELS[key], fn, [y], g, against=("direct",), before=before, bytes_moved=moved,
                                macs={m: pixels * t for m in METRICS}, compiled=key == "compile_reference")
    entries = suite.check_impls(impls, device, dtype, ["out", "dy"])
    timings = measure.time_interleaved(suite.impl_blocks(impls, entries, device, METRICS), preset.budget)
    for (key, metric), timing in timings.items():
        suite.record_timing(entries[key], metric, timing, moved, impls[key].macs, rates)
    auto = auto_choice(y.detach(), bank)
    base = entries.get(auto if auto in FUSED else "direct", {})
    for entry in entries.values():
        if "error" not in entry and "error" not in base:
            entry["time_over_auto"] = {m: entry[m]["min_s"] / base[m]["min_s"] for m in METRICS}
    return {
        "bank": name,
        "filters": names,
        "shape": [int(k), int(s1), int(s2)],
        "y": list(y.shape),
        "bytes_moved": moved,
        "plan": {"filters": list(plan.filters), "columns": plan.columns, "direct_taps": plan.direct_taps,
                 "plan_taps": plan.plan_taps, "cpu_path": plan.cpu_path},
        "auto": auto,
        "impls": entries,
    }


def run(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    device = torch.device("cpu")
    preset = PRESETS[args.preset]
    compile_ = not args.no_compile
    facts = machine.facts(device)
    copy = measure.copy_bandwidth(device, preset.copy_bytes, preset.budget)
    mm = measure.matmul_rate(device, torch.float32, preset.budget, preset.matmul_size)
    rates = {"bytes_per_s": copy["bytes_per_s"], "best_bytes_per_s": copy["best_bytes_per_s"],
             "fma_per_s": mm["fma_per_s"], "best_fma_per_s": mm["best_fma_per_s"]}
    cli.log(f"copy bandwidth {copy['bytes_per_s'] / 1e9:.1f} GB/s, torch.mm {mm['gflop_per_s']:.1f} GFLOP/s")
    previous = torch.ops.fixedbranch._set_factoring("auto")
    try:
        banks = []
        for name in BANKS:
            t0 = time.perf_counter()
            banks.append(run_bank(name, preset, device, compile_, rates))
            cli.log(f"bank {name}: {time.perf_counter() - t0:.1f} s")
    finally:
        torch.ops.fixedbranch._set_factoring(previous)
    facts["load_average_at_end"] = machine.facts(device)["load_average_1_5_15"]
    return {
        "machine": facts,
        "device_name": machine.device_name(device),
        "settings": {"preset": args.preset, "device": str(device), "dtype": "float32", "padding_mode": "zeros",
                     "threads": torch.get_num_threads(), "compile": compile_, "budget": vars(preset.budget),
                     "n": preset.n, "h": preset.h, "w": preset.h, "out_bytes": preset.out_bytes},
        "copy_bandwidth": copy,
        "matmul": mm,
        "banks": banks,
        "wall_time_s": time.perf_counter() - start,
    }


# ---------------------------------------------------------------------------------------------------------------
# Report.


def _pct(entry: dict, kind: str, metric: str) -> str:
    return report.fmt_num(entry.get(f"{kind}_best", {}).get(metric), ".0f")


def _row(bank: str, entry: dict) -> str:
    if "error" in entry:
        return f"| {bank} | {entry['label']} | error: {entry['error'][:80]} |" + " |" * 7
    cells = " | ".join(f"{report.fmt_ms_best(entry.get(m))} | {_pct(entry, 'pct_copy_bound', m)} "
                       f"| {_pct(entry, 'pct_roofline', m)}" for m in METRICS)
    ratio = entry.get("time_over_auto")
    ratio = "-" if not ratio else " / ".join(f"{ratio[m]:.2f}" for m in METRICS)
    return f"| {bank} | {entry['label']} | {cells} | {ratio} | {report.fmt_matched(entry)} |"


def to_markdown(results: dict) -> str:
    s, mm, copy = results["settings"], results["matmul"], results["copy_bandwidth"]
    bw, fma = copy["best_bytes_per_s"], mm["best_fma_per_s"]
    lines = [f"# fixedbranch bank sweep: {results['device_name']}", ""]
    mm_row = (f"torch.mm float32, {mm['size']}x{mm['size']}", f"{mm['gflop_per_s']:.1f} GFLOP/s median, "
              f"{2 * fma / 1e9:.1f} best: {fma / 1e9:.1f} G multiply-adds/s, the roofline's rate")
    lines += report.machine_lines(results, (mm_row,)) + [""]
    lines += [
        "## Banks", "",
        f"float32, y = {s['n']} x C x {s['h']} x {s['w']}, zero padding, identity included, branch order; C chosen "
        f"so that the output is about {s['out_bytes'] / 1e6:g} MB. Taps = multiply-adds per output pixel for the "
        "whole bank (direct: K·S1·S2; plan: fixedbranch.plan.bank_plan(bank).plan_taps, its column passes "
        "shared across the bank). Auto = the path the default policy runs, read off its output (bit-identical to "
        "that path's), as bank_plan(bank).cpu_path predicts unless noted. Copy bound and rooflines are for one "
        f"pass (forward or backward), from the best copy ({bw / 1e9:.1f} GB/s) and the best torch.mm rate.", "",
        "| bank | K x S1 x S2 | C | out MB | taps direct | taps plan (column passes) | auto runs | copy bound ms "
        "| roofline direct ms | roofline factored ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for b in results["banks"]:
        k, s1, s2 = b["shape"]
        n, c, h, w = b["y"]
        plan, moved = b["plan"], b["bytes_moved"]["forward"]
        copy_ms = moved / bw * 1e3
        roof = {t: max(copy_ms, n * c * h * w * plan[t] / fma * 1e3) for t in ("direct_taps", "plan_taps")}
        out_mb = n * (k + 1) * c * h * w * 4 / 1e6
        auto = b["auto"] if b["auto"] == plan["cpu_path"] else f"{b['auto']} (plan.cpu_path: {plan['cpu_path']})"
        lines.append(
            f"| {b['bank']} | {k} x {s1} x {s2} | {c} | {out_mb:.1f} | {plan['direct_taps']} "
            f"| {plan['plan_taps']} ({plan['columns']}) | {auto} | {copy_ms:.3g} | {roof['direct_taps']:.3g} "
            f"| {roof['plan_taps']:.3g} |")
    lines += [
        "", "## Times", "",
        "Times in ms: median (best repetition). % copy = percent of the copy bound, % roof = percent of the row's "
        "roofline (direct taps for every row but the factored one, which computes the plan's), both from the best "
        "repetition against the best copy and the best torch.mm (the least disturbed by other processes); above 100 "
        "% roof, a row sustains more multiply-adds per second than torch.mm does. time / "
        "auto = the row's best time over the best time of the fused path the default policy runs (forward / "
        "backward).", "",
        "| bank | implementation | forward | % copy | % roof | backward | % copy | % roof | time / auto | matches |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for b in results["banks"]:
        for entry in b["impls"].values():
            lines.append(_row(b["bank"], entry))
    lines += ["", METHOD, ""]
    return "\n".join(lines)


METHOD = """\
Method. Before timing, every row's output and dL/dy are compared with the direct fused op's (max |difference| over
max |direct|, float32 tolerance 1e-5). The factoring policy is set before every call of the fused rows, timed or
not; the default policy ("auto") is restored at the end. Times are the median and the best of repetitions of blocks
of back-to-back calls, the rows of a bank timed in turn, repetition by repetition, so that a change of the machine's
load hits them alike; the machine is shared and noisy, so the percentages and ratios use the best repetitions
(of the rows, of the copy and of torch.mm). Forward records autograd (y requires grad); backward is
`torch.autograd.grad` alone. torch.compile is compiled (forward and backward) before timing; its compile time is in
the JSON. The memory allocator row says whether freed memory is kept (warm: outputs reuse touched pages) or returned
to the system (every new output pays page faults); `--warm-malloc` runs the same under glibc settings that keep
it."""


def draw(results: dict, path: Path) -> Path:
    """% of the copy bound (top) and of the roofline (bottom) per bank, forward and backward, every row."""
    banks = results["banks"]
    keys = [k for k in LABELS if any(k in b["impls"] for b in banks)]
    colors = {"direct": "tab:red", "factored": "tab:orange", "reference": "tab:blue", "kornia": "tab:purple",
              "compile_reference": "tab:green"}
    fig, axes = plt.subplots(2, 2, figsize=(15, 10), sharex=True)
    s = results["settings"]
    fig.suptitle(f"fixedbranch bank sweep on {results['device_name']} (float32, N={s['n']}, {s['h']}x{s['w']}, "
                 f"output ~{s['out_bytes'] / 1e6:g} MB, {s['threads']} threads, "
                 f"{results['machine']['allocator'].split(':')[0]} allocator)", fontsize=12)
    width = 0.8 / len(keys)
    for row, kind, ylabel in ((0, "pct_copy_bound_best", "% of copy bound"), (1, "pct_roofline_best", "% of roofline")):
        for col, metric in enumerate(METRICS):
            ax = axes[row, col]
            for j, key in enumerate(keys):
                xs, ys = [], []
                for i, b in enumerate(banks):
                    v = b["impls"].get(key, {}).get(kind, {}).get(metric)
                    if v is not None:
                        xs.append(i + (j - (len(keys) - 1) / 2) * width)
                        ys.append(v)
                ax.bar(xs, ys, width, color=colors[key], label=LABELS[key])
            ax.axhline(100, color="gray", lw=1, ls=":")
            ax.set_yscale("log")
            ax.set_ylabel(f"{ylabel} (best repetition)")
            ax.set_title(f"{metric}: {ylabel}")
            ax.set_xticks(range(len(banks)))
            ax.set_xticklabels([f"{b['bank']}\n(auto: {b['auto'].split(' ')[0]})" for b in banks], fontsize=8)
            ax.grid(True, axis="y", which="both", alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(keys), bbox_to_anchor=(0.5, 0.955), fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.banks", description=__doc__.splitlines()[0])
    cli.add_common_args(p, PRESETS, threads=2)
    p.add_argument("--no-compile", action="store_true", help="leave out torch.compile of the reference")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = cli.start(args, "benchmarks.banks", argv)
    results = run(args)
    cli.finish(results, out, cli.stem(torch.device("cpu"), "banks", args.preset), to_markdown(results), draw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
