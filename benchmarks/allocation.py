"""``python -m benchmarks.allocation``: what a fresh output costs the fused CPU operators, against torch's own clone
of a tensor the size of their output, under several memory allocators.

A large output is new memory whose pages fault in on first write; the fused kernels fault them in beforehand, huge
pages while they are cheap (csrc/cpu/output_memory.cpp). ``clone`` pays the faults too, so "fused / clone" says
whether the operator costs more than merely producing a tensor of its output's size. y = 4 x C x 96 x 96 float32,
the standard four 3x3 filters (output K+1 = 5 times y), C chosen for outputs of about 8 to 200 MiB. Rows per size:

- forward: ``fb.fixed_branch(y, bank)``, nothing requiring grad; against ``clone`` of a tensor of the output's size;
- backward: the backward operator, dL/dout -> dL/dy; against ``clone`` of a tensor of dL/dy's size (its output)
  and of dL/dout's size (its input, which it must read);
- forward+backward through autograd: ``fb.fixed_branch(y, bank).backward(g)``, y requiring grad; against the two
  clones of the output's and dL/dy's sizes.

Each allocator runs in its own process (an allocator is chosen at start): glibc as it comes ("default": blocks
above 32 MiB go back to the system when freed), glibc keeping freed memory (``machine.WARM_MALLOC_TUNABLES``), and
jemalloc and tcmalloc through LD_PRELOAD where their Debian packages are installed (libjemalloc2,
libtcmalloc-minimal4); jemalloc both as it comes (it returns freed memory to the system over 10 s) and told to keep
it ("jemalloc-keep", ``MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1``). The processes take turns, ``--rounds``
each, so that the machine's load falls on every allocator alike; within a process the calls of a round run in a
shuffled order. The tables give the median and the 90th percentile over all calls of the wall time and of the
process's CPU time, and the median page faults per call (getrusage).

    python -m benchmarks.allocation                        # every allocator found, about 8 minutes on 2 cores
    python -m benchmarks.allocation --allocators default   # one allocator

Writes ``<out>/<device>.json`` and ``.md`` (``--out`` defaults to ``benchmarks/results/allocation``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import fixedbranch as fb

from . import machine
from .presets import make_bank

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "allocation"
N, H, W, K = 4, 96, 96, 4
CHANNELS = (12, 51, 102, 205, 284)  # outputs of 8.4, 35.9, 71.7, 144.1 and 199.7 MiB
LIBDIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")
ROWS = ("forward", "clone_out", "backward", "clone_grad_y", "clone_grad_out", "forward_backward")
VMSTAT = ("thp_fault_alloc", "thp_fault_fallback", "compact_stall")
JEMALLOC_KEEP = "dirty_decay_ms:-1,muzzy_decay_ms:-1"


def _find_library(name: str) -> str | None:
    for d in LIBDIRS:
        if os.path.exists(os.path.join(d, name)):
            return os.path.join(d, name)
    return None


def allocators() -> dict[str, dict | None]:
    """Environment additions per allocator; None where the allocator is not installed."""
    jemalloc, tcmalloc = _find_library("libjemalloc.so.2"), _find_library("libtcmalloc_minimal.so.4")
    return {
        "default": {},
        "glibc-warm": {"GLIBC_TUNABLES": machine.WARM_MALLOC_TUNABLES},
        "jemalloc": {"LD_PRELOAD": jemalloc} if jemalloc else None,
        # jemalloc returns freed memory to the system over 10 s by default; these settings keep it.
        "jemalloc-keep": {"LD_PRELOAD": jemalloc, "MALLOC_CONF": JEMALLOC_KEEP} if jemalloc else None,
        "tcmalloc": {"LD_PRELOAD": tcmalloc} if tcmalloc else None,
    }


def _vmstat() -> dict[str, int]:
    try:
        with open("/proc/vmstat") as f:
            pairs = (line.split() for line in f)
            return {k: int(v) for k, v in pairs if k in VMSTAT}
    except OSError:
        return {}


def _sysfs(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _mib(shape) -> float:
    n = 1
    for s in shape:
        n *= s
    return n * 4 / 2**20


def _calls(c: int, bank: torch.Tensor) -> dict:
    gen = torch.Generator().manual_seed(c)
    y = torch.randn(N, c, H, W, generator=gen)
    g = torch.randn(N, (K + 1) * c, H, W, generator=gen)
    y_leaf = y.clone().requires_grad_()
    backward_op = torch.ops.fixedbranch._fixed_branch_backward.default

    def forward():
        with torch.no_grad():
            return fb.fixed_branch(y, bank)

    def forward_backward():
        fb.fixed_branch(y_leaf, bank).backward(g)
        y_leaf.grad = None

    calls = {
        "forward": forward,
        "clone_out": g.clone,  # g has the output's size
        "backward": lambda: backward_op(g, bank, "zeros", [], True, "branch", [1, 1], [H, W]),
        "clone_grad_y": y.clone,
        "clone_grad_out": g.clone,
        "forward_backward": forward_backward,
    }
    # Every fused row computes what the reference computes (on the first image: images are independent).
    y1 = y[:1].clone().requires_grad_()
    expected = fb.reference.fixed_branch(y1, bank)
    (grad,) = torch.autograd.grad(expected, y1, g[:1])
    torch.testing.assert_close(forward()[:1], expected.detach(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(calls["backward"]()[:1], grad, rtol=1e-4, atol=1e-4)
    return calls


def measure(channels: tuple[int, ...], repeat: int, seed: int) -> dict:
    """Per size and row, [wall ms, CPU ms, page faults] of every timed call, in this process's allocator."""
    bank = make_bank(K, 3)[0].to(torch.float32)
    rnd = random.Random(seed)
    vm0 = _vmstat()
    samples: dict = {}
    for c in channels:
        calls = _calls(c, bank)
        keys = list(calls)
        for key in keys:  # warm-up: the allocator's steady state
            calls[key]()
            calls[key]()
        rec: dict = {key: [] for key in keys}
        for _ in range(repeat):
            rnd.shuffle(keys)
            for key in keys:
                f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                c0 = time.process_time_ns()
                t0 = time.perf_counter_ns()
                out = calls[key]()
                t1 = time.perf_counter_ns()
                c1 = time.process_time_ns()
                f1 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                del out  # freed outside the timed interval, as a training step frees the previous step's
                rec[key].append([(t1 - t0) / 1e6, (c1 - c0) / 1e6, f1 - f0])
        samples[str(c)] = rec
    vm1 = _vmstat()
    return {"samples": samples, "vmstat": {k: vm1[k] - vm0.get(k, 0) for k in vm1},
            "allocator": machine.allocator()}


