"""The raw operators on banks from 3x3 edge filters to 11x11 Gabors, from in-cache sizes to 150 MB outputs, against
the bound.

Banks: the standard 3x3 four (K=4); the orthonormal DCT bases 5x5 (K=25) and 7x7 (K=49, factored); Gaussians and
Laplacians of Gaussian 7x7 at four scales (K=8); Gabor filters 11x11 at 8 orientations. y = 4 x C x 96 x 96 float32,
C chosen for outputs of about 5 MB (y about 1 MB for the 3x3 bank: in cache on any machine), 37.5 MB and 150 MB;
stride 2 for the 3x3 and DCT 5x5 banks on the same inputs. Rows, forward and backward (the registered operators
called directly, no autograd): the operators under the default factoring policy, and at stride 1 each path forced
(direct: every filter a correlation; factored: the bank's plan, fixedbranch.bank_plan); the yardsticks
`out.fill_(1)` (the forward's writes) and `g.view(N,B,C,H,W).sum(1)` (the backward's reads and writes); at the
middle size and stride 1 the eager reference (autograd), kornia and torch.compile of the reference. Every checked row
is compared with the eager reference first.
"""

from __future__ import annotations

import math
from functools import partial

import torch

import fixedbranch as fb

from .. import baselines, core, report
from ..core import Budget, Case

SIGMAS = (1.0, 1.5, 2.0, 3.0)
ORIENTATIONS = 8
BANKS = {
    "3x3 standard": lambda: baselines.make_bank(4, 3)[0],
    "DCT 5x5": lambda: fb.filters.dct(5),
    "DCT 7x7": lambda: fb.filters.dct(7),
    "Gaussian/LoG 7x7": lambda: fb.filters.bank(*(fb.filters.gaussian(7, s) for s in SIGMAS),
                                                 *(fb.filters.log(7, s) for s in SIGMAS)),
    # sigma = size/4 and wavelength size/2: a few periods under the envelope.
    "Gabor 11x11": lambda: fb.filters.bank(*(fb.filters.gabor(11, 11 / 4, math.pi * i / ORIENTATIONS, 11 / 2)
                                             for i in range(ORIENTATIONS))),
}
STRIDED = ("3x3 standard", "DCT 5x5")
POLICY = {"direct": "never", "factored": "always"}
PRESETS = {
    "quick": {"budget": Budget(0.002, 0.01, 3, 3), "n": 1, "h": 24, "out_mb": (0.5,), "baselines_at": 0.5,
              "compile": False, "threads": 2, "dram_bytes": 64 << 20, "mm_size": 256},
    "full": {"budget": Budget(0.01, 0.3, 5, 15), "n": 4, "h": 96, "out_mb": (5, 37.5, 150), "baselines_at": 37.5,
             "compile": True, "threads": 2, "mm_size": 1024},
}


def _policy(policy: str, call):
    def run():
        torch.ops.fixedbranch._set_factoring(policy)
        try:
            return call()
        finally:
            torch.ops.fixedbranch._set_factoring("auto")

    return run


