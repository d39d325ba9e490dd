"""``python -m benchmarks``: fused fixed-filter branches against every baseline, with the copy bound.

Prints the markdown report on stdout (progress goes to stderr) and writes ``<out>/<device>.json``, ``.md`` and
``.png``, where <device> names the device model (``cpu-amd-epyc``, ``cuda-nvidia-h100-80gb-hbm3``), with the
options that differ from the full preset's defaults appended (``cpu-amd-epyc-quick``, ``...-bfloat16``).

    python -m benchmarks --preset quick                 # every implementation and check on a tiny point
    python -m benchmarks --preset full                  # the reported numbers (about 10 minutes on 2 CPU cores)
    python -m benchmarks --preset full --device cuda    # the same on a GPU, file named by the GPU
    python -m benchmarks --preset full --warm-malloc    # under an allocator that keeps freed memory (warm-malloc/)

What is measured is in presets.py, how in measure.py, the implementations in baselines.py. The other programs of the
package: ``python -m benchmarks.options`` (identity, channel order and stride against the default output),
``python -m benchmarks.banks`` (large and factored banks against the roofline), ``python -m benchmarks.blocks``
(the harmonic and predefined-filter blocks of examples/ against their grouped-convolution versions) and
``python -m benchmarks.overhead`` (the fixed cost of one call).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from . import cli, machine, measure, plots, report, suite
from .cli import DEFAULT_OUT
from .presets import PRESETS, sweep_point


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="quick",
                   help="quick: a smoke run in seconds (plus torch.compile's compile time); full: the reported numbers")
    p.add_argument("--device", default="cpu", help="cpu or cuda (or cuda:N)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64", "float16", "bfloat16"))
    p.add_argument("--memory-format", choices=("contiguous", "channels_last", "both"), default=None,
                   help="layouts of the standard point (default: both for full, contiguous for quick); the sweeps "
                        "use the first")
    p.add_argument("--padding-mode", default="zeros", choices=("zeros", "reflect", "replicate", "circular"),
                   help="the filters' border handling (default zeros, the standard point's)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's, all cores)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile baselines")
    p.add_argument("--no-sweeps", action="store_true", help="measure the standard point only")
    cli.add_warm_malloc(p)
    return p.parse_args(argv)


_log = cli.log


def run(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
        torch.cuda.set_device(device)
    preset = PRESETS[args.preset]
    formats = {None: preset.memory_formats, "both": ("contiguous", "channels_last")}.get(
        args.memory_format, (args.memory_format,))
    base = replace(preset.standard, dtype=args.dtype, padding_mode=args.padding_mode)
    compile_ = not args.no_compile
    facts = machine.facts(device)
    # Strict float32 everywhere: TF32 convolutions (cuDNN's default on Ampere and later) would make the float32
    # baselines differ from the fused op by 1e-4 and time a different arithmetic.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False

    copy_bytes = preset.copy_bytes if device.type == "cpu" else max(preset.copy_bytes, 1 << 30)
    copy = measure.copy_bandwidth(device, copy_bytes, preset.standard_budget)
    bw = copy["bytes_per_s"]
    _log(f"copy bandwidth {bw / 1e9:.1f} GB/s")

    standard = []
    for fmt in formats:
        for stage in ("branch", "layer"):
            t0 = time.perf_counter()
            standard.append(suite.run_point(stage, replace(base, memory_format=fmt), device, preset.standard_budget,
                                            suite.METRICS, compile_, True, bw))
            _log(f"standard {stage} {fmt}: {time.perf_counter() - t0:.1f} s")

    sweeps = []
    if not args.no_sweeps:
        sweep_base = replace(base, memory_format=formats[0])
        std_branch = standard[0]
        for sw in preset.sweeps:
            values = sw.values_for(device.type)
            entry = {"param": sw.param, "values": list(values), "results": []}
            for value in values:
                point = sweep_point(sweep_base, sw.param, value)
                if point == sweep_base:
                    entry["results"].append(std_branch)  # the standard point, measured above
                    continue
                t0 = time.perf_counter()
                entry["results"].append(suite.run_point(
                    "branch", point, device, preset.sweep_budget, preset.sweep_metrics,
                    compile_ and value in sw.compile_at, False, bw))
                _log(f"sweep {sw.param}={value}: {time.perf_counter() - t0:.1f} s")
            sweeps.append(entry)

    facts["load_average_at_end"] = machine.facts(device)["load_average_1_5_15"]
    return {
        "machine": facts,
        "device_name": machine.device_name(device),
        "settings": {
            "preset": preset.name,
            "device": str(device),
            "dtype": args.dtype,
            "padding_mode": args.padding_mode,
            "memory_formats": list(formats),
            "threads": torch.get_num_threads(),
            "compile": compile_,
            "tf32": False,
            "standard_budget": vars(preset.standard_budget),
            "sweep_budget": vars(preset.sweep_budget),
            "sweep_metrics": list(preset.sweep_metrics),
        },
        "copy_bandwidth": copy,
        "standard": standard,
        "sweeps": sweeps,
        "wall_time_s": time.perf_counter() - start,
    }


def result_stem(args: argparse.Namespace, device: torch.device) -> str:
    """The device's slug, plus every option that differs from the full preset's defaults, so that a partial or
    differently configured run never overwrites the reported results."""
    parts = [machine.slug(device)]
    if args.preset != "full":
        parts.append(args.preset)
    if args.dtype != "float32":
        parts.append(args.dtype)
    if args.padding_mode != "zeros":
        parts.append(args.padding_mode)
    if args.memory_format not in (None, "both"):
        parts.append(args.memory_format)
    if args.threads:
        parts.append(f"{args.threads}threads")
    if args.no_compile:
        parts.append("nocompile")
    if args.no_sweeps:
        parts.append("nosweeps")
    return "-".join(parts)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = cli.start(args, "benchmarks", argv)
    results = run(args)
    device = torch.device(results["settings"]["device"])
    cli.finish(results, out, result_stem(args, device), report.to_markdown(results), plots.draw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