def _child(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure(tuple(args.channels), args.repeat, args.seed)
    Path(args.child).write_text(json.dumps(result))
    return 0


def run_all(args: argparse.Namespace) -> dict:
    found = allocators()
    chosen = [a for a in args.allocators if found.get(a) is not None]
    missing = [a for a in args.allocators if found.get(a) is None]
    merged: dict = {a: {"samples": {}, "vmstat": {}, "allocator": None, "env": found[a]} for a in chosen}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for a in chosen:
                path = Path(tmp) / f"{a}-{r}.json"
                env = dict(os.environ)
                for var, value in found[a].items():
                    env[var] = ":".join(filter(None, [env.get(var), value]))
                cmd = [sys.executable, "-m", "benchmarks.allocation", "--child", str(path), "--repeat",
                       str(args.repeat), "--seed", str(args.seed + r), "--channels", *map(str, args.channels)]
                if args.threads:
                    cmd += ["--threads", str(args.threads)]
                print(f"allocation: round {r + 1}/{args.rounds}, {a}", file=sys.stderr, flush=True)
                subprocess.run(cmd, env=env, check=True, cwd=Path(__file__).resolve().parent.parent)
                part = json.loads(path.read_text())
                m = merged[a]
                m["allocator"] = part["allocator"]
                for k, v in part["vmstat"].items():
                    m["vmstat"][k] = m["vmstat"].get(k, 0) + v
                for c, rows in part["samples"].items():
                    for key, values in rows.items():
                        m["samples"].setdefault(c, {}).setdefault(key, []).extend(values)
    return {"allocators": merged, "missing": missing}


def _quantile(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, round(q * (len(v) - 1)))]


