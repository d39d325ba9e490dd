"""``python -m benchmarks.blocks``: the fixed-filter blocks of published networks, written with fixedbranch, against
the grouped-convolution formulation they were published with.

The blocks and their sizes are the examples' (examples/harmonic_block.py: harmonic networks' DCT block, a 3x3 block
and the 7x7 stride-2 stem; examples/predefined_filter_block.py: a pre-defined filter module of 16 edge filters, a
stride-1 module and PFNet18's stride-2 first module). Each example's ``check()`` first confirms in float64 that its two
formulations agree (forward, gradients, BatchNorm statistics); then its ``timings()`` times both in float32, the whole
block and its filter stage alone, forward (eval mode, no grad) and forward+backward (training mode, gradients of the
input and the parameters): ``torch.utils.benchmark``'s blocked_autorange median, the two formulations in turn, one
round per call of ``timings()``; the median and the best of the rounds are reported.

    python -m benchmarks.blocks                    # the reported numbers, 2 threads (about 4 minutes on 2 cores)
    python -m benchmarks.blocks --warm-malloc      # the same under an allocator that keeps freed memory
    python -m benchmarks.blocks --preset quick     # the examples' small sizes, in seconds

Writes ``<out>/<device>-blocks.json``, ``.md`` and ``.png`` (``-blocks-quick`` for the quick preset).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import torch  # noqa: E402

from . import cli, machine, report  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# name in the tables: the example script that defines the block.
BLOCKS = {
    "harmonic (DCT)": "harmonic_block",
    "pre-defined filters": "predefined_filter_block",
}


@dataclass(frozen=True)
class BlocksPreset:
    quick_cases: bool  # the examples' QUICK_CASES instead of their CASES
    min_run_time: float  # seconds of blocked_autorange per measurement
    rounds: int


PRESETS = {"quick": BlocksPreset(True, 0.01, 1), "full": BlocksPreset(False, 0.5, 5)}


def load_example(name: str) -> ModuleType:
    """The example script ``examples/<name>.py`` as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"fixedbranch_examples.{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_block(name: str, preset: BlocksPreset, threads: int) -> dict:
    """The example's check, then ``preset.rounds`` calls of its ``timings`` (one round each, so that every call
    times each row's two formulations in turn): per row, the median and the best of the rounds."""
    example = load_example(BLOCKS[name])
    checks = example.check()
    cases = example.QUICK_CASES if preset.quick_cases else example.CASES
    samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _ in range(preset.rounds):
        for case, what, grouped, fused in example.timings(cases, threads=threads, min_run_time=preset.min_run_time,
                                                          rounds=1):
            samples.setdefault((case, what), []).append((grouped, fused))
    rows = []
    for (case, what), pairs in samples.items():
        grouped, fused = (sorted(p[i] for p in pairs) for i in (0, 1))
        median = {"grouped": statistics.median(grouped), "fixedbranch": statistics.median(fused)}
        best = {"grouped": grouped[0], "fixedbranch": fused[0]}
        rows.append({"case": case, "what": what, "median_s": median, "best_s": best,
                     "speedup_best": best["grouped"] / best["fixedbranch"],
                     "speedup_median": median["grouped"] / median["fixedbranch"],
                     "rounds_s": [list(p) for p in pairs]})
    return {
        "block": name,
        "example": f"examples/{BLOCKS[name]}.py",
        "check": {"max_rel_err": max(v for _, v in checks), "tolerance": example.TOLERANCE,
                  "matched": all(v <= example.TOLERANCE for _, v in checks), "items": dict(checks)},
        "cases": {key: list(case) for key, case in cases.items()},
        "rows": rows,
    }