def bank_case(name: str, out_mb: float, stride: int, preset: dict, device: torch.device) -> Case:
    bank64 = BANKS[name]()
    k = bank64.shape[0]
    n, h = preset["n"], preset["h"]
    c = max(1, round(out_mb * 1e6 / (n * (k + 1) * h * h * 4)))
    ho = (h - 1) // stride + 1
    y_numel, out_numel = n * c * h * h, n * (k + 1) * c * ho * ho
    plan = fb.bank_plan(bank64.float())
    with_baselines = stride == 1 and out_mb == preset["baselines_at"]

    def build():
        bank = bank64.to(device=device, dtype=torch.float32)
        y = torch.randn(n, c, h, h, device=device).requires_grad_()
        g = torch.randn(n, (k + 1) * c, ho, ho, device=device)
        fwd, bwd = baselines.raw_forward(y, bank, stride=stride), baselines.raw_backward(g, bank, (h, h), stride=stride)
        reference = core.autograd_impl("eager reference", partial(fb.reference.fixed_branch, y, bank, stride=stride),
                                       [y], g, ("forward", "backward") if with_baselines else (), device, check=None)
        impls = {"reference": reference, "operators": core.operator_impl("fused operators", fwd, bwd, device)}
        if stride == 1 and plan.plan_taps < plan.direct_taps:
            for path, policy in POLICY.items():
                impls[path] = core.operator_impl(f"fused, {path}", _policy(policy, fwd), _policy(policy, bwd), device)
        impls.update(core.yardsticks((n, (k + 1) * c, ho, ho), k + 1, device, torch.float32))
        if with_baselines:
            impls["kornia"] = core.autograd_impl("kornia", partial(baselines.kornia_branch, y, bank, "zeros"), [y], g,
                                                 ("forward", "backward"), device)
            if preset["compile"]:
                compiled = partial(baselines.compiled(baselines.reference_branch), y, bank=bank, padding_mode="zeros")
                impls["compile"] = core.autograd_impl("compile(reference)", compiled, [y], g, ("forward", "backward"),
                                                      device, compiled=True)
        return impls

    params = {"bank": name, "k": k, "s": list(bank64.shape[1:]), "stride": stride, "y": [n, c, h, h],
              "out_mb": 4 * out_numel / 1e6, "direct_taps": plan.direct_taps, "plan_taps": plan.plan_taps,
              "cpu_path": plan.cpu_path, "plan": list(plan.filters)}
    label = f"{name}, {4 * out_numel / 1e6:.3g} MB out" + (f", stride {stride}" if stride > 1 else "")
    return Case(label, params, build, baselines.pass_bytes(4, y_numel, out_numel),
                baselines.plan_macs(bank64.float(), n * c * ho * ho), 4 * out_numel)


def cases(preset: dict, device: torch.device):
    for name in BANKS:
        for stride in (1, 2) if name in STRIDED else (1,):
            for out_mb in preset["out_mb"]:
                yield bank_case(name, out_mb, stride, preset, device)


def _bound(case: dict, metric: str) -> str:
    b = case["bound"][metric]
    return f"{b['s'] * 1e3:.3g} {b['kind']}"


def table(result: dict, rows_shown: tuple[str, ...] | None = None) -> str:
    header = ["case", "CPU path (plan taps of direct)", "row", "forward ms", "fwd % of bound", "fwd % DRAM", "backward ms",
              "bwd % of bound", "bwd % DRAM", "bound ms fwd, bwd", "matches reference"]
    rows = []
    for case in result["cases"]:
        p = case["params"]
        path = f"{p['cpu_path']} ({p['plan_taps']} of {p['direct_taps']})"
        for key, row in case["rows"].items():
            if "times" not in row or (rows_shown and key not in rows_shown):
                continue
            t = row["times"]
            cells = [case["case"], path, row["label"]]
            for m in ("forward", "backward"):
                cells += [report.ms(t.get(m)), report.pct(case, row, m) if m in t else "-",
                          report.num(row.get("pct_dram", {}).get(m) if m in t else None, ".0f", "%")]
            rows.append(cells + [f"{_bound(case, 'forward')}, {_bound(case, 'backward')}", report.matched(row)])
    return report.table(header, rows)


def docs(result: dict, view: str | None) -> str:
    """The fused operators' rows (``view`` "rates": the machine's rates)."""
    if view == "rates":
        r = result["rates"]
        copies = ", ".join(f"{c['working_set'] / 1e6:.3g} MB: {2 * c['working_set'] / c['copy']['min_s'] / 1e9:.0f}"
                           for c in result["cases"] if c["params"]["bank"] == "3x3 standard"
                           and c["params"]["stride"] == 1)
        return (f"torch.mm: {r['fma_per_s'] / 1e9:.1f} G multiply-adds/s; `dst.copy_(src)` at the op's output size "
                f"(GB/s, read + write): {copies}; DRAM copy ({r['dram_copy_bytes'] >> 20} MiB): "
                f"{r['dram_bytes_per_s'] / 1e9:.1f} GB/s.")
    return table(result, ("operators",))