def summarize(samples: dict) -> dict:
    """Median and 90th percentile of wall and CPU ms, median page faults, per size and row."""
    out: dict = {}
    for c, rows in samples.items():
        entry = out.setdefault(c, {})
        for key, values in rows.items():
            wall, cpu, faults = ([v[i] for v in values] for i in range(3))
            entry[key] = {"median_ms": statistics.median(wall), "p90_ms": _quantile(wall, 0.9),
                          "min_ms": min(wall), "cpu_median_ms": statistics.median(cpu),
                          "cpu_p90_ms": _quantile(cpu, 0.9), "faults": statistics.median(faults), "calls": len(wall)}
    return out


def _cell(s: dict, clock: str = "") -> str:
    return f"{s[clock + 'median_ms']:.1f} ({s[clock + 'p90_ms']:.1f})"


def _ratio(a: dict, b: dict, clock: str = "") -> str:
    med, p90 = clock + "median_ms", clock + "p90_ms"
    return f"{a[med] / b[med]:.2f}x ({a[p90] / b[p90]:.2f}x)"


def _sum2(a: dict, b: dict) -> dict:
    return {k: a[k] + b[k] for k in ("median_ms", "p90_ms", "cpu_median_ms", "cpu_p90_ms")}


def allocator_table(summary: dict, clock: str = "") -> list[str]:
    """Wall times (clock "") or the process's CPU times (clock "cpu_")."""
    lines = [
        ("| output MiB | forward | clone, output's size | forward / clone | faults forward / clone | backward | "
         "clone, dL/dy's size | clone, dL/dout's size | backward / clone of dL/dout | fwd+bwd (autograd) | "
         "fwd+bwd / both clones |"),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c, s in sorted(summary.items(), key=lambda kv: int(kv[0])):
        both = _sum2(s["clone_out"], s["clone_grad_y"])
        lines.append(
            f"| {_mib((N, (K + 1) * int(c), H, W)):.1f} | {_cell(s['forward'], clock)} | "
            f"{_cell(s['clone_out'], clock)} | {_ratio(s['forward'], s['clone_out'], clock)} | "
            f"{s['forward']['faults']:.0f} / {s['clone_out']['faults']:.0f} | {_cell(s['backward'], clock)} | "
            f"{_cell(s['clone_grad_y'], clock)} | {_cell(s['clone_grad_out'], clock)} | "
            f"{_ratio(s['backward'], s['clone_grad_out'], clock)} | {_cell(s['forward_backward'], clock)} | "
            f"{_ratio(s['forward_backward'], both, clock)} |"
        )
    return lines


def comparison_table(summaries: dict) -> list[str]:
    names = list(summaries)
    lines = ["| output MiB | " + " | ".join(f"forward, {a}" for a in names) + " | "
             + " | ".join(f"fwd+bwd, {a}" for a in names) + " |",
             "|---|" + "---|" * (2 * len(names))]
    sizes = sorted(next(iter(summaries.values())), key=int)
    for c in sizes:
        row = [f"{_mib((N, (K + 1) * int(c), H, W)):.1f}"]
        row += [_cell(summaries[a][c]["forward"]) for a in names]
        row += [_cell(summaries[a][c]["forward_backward"]) for a in names]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def to_markdown(results: dict) -> str:
    m, s = results["machine"], results["settings"]
    lines = [
        f"# What a fresh output costs: {m['cpu_model']}",
        "",
        (f"y = {N} x C x {H} x {W} float32, the standard four 3x3 filters, {s['threads']} threads; output = 5 x y. "
         f"Milliseconds per call, median (90th percentile) over {s['rounds']} rounds x {s['repeat']} calls per "
         "allocator, the allocators' processes taking turns; ratios likewise. Produced by "
         "`python -m benchmarks.allocation`."),
        "",
    ]
    for a, entry in results["allocators"].items():
        env = ", ".join(f"`{k}={v}`" for k, v in entry["env"].items()) or "none"
        lines += [f"## {a}: {entry['allocator']}", "", f"Environment added: {env}.", "", "Wall time:", "",
                  *allocator_table(entry["summary"]), "",
                  ("CPU time of the process (all threads; leaves out the time it waited for a core on a busy "
                   "machine):"), "", *allocator_table(entry["summary"], "cpu_"), ""]
        vm = entry["vmstat"]
        if vm:
            lines += [("System-wide over its runs (every process on the machine): "
                       + ", ".join(f"{k} +{v}" for k, v in vm.items()) + "."), ""]
    if len(results["allocators"]) > 1:
        lines += ["## Allocators side by side", "",
                  *comparison_table({a: e["summary"] for a, e in results["allocators"].items()}), ""]
    if results["missing"]:
        lines += [f"Not installed, not measured: {', '.join(results['missing'])}.", ""]
    lines += [
        "| machine | |",
        "|---|---|",
        f"| CPU | {m['cpu_model']}, {m['logical_cpus']} logical CPUs |",
        f"| kernel | {s['kernel']} |",
        f"| transparent huge pages | enabled: {s['thp_enabled']}; defrag: {s['thp_defrag']} |",
        f"| torch / fixedbranch | {m['torch_version']} / {m['fixedbranch_version']} |",
        f"| load average (1 min) at start | {(m.get('load_average_1_5_15') or ['-'])[0]} |",
        f"| CPU busy with other work just before the run | {m.get('cpu_busy_fraction_before_run')} |",
        f"| date (UTC) | {m['date_utc']} |",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.allocation", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    p.add_argument("--allocators", nargs="+", default=list(allocators()), choices=list(allocators()),
                   help="allocators to measure (default: all; those not installed are skipped)")
    p.add_argument("--channels", nargs="+", type=int, default=list(CHANNELS),
                   help="C of y = 4 x C x 96 x 96 per size (default: outputs of 8 to 200 MiB)")
    p.add_argument("--rounds", type=int, default=3, help="processes per allocator, taking turns")
    p.add_argument("--repeat", type=int, default=8, help="timed calls per row and size in each process")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child", help=argparse.SUPPRESS)  # measure in this process, write JSON here
    args = p.parse_args(argv)
    if min(args.rounds, args.repeat, *args.channels) < 1:
        p.error("--rounds, --repeat and --channels must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return _child(args)
    start = time.perf_counter()
    facts = machine.facts(torch.device("cpu"))
    measured = run_all(args)
    for entry in measured["allocators"].values():
        entry["summary"] = summarize(entry["samples"])
    results = {
        "machine": facts,
        "settings": {
            "shape": [N, "C", H, W], "channels": args.channels, "bank": make_bank(K, 3)[1], "dtype": "float32",
            "threads": args.threads or torch.get_num_threads(), "rounds": args.rounds, "repeat": args.repeat,
            "kernel": platform.release(),
            "thp_enabled": _sysfs("/sys/kernel/mm/transparent_hugepage/enabled"),
            "thp_defrag": _sysfs("/sys/kernel/mm/transparent_hugepage/defrag"),
        },
        **measured,
        "wall_time_s": time.perf_counter() - start,
    }
    markdown = to_markdown(results)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = machine.slug(torch.device("cpu"))
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(markdown)
    print(markdown)
    print(f"wrote {args.out / stem}.json, .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