def run(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    device = torch.device("cpu")
    preset = PRESETS[args.preset]
    facts = machine.facts(device)
    threads = torch.get_num_threads()
    blocks = []
    for name in BLOCKS:
        t0 = time.perf_counter()
        blocks.append(run_block(name, preset, threads))
        cli.log(f"block {name}: {time.perf_counter() - t0:.1f} s")
    facts["load_average_at_end"] = machine.facts(device)["load_average_1_5_15"]
    return {
        "machine": facts,
        "device_name": machine.device_name(device),
        "settings": {"preset": args.preset, "device": str(device), "dtype": "float32", "threads": threads,
                     "min_run_time_s": preset.min_run_time, "rounds": preset.rounds},
        "blocks": blocks,
        "wall_time_s": time.perf_counter() - start,
    }


def to_markdown(results: dict) -> str:
    s = results["settings"]
    lines = [f"# fixedbranch client blocks: {results['device_name']}", ""]
    lines += report.machine_lines(results) + [""]
    lines += [
        "## Blocks against their grouped-convolution formulation", "",
        f"float32, {s['threads']} threads. Times in ms, median (best) over {s['rounds']} rounds; a round times "
        "each row's two formulations in turn with torch.utils.benchmark's blocked_autorange (at least "
        f"{s['min_run_time_s']:g} s each, its median kept). forward: eval mode under no_grad; fwd+bwd: training "
        "mode, gradients of the input and every parameter. Stage = the fixed filters alone (grouped conv vs "
        "fixedbranch op); block = filters, BatchNorm, 1x1 conv (and ReLU, BatchNorm for pre-defined filters). "
        "speed-up = grouped / fixedbranch, of the best rounds (the least disturbed by other processes) and, in "
        "parentheses, of the medians.", "",
        "| block | case | what | grouped ms | fixedbranch ms | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for b in results["blocks"]:
        for r in b["rows"]:
            med, best = r["median_s"], r["best_s"]
            lines.append(f"| {b['block']} | {r['case']} | {r['what']} "
                         f"| {med['grouped'] * 1e3:.3g} ({best['grouped'] * 1e3:.3g}) "
                         f"| {med['fixedbranch'] * 1e3:.3g} ({best['fixedbranch'] * 1e3:.3g}) "
                         f"| {r['speedup_best']:.2f}x ({r['speedup_median']:.2f}x) |")
    lines += ["", "Agreement in float64 (each example's check(): forward, input and parameter gradients, BatchNorm "
              "running statistics; relative to the largest magnitude):", ""]
    for b in results["blocks"]:
        c = b["check"]
        lines.append(f"- {b['block']} ({b['example']}): max relative difference {c['max_rel_err']:.1e}, tolerance "
                     f"{c['tolerance']:g}: {'matched' if c['matched'] else 'NOT MATCHED'}")
    lines += ["", METHOD, ""]
    return "\n".join(lines)


METHOD = """\
Method. The blocks, their sizes, the check and the timing loop are the examples' own (run either script for the
same check and a table of medians); this program calls the examples' timings() one round at a time, keeps every
round, and records the machine. The machine is shared and noisy: the two formulations of a row are timed in turn,
round by round, so that a change of load hits both alike, and the speed-up is taken from the best rounds; compare
speed-ups, not absolute times across runs. Under the default allocator, the blocks' other layers (BatchNorm, the
1x1 convolution) allocate large fresh tensors whose page faults dominate and vary with the allocator's state: the
warm-malloc table is the steadier one."""


def draw(results: dict, path: Path) -> Path:
    """Speed-up of the fixedbranch formulation over the grouped one, per block, case and pass."""
    labels, values, colors = [], [], []
    palette = ["tab:red", "tab:blue", "tab:green", "tab:purple"]
    for i, b in enumerate(results["blocks"]):
        for r in b["rows"]:
            labels.append(f"{b['block']}: {r['case'].split(':')[0]}, {r['what']}")
            values.append(r["speedup_best"])
            colors.append(palette[i % len(palette)])
    fig, ax = plt.subplots(figsize=(11, 0.35 * len(labels) + 1.5))
    ys = list(range(len(labels)))[::-1]
    ax.barh(ys, values, color=colors)
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=8)
    ax.axvline(1.0, color="gray", lw=1, ls=":")
    for y, v in zip(ys, values):
        ax.text(v, y, f" {v:.2f}x", va="center", fontsize=7)
    s = results["settings"]
    ax.set_xlabel("speed-up of fixedbranch over the grouped convolution (grouped / fixedbranch, best rounds)")
    ax.set_title(f"Client blocks on {results['device_name']} (float32, {s['threads']} threads; "
                 f"{results['machine']['allocator'].split(':')[0]} allocator)", fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.blocks", description=__doc__.splitlines()[0])
    cli.add_common_args(p, PRESETS, threads=2)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = cli.start(args, "benchmarks.blocks", argv)
    results = run(args)
    cli.finish(results, out, cli.stem(torch.device("cpu"), "blocks", args.preset), to_markdown(results), draw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
