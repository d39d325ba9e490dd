"""``python -m benchmarks.overhead``: the fixed cost of one call, in microseconds, on an input so small that the
arithmetic is negligible (y = 1x2x4x4 float32, the standard 4-filter 3x3 bank, one thread).

Prints a markdown table and writes ``<out>/<device>-<label>.json`` and ``.md`` (``<device>`` as the suite names
it, e.g. ``cpu-amd-epyc-before``). Rows: the public function, the module, the conv layer, the registered operator
called directly, and the unfused equivalents a user writes by hand (one depthwise ``F.conv2d`` with the bank
repeated per channel, groups=C, then ``torch.cat([y, z], 1)``; before it an ``nn.Conv2d`` for the layer).

    python -m benchmarks.overhead --label before
    python -m benchmarks.overhead --label after --repeat 9 --accumulate   # adds rounds to an earlier run's

Columns:
- forward, no grad: nothing requires grad (y, x and the parameters), autograd records nothing;
- forward, autograd: y (or x and the layer's parameters) requires grad, so the graph is recorded;
- forward+backward: the recording forward, then ``out.backward(g)`` with one precomputed ``g`` for every row,
  and the leaves' ``.grad`` reset to None (so backward hands its gradient over rather than adding to an old one).

Timing (``time.perf_counter_ns``, garbage collector off): after ``--warmup`` untimed calls, a *round* is ``--calls``
calls in blocks of back-to-back calls; the round's value is the median over its blocks of the time per call. A block
lasts about ``--block-us`` (as many calls as the warm-up says fit, at least one): short enough that few blocks are
cut by the scheduler handing the core to another process, long enough that the clock's own cost vanishes. Rounds are taken in turn over every (row, column), ``--repeat`` times, and the reported time is the minimum
over rounds of the round medians: the cost of a call when nothing else intervenes. Each block is also timed with
``time.thread_time_ns``, the calling thread's CPU time (with one torch thread the kernels and the CPU autograd
engine all run on it): on a machine whose cores are shared with other work it leaves out the time the process
waited for a core, though not the slowdown of sharing caches and cores.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import fixedbranch as fb

from . import machine
from .presets import make_bank

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "overhead"
SHAPE = (1, 2, 4, 4)  # N, C, H, W of y (and of x for the layer rows, a 2 -> 2 channel 3x3 conv, padding 1)
K = 4

COLUMNS = {
    "forward_nograd": "forward, no grad",
    "forward": "forward, autograd",
    "forward_backward": "forward+backward",
}
LABELS = {
    "fixed_branch": "`fb.fixed_branch(y, bank)`",
    "fixed_branch_f32": "`fb.fixed_branch(y, bank32)` (bank already float32)",
    "module": "`fb.FixedBranch(bank)(y)`",
    "raw_op": "`torch.ops.fixedbranch.fixed_branch` (bank32)",
    "depthwise_cat": "depthwise `F.conv2d` + `torch.cat` (bank32)",
    "conv_layer": "`fb.FixedBranchConv2d(2, 2, 3, bank=bank, padding=1)(x)`",
    "conv_depthwise_cat": "`nn.Conv2d(2, 2, 3, padding=1)` + depthwise conv + cat",
}
# (numerator row, denominator row, label): each ratio is given for every column.
RATIOS = (
    ("fixed_branch", "raw_op", "`fb.fixed_branch` / raw operator"),
    ("module", "depthwise_cat", "`fb.FixedBranch` / (depthwise conv + cat)"),
    ("conv_layer", "conv_depthwise_cat", "`fb.FixedBranchConv2d` / (`nn.Conv2d` + depthwise conv + cat)"),
    ("fixed_branch", "depthwise_cat", "`fb.fixed_branch` / (depthwise conv + cat)"),
)

# A factory builds one row for one column: given whether the inputs require grad, it returns the call and the
# leaves whose .grad backward fills.
Factory = Callable[[bool], tuple[Callable[[], torch.Tensor], list[torch.Tensor]]]


def raw_op_args(y: torch.Tensor, bank: torch.Tensor) -> list:
    """The registered operator's arguments for the plain case: zero padding, no stopped branch and, where the schema
    has them, the identity branch, branch-major order and stride 1."""
    schema = torch.ops.fixedbranch.fixed_branch.default._schema
    defaults = [y, bank, "zeros", [], True, "branch", [1, 1]]
    n = len(schema.arguments)
    if not 4 <= n <= len(defaults):
        raise RuntimeError(f"overhead: unexpected schema of fixedbranch::fixed_branch: {schema}")
    return defaults[:n]


def build_rows(seed: int = 0) -> dict[str, Factory]:
    torch.manual_seed(seed)
    bank, _ = make_bank(K, 3)  # float64, as fb.filters.bank returns it
    bank32 = bank.to(torch.float32)
    c = SHAPE[1]
    y0, x0 = torch.randn(SHAPE), torch.randn(SHAPE)
    dw_weight = bank32.unsqueeze(0).expand(c, K, 3, 3).reshape(c * K, 1, 3, 3).contiguous()
    state = fb.FixedBranchConv2d(c, c, 3, bank=bank, padding=1).state_dict()

    def leaf(t: torch.Tensor, rg: bool) -> torch.Tensor:
        return t.clone().requires_grad_(rg)

    def branch_row(call: Callable[[torch.Tensor], torch.Tensor]) -> Factory:
        def factory(rg: bool):
            y = leaf(y0, rg)
            return partial(call, y), [y] if rg else []

        return factory

    def layer_row(module_cls: Callable[[], nn.Module], call: Callable[[nn.Module, torch.Tensor], torch.Tensor]):
        def factory(rg: bool):
            m = module_cls()
            m.load_state_dict(state)
            m.requires_grad_(rg)
            x = leaf(x0, rg)
            return partial(call, m, x), [x, *m.parameters()] if rg else []

        return factory

    def depthwise_cat(y):
        return torch.cat([y, F.conv2d(y, dw_weight, padding=1, groups=c)], 1)

    def module_factory(rg: bool):
        y = leaf(y0, rg)
        return partial(fb.FixedBranch(bank), y), [y] if rg else []

    # raw_op_args is evaluated once per row, not per call: what is timed is the operator call itself.
    def raw_factory(rg: bool):
        y = leaf(y0, rg)
        return partial(torch.ops.fixedbranch.fixed_branch, *raw_op_args(y, bank32)), [y] if rg else []

    rows: dict[str, Factory] = {
        "fixed_branch": branch_row(partial(fb.fixed_branch, bank=bank)),
        "fixed_branch_f32": branch_row(partial(fb.fixed_branch, bank=bank32)),
        "module": module_factory,
        "raw_op": raw_factory,
        "depthwise_cat": branch_row(depthwise_cat),
        "conv_layer": layer_row(lambda: fb.FixedBranchConv2d(c, c, 3, bank=bank, padding=1),
                                lambda m, x: m(x)),
        "conv_depthwise_cat": layer_row(lambda: nn.Conv2d(c, c, 3, padding=1),
                                        lambda m, x: depthwise_cat(m(x))),
    }
    _check(rows, c)
    return rows


def _check(rows: dict[str, Factory], c: int) -> None:
    """Every row computes what the public function computes (the depthwise rows with their channels in (c, k) order),
    so that the table compares equal work."""
    outs = {key: factory(False)[0]() for key, factory in rows.items()}
    n, _, h, w = SHAPE

    def branch_major(out: torch.Tensor) -> torch.Tensor:
        z = out[:, c:].reshape(n, c, K, h, w).transpose(1, 2).reshape(n, K * c, h, w)
        return torch.cat([out[:, :c], z], 1)

    for key, ref, reordered in (("fixed_branch_f32", "fixed_branch", False), ("module", "fixed_branch", False),
                                ("raw_op", "fixed_branch", False), ("depthwise_cat", "fixed_branch", True),
                                ("conv_depthwise_cat", "conv_layer", True)):
        got = branch_major(outs[key]) if reordered else outs[key]
        if not torch.allclose(got, outs[ref], rtol=1e-5, atol=1e-5):
            raise AssertionError(f"overhead: row {key} does not compute what {ref} computes")


def _forward_backward(fn: Callable[[], torch.Tensor], leaves: list[torch.Tensor], grad: torch.Tensor):
    def call():
        fn().backward(grad)
        for t in leaves:
            t.grad = None

    return call


def calls_for(rows: dict[str, Factory]) -> dict[tuple[str, str], Callable[[], object]]:
    """One zero-argument call per (row, column)."""
    grad = torch.randn(SHAPE[0], (K + 1) * SHAPE[1], *SHAPE[2:])
    calls = {}
    for key, factory in rows.items():
        calls[(key, "forward_nograd")] = factory(False)[0]
        calls[(key, "forward")] = factory(True)[0]
        calls[(key, "forward_backward")] = _forward_backward(*factory(True), grad)
    return calls


def round_median_ns(fn: Callable[[], object], calls: int, block: int) -> tuple[float, float]:
    """Medians over blocks of ``block`` back-to-back calls of the nanoseconds per call, ``calls`` calls in all: wall
    time (``perf_counter_ns``) and the calling thread's CPU time (``thread_time_ns``)."""
    wall, cpu = time.perf_counter_ns, time.thread_time_ns
    wall_per_call, cpu_per_call = [], []
    for _ in range(max(1, calls // block)):
        # The CPU clock is a system call (about a microsecond): read outside the wall-clock interval.
        c0 = cpu()
        w0 = wall()
        for _ in range(block):
            fn()
        w1 = wall()
        c1 = cpu()
        wall_per_call.append((w1 - w0) / block)
        cpu_per_call.append((c1 - c0) / block)
    return statistics.median(wall_per_call), statistics.median(cpu_per_call)


def warm_up(fn: Callable[[], object], warmup: int, block_us: float) -> int:
    """Runs ``warmup`` untimed calls (at least one) and returns the calls per block that last about ``block_us``."""
    t0 = time.perf_counter_ns()
    for _ in range(max(1, warmup)):
        fn()
    call_us = (time.perf_counter_ns() - t0) / max(1, warmup) / 1e3
    return max(1, round(block_us / max(call_us, 1e-3)))


def measure(calls: dict, n_calls: int, block_us: float, repeat: int, warmup: int) -> tuple[dict, dict]:
    """Round medians in microseconds per (row, column) and clock ("wall", "cpu"), rounds taken in turn over every
    call; and the calls per block of each."""
    blocks = {key: warm_up(fn, warmup, block_us) for key, fn in calls.items()}
    medians: dict = {key: {"wall": [], "cpu": []} for key in calls}
    gc.collect()
    gc.disable()  # a collection inside a block would be charged to whichever call triggered it
    try:
        for _ in range(repeat):
            for key, fn in calls.items():
                wall_ns, cpu_ns = round_median_ns(fn, n_calls, blocks[key])
                medians[key]["wall"].append(wall_ns / 1e3)
                medians[key]["cpu"].append(cpu_ns / 1e3)
    finally:
        gc.enable()
    return medians, blocks


def summarize(medians: dict, blocks: dict) -> tuple[dict, dict]:
    rows: dict = {}
    for (key, column), clocks in medians.items():
        entry = rows.setdefault(key, {"label": LABELS[key]})
        entry[column] = {
            "us": min(clocks["wall"]),
            "calls_per_block": blocks[(key, column)],
            "cpu_us": min(clocks["cpu"]),
            "round_medians_us": [round(v, 3) for v in clocks["wall"]],
            "cpu_round_medians_us": [round(v, 3) for v in clocks["cpu"]],
        }

    def ratio(num: str, den: str, num_col: str, den_col: str) -> dict:
        a, b = rows[num][num_col], rows[den][den_col]
        return {"wall": a["us"] / b["us"], "cpu": a["cpu_us"] / b["cpu_us"]}

    ratios = {}
    for num, den, label in RATIOS:
        ratios[f"{num}/{den}"] = {"label": label, **{col: ratio(num, den, col, col) for col in COLUMNS}}
    # The public function with autograd (y requires grad) against the bare operator (nothing requires grad).
    ratios["fixed_branch_autograd/raw_op_nograd"] = {
        "label": "`fb.fixed_branch` forward with autograd / raw operator forward without",
        "forward": ratio("fixed_branch", "raw_op", "forward", "forward_nograd"),
    }
    return rows, ratios


def _fmt_ratio(value: dict | None) -> str:
    return "-" if value is None else f"{value['wall']:.2f}x ({value['cpu']:.2f}x)"


def to_markdown(results: dict) -> str:
    m, s = results["machine"], results["settings"]
    lines = [
        f"# fixedbranch per-call overhead ({s['label']}): {m['cpu_model']}",
        "",
        (f"y = {'x'.join(map(str, s['shape']))} float32, bank {', '.join(s['bank'])} (float64 as "
         f"`fb.filters.bank` returns it; bank32 = the same in float32), {s['threads']} thread. "
         f"Microseconds per call: minimum over {s['rounds']} round(s) of the median over blocks of about "
         f"{s['block_us']:g} µs ({s['calls']} calls a round); in parentheses the same from the thread's CPU time, which leaves "
         "out the time the process waited for a core."),
        "",
        "| call | " + " | ".join(COLUMNS.values()) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    for entry in results["rows"].values():
        lines.append(f"| {entry['label']} | "
                     + " | ".join(f"{entry[c]['us']:.2f} ({entry[c]['cpu_us']:.2f})" for c in COLUMNS) + " |")
    lines += ["", "| ratio | " + " | ".join(COLUMNS.values()) + " |", "|---|" + "---|" * len(COLUMNS)]
    for ratio in results["ratios"].values():
        lines.append(f"| {ratio['label']} | " + " | ".join(_fmt_ratio(ratio.get(c)) for c in COLUMNS) + " |")
    lines += [
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {m['cpu_model']}, {m['logical_cpus']} logical CPUs |",
        f"| torch / fixedbranch | {m['torch_version']} / {m['fixedbranch_version']} |",
        f"| operator schema | `{s['raw_op_schema']}` |",
        f"| load average (1 min) at start | {(m.get('load_average_1_5_15') or ['-'])[0]} |",
        f"| CPU busy with other work just before the run | {m.get('cpu_busy_fraction_before_run')} |",
        f"| date (UTC) | {m['date_utc']} |",
        "",
        ("Forward, no grad: nothing requires grad. Forward, autograd: y (the layer rows: x and the parameters) "
         "requires grad. Forward+backward: the autograd forward, then `out.backward(g)` with one precomputed g, "
         "the leaves' `.grad` reset to None. The depthwise rows leave their filter channels in (c, k) order "
         "(one conv, one cat); every row's output is checked against the public function's before timing."),
        "",
    ]
    return "\n".join(lines)


def _accumulate(medians: dict, path: Path, settings: dict) -> int:
    """Prepends the round medians of an earlier run written to ``path`` with the same settings; returns its rounds."""
    if not path.exists():
        return 0
    old = json.loads(path.read_text())
    same = ("shape", "bank", "threads", "calls", "block_us", "raw_op_schema")
    if any(old["settings"].get(k) != settings[k] for k in same):
        raise SystemExit(f"overhead: {path} was measured with other settings; not accumulating")
    for (key, column), clocks in medians.items():
        earlier = old["rows"][key][column]
        clocks["wall"][:0] = earlier["round_medians_us"]
        clocks["cpu"][:0] = earlier["cpu_round_medians_us"]
    return old["settings"]["rounds"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    p.add_argument("--label", default="current", help="appended to the file name, e.g. before or after")
    p.add_argument("--repeat", type=int, default=5, help="rounds per (row, column); the minimum is reported")
    p.add_argument("--calls", type=int, default=2000, help="timed calls per round")
    p.add_argument("--block-us", type=float, default=300.0,
                   help="duration of a timed block of back-to-back calls, in microseconds")
    p.add_argument("--warmup", type=int, default=200, help="untimed calls per (row, column) before the first round")
    p.add_argument("--accumulate", action="store_true",
                   help="add the rounds of the existing file of the same name (same settings) to this run's")
    args = p.parse_args(argv)
    if min(args.repeat, args.calls) < 1 or args.block_us <= 0 or args.warmup < 0:
        p.error("--repeat, --calls and --block-us must be positive, --warmup non-negative")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    torch.set_num_threads(1)
    device = torch.device("cpu")
    facts = machine.facts(device)
    rows = build_rows()
    _, bank_names = make_bank(K, 3)
    medians, blocks = measure(calls_for(rows), args.calls, args.block_us, args.repeat, args.warmup)
    settings = {
        "label": args.label,
        "shape": list(SHAPE),
        "dtype": "float32",
        "bank": bank_names,
        "threads": torch.get_num_threads(),
        "calls": args.calls,
        "block_us": args.block_us,
        "warmup": args.warmup,
        "raw_op_schema": str(torch.ops.fixedbranch.fixed_branch.default._schema),
    }
    stem = f"{machine.slug(device)}-{args.label}"
    json_path, md_path = args.out / f"{stem}.json", args.out / f"{stem}.md"
    earlier = _accumulate(medians, json_path, settings) if args.accumulate else 0
    settings["rounds"] = earlier + args.repeat
    table, ratios = summarize(medians, blocks)
    results = {"machine": facts, "settings": settings, "rows": table, "ratios": ratios,
               "wall_time_s": time.perf_counter() - start}
    args.out.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    markdown = to_markdown(results)
    md_path.write_text(markdown)
    print(markdown)
    print(f"wrote {json_path}, {md_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
