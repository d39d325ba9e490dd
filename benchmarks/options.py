"""``python -m benchmarks.options``: the branch stage's output options against its default output.

Two tables per memory format, at the suite's standard point (float32, N=8, C=32, 96x96, the 4-filter 3x3 bank, zero
padding; presets.STANDARD):

- Layout: ``identity=False``, ``order="channel"`` and both, against the default (identity, branch order): the fused
  op's forward, backward and forward+backward, each as time and % of its own copy bound (without the identity the
  output, and so the bound, is a sixth smaller), its time over the default's, and the eager reference with the same
  options beside it.
- Stride 2: ``fb.fixed_branch(y, bank, stride=2)`` against the full-resolution op followed by subsampling
  (``out[:, :, ::2, ::2].contiguous()``, what one writes without the option) and against the eager reference with
  stride 2 (``F.conv2d(..., stride=2)`` per filter). The copy bound is the strided problem's: read y, write the
  strided output (a quarter of the full one).

Every row's output and input gradient are checked against its counterpart (fused against the reference with the
same options; the subsampled output against the strided op) before anything is timed.

    python -m benchmarks.options                      # the reported numbers (about 3 minutes on 2 CPU cores)
    python -m benchmarks.options --preset quick       # every row and output file on a tiny point, in seconds
    python -m benchmarks.options --warm-malloc        # under an allocator that keeps freed memory (warm-malloc/)

Writes ``<out>/<device>-options.json``, ``.md`` and ``.png`` (``-options-quick`` for the quick preset).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import torch  # noqa: E402

import fixedbranch as fb  # noqa: E402
from fixedbranch.reference import strided_size  # noqa: E402

from . import cli, machine, measure, report, suite  # noqa: E402
from .presets import STANDARD, Budget, Point  # noqa: E402

# key: (label, identity, order). The first is the default every other row is compared with.
LAYOUTS = {
    "default": ("default: identity, branch order", True, "branch"),
    "no_identity": ("identity=False", False, "branch"),
    "channel": ('order="channel"', True, "channel"),
    "no_identity_channel": ('identity=False, order="channel"', False, "channel"),
}
STRIDE = 2
# key: label of the stride rows; the first is the fused strided op, which the others are compared with.
STRIDED = {
    "fused": f"fused, stride={STRIDE}",
    "fused_subsample": f"fused at stride 1, then out[:, :, ::{STRIDE}, ::{STRIDE}].contiguous()",
    "reference": f"eager reference, stride={STRIDE}",
}
METRICS = suite.METRICS


@dataclass(frozen=True)
class OptionsPreset:
    point: Point
    budget: Budget
    memory_formats: tuple[str, ...]
    copy_bytes: int


PRESETS = {
    "quick": OptionsPreset(Point(n=1, c=4, h=16, w=16), Budget(0.002, 0.01, 3, 3), ("contiguous",), 32 << 20),
    "full": OptionsPreset(STANDARD, Budget(0.02, 1.0, 5, 25), ("contiguous", "channels_last"), 256 << 20),
}


def _fused(y, bank, mode, **options):
    return fb.fixed_branch(y, bank, mode, **options)


def _reference(y, bank, mode, **options):
    return fb.reference.fixed_branch(y, bank, mode, **options)


def _fused_then_subsample(y, bank, mode, stride):
    return fb.fixed_branch(y, bank, mode)[:, :, ::stride, ::stride].contiguous()


def impls_at(point: Point, memory_format: str, device: torch.device) -> dict[str, suite.Impl]:
    """The rows of both tables at one point and layout, keyed ``<table>/<row>``: ``layout/<impl>/<layout key>``
    (impl "fused" or "reference") and ``stride/<STRIDED key>``."""
    torch.manual_seed(0)
    dtype = getattr(torch, point.dtype)
    fmt = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
    bank64, _ = point.bank()
    bank = bank64.to(device=device, dtype=dtype)
    y = torch.randn(point.n, point.c, point.h, point.w, device=device, dtype=dtype)
    y = y.contiguous(memory_format=fmt).requires_grad_()
    itemsize, y_numel = y.element_size(), y.numel()
    mode = point.padding_mode

    def grad_for(branches: int, h: int, w: int) -> tuple[torch.Tensor, dict]:
        g = torch.randn(point.n, branches * point.c, h, w, device=device, dtype=dtype).contiguous(memory_format=fmt)
        return g, suite.pass_bytes(itemsize, y_numel, g.numel())

    impls = {}
    for key, (label, identity, order) in LAYOUTS.items():
        g, moved = grad_for(point.k + identity, point.h, point.w)
        options = {"identity": identity, "order": order}
        for impl, fn, other in (("fused", _fused, "reference"), ("reference", _reference, "fused")):
            impls[f"layout/{impl}/{key}"] = suite.Impl(
                f"{'fused' if impl == 'fused' else 'eager reference'}, {label}",
                partial(fn, y, bank, mode, **options), [y], g, against=(f"layout/{other}/{key}",), bytes_moved=moved)
    g, moved = grad_for(point.k + 1, strided_size(point.h, STRIDE), strided_size(point.w, STRIDE))
    fns = {
        "fused": partial(_fused, y, bank, mode, stride=STRIDE),
        "fused_subsample": partial(_fused_then_subsample, y, bank, mode, STRIDE),
        "reference": partial(_reference, y, bank, mode, stride=STRIDE),
    }
    for key, fn in fns.items():
        against = ("stride/reference",) if key == "fused" else ("stride/fused",)
        impls[f"stride/{key}"] = suite.Impl(STRIDED[key], fn, [y], g, against=against, bytes_moved=moved)
    return impls


def run_format(point: Point, memory_format: str, device: torch.device, budget: Budget, rates: dict) -> dict:
    """Checks and times every row at one layout of the point; adds each fused layout row's time over the default's
    and each strided row's time over the fused strided op's (``ratio``, per metric, of the best repetitions)."""
    dtype = getattr(torch, point.dtype)
    impls = impls_at(point, memory_format, device)
    entries = suite.check_impls(impls, device, dtype, ["out", "dy"])
    timings = measure.time_interleaved(suite.impl_blocks(impls, entries, device, METRICS), budget)
    for (key, metric), timing in timings.items():
        suite.record_timing(entries[key], metric, timing, impls[key].bytes_moved, None, rates)
    for key, entry in entries.items():
        entry["bytes_moved"] = impls[key].bytes_moved
        base = "layout/fused/default" if key.startswith("layout/") else "stride/fused"
        if "error" not in entry and "error" not in entries[base]:
            entry["ratio"] = {m: entry[m]["min_s"] / entries[base][m]["min_s"] for m in METRICS}
    return {"memory_format": memory_format, "impls": entries}


def run(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    device = torch.device("cpu")
    preset = PRESETS[args.preset]
    facts = machine.facts(device)
    copy = measure.copy_bandwidth(device, preset.copy_bytes, preset.budget)
    cli.log(f"copy bandwidth {copy['bytes_per_s'] / 1e9:.1f} GB/s")
    results = []
    for fmt in preset.memory_formats:
        t0 = time.perf_counter()
        rates = {key: copy[key] for key in ("bytes_per_s", "best_bytes_per_s")}
        results.append(run_format(preset.point, fmt, device, preset.budget, rates))
        cli.log(f"options {fmt}: {time.perf_counter() - t0:.1f} s")
    facts["load_average_at_end"] = machine.facts(device)["load_average_1_5_15"]
    _, names = preset.point.bank()
    return {
        "machine": facts,
        "device_name": machine.device_name(device),
        "settings": {"preset": args.preset, "device": str(device), "dtype": preset.point.dtype,
                     "threads": torch.get_num_threads(), "budget": vars(preset.budget), "stride": STRIDE},
        "point": preset.point.as_dict(),
        "bank": names,
        "copy_bandwidth": copy,
        "results": results,
        "wall_time_s": time.perf_counter() - start,
    }


# ---------------------------------------------------------------------------------------------------------------
# Report.


def _ratios(entry: dict) -> str:
    r = entry.get("ratio")
    return "-" if not r else " / ".join(f"{r[m]:.2f}" for m in METRICS)


def _row(entry: dict, last: str) -> str:
    if "error" in entry:
        return f"| {entry['label']} | error: {entry['error'][:80]} |" + " |" * 8
    pct = entry.get("pct_copy_bound_best", {})
    cells = " | ".join(f"{report.fmt_ms_best(entry.get(m))} | {report.fmt_num(pct.get(m), '.0f')}" for m in METRICS)
    return (f"| {entry['label']} | {entry['bytes_moved']['forward'] / report.MB:.3g} | {cells} | {last} "
            f"| {report.fmt_matched(entry)} |")


def _copy_row(entry: dict, bytes_per_s: float) -> str:
    cells = " | ".join(f"{entry['bytes_moved'][m] / bytes_per_s * 1e3:.3g} | 100" for m in METRICS)
    return f"| copy bound | {entry['bytes_moved']['forward'] / report.MB:.3g} | {cells} | | |"


BEST = ("Times in ms: median (best repetition); % = percent of the row's copy bound, from the best repetition against "
        "the best copy (the least disturbed by other processes)")
HEADER = ("| {what} | MiB a pass | forward | % | backward | % | forward+backward | % | {ratio} | matches |",
          "|---|---|---|---|---|---|---|---|---|---|")


def to_markdown(results: dict) -> str:
    p, bw = results["point"], results["copy_bandwidth"]["best_bytes_per_s"]
    lines = [f"# fixedbranch output options: {results['device_name']}", ""]
    lines += report.machine_lines(results) + [""]
    for res in results["results"]:
        title = (f"{p['dtype']}, N={p['n']}, C={p['c']}, {p['h']}x{p['w']}, K={p['k']} {p['s']}x{p['s']} filters "
                 f"({', '.join(results['bank'])}), {p['padding_mode']} padding, {res['memory_format']}")
        impls = res["impls"]
        lines += [f"## Output layout, {res['memory_format']}", "",
                  f"Branch stage, {title}. {BEST}; time / default fused = the row's best time over the default "
                  "fused op's (forward / backward / fwd+bwd).", "",
                  HEADER[0].format(what="output", ratio="time / default fused"), HEADER[1]]
        for key in LAYOUTS:
            for impl in ("fused", "reference"):
                entry = impls[f"layout/{impl}/{key}"]
                lines.append(_row(entry, _ratios(entry)))
        for key in ("default", "no_identity"):
            entry = impls[f"layout/fused/{key}"]
            lines.append(_copy_row(entry, bw).replace("copy bound", f"copy bound, {LAYOUTS[key][0]}"))
        lines += ["", f"## Stride {STRIDE}, {res['memory_format']}", "",
                  f"Branch stage at stride {STRIDE}, {title}. {BEST}, the copy bound being the strided problem's "
                  f"(read y, write the {STRIDE}x{STRIDE}-subsampled output); time / strided fused = the row's best "
                  f"time over the fused stride-{STRIDE} op's.", "",
                  HEADER[0].format(what="implementation", ratio="time / strided fused"), HEADER[1]]
        for key in STRIDED:
            entry = impls[f"stride/{key}"]
            lines.append(_row(entry, _ratios(entry)))
        lines.append(_copy_row(impls["stride/fused"], bw))
        lines.append("")
    lines += [METHOD, ""]
    return "\n".join(lines)


METHOD = """\
Method. As the suite's (python -m benchmarks): every row's output and dL/dy are compared with its counterpart's
before timing (fused with the eager reference of the same options; the subsampled row with the strided op); times
are the median and IQR over repetitions of blocks of back-to-back calls, the rows timed in turn, repetition by
repetition, so that a change of the machine's load hits them alike. The machine is shared and noisy: the derived
numbers (%, ratios) use the best repetition of each row and of the copy, the medians are given beside them.
Forward records autograd (y requires grad); backward is `torch.autograd.grad` alone; forward+backward both. The copy
bound of a row is the bytes its pass must move (read y and write the output; backward: read the output gradient and
write dL/dy) over the bandwidth of a plain `dst.copy_(src)` measured in the same run. On a shared machine with few
cores other processes slow every multi-threaded kernel: compare rows of one table, not runs."""


def draw(results: dict, path: Path) -> Path:
    """Per memory format: % of the copy bound of every row (best repetition), forward, backward and
    forward+backward."""
    formats = results["results"]
    fig, axes = plt.subplots(len(formats), 2, figsize=(15, 5 * len(formats)), squeeze=False)
    p = results["point"]
    fig.suptitle(f"fixedbranch output options on {results['device_name']} ({p['dtype']}, N={p['n']}, C={p['c']}, "
                 f"{p['h']}x{p['w']}, K={p['k']} {p['s']}x{p['s']}, {results['settings']['threads']} threads): "
                 "% of the copy bound", fontsize=12)
    for row, res in zip(axes, formats):
        groups = (("layout", [f"layout/{i}/{k}" for k in LAYOUTS for i in ("fused", "reference")]),
                  (f"stride {STRIDE}", [f"stride/{k}" for k in STRIDED]))
        for ax, (title, keys) in zip(row, groups):
            entries = [res["impls"][k] for k in keys]
            width = 0.8 / len(METRICS)
            for j, metric in enumerate(METRICS):
                ys = [e.get("pct_copy_bound_best", {}).get(metric, 0) for e in entries]
                xs = [i + (j - 1) * width for i in range(len(entries))]
                ax.bar(xs, ys, width, label=metric.replace("_", "+"))
            ax.set_xticks(range(len(entries)))
            ax.set_xticklabels([e["label"].replace(", ", ",\n", 1) for e in entries], fontsize=7, rotation=30,
                               ha="right")
            ax.axhline(100, color="gray", lw=1, ls=":")
            ax.set_ylabel("% of copy bound (100 = copy speed; best repetition)")
            ax.set_title(f"{title}, {res['memory_format']}")
            ax.grid(True, axis="y", alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.options", description=__doc__.splitlines()[0])
    cli.add_common_args(p, PRESETS, threads=None)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = cli.start(args, "benchmarks.options", argv)
    results = run(args)
    cli.finish(results, out, cli.stem(torch.device("cpu"), "options", args.preset), to_markdown(results), draw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
