"""The fused branch stage and layer against every baseline at the standard point, and sweeps around it.

The standard point: float32, y = 8 x 32 x 96 x 96, the bank sobel_x, sobel_y, laplacian4, gaussian(3, 1), zero
padding, contiguous and channels_last. The branch stage (y -> out) runs as the fused op (fb.fixed_branch), its
operators alone (no autograd), the eager reference (K depthwise convs + cat), an eager "stacked" grouped conv,
torch.compile of the reference and of the shifted-slice formulation, and kornia's filter2d; the layer (x -> out, a
3x3 conv before the branches) as fb.FixedBranchConv2d and nn.Conv2d before each of those. Forward, backward and
forward+backward, with the forward's peak memory and what autograd saves. The sweeps vary K, C, H=W, S and N one at
a time around the point (forward+backward, and the operators alone).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from .. import baselines, core, report
from ..core import Budget, Case

METRICS = ("forward", "backward", "forward_backward")
STANDARD = {"n": 8, "c": 32, "h": 96, "k": 4, "s": 3, "in_channels": 16}
PRESETS = {
    "quick": {"budget": Budget(0.002, 0.02, 3, 3), "point": {"n": 2, "c": 8, "h": 32, "k": 4, "s": 3,
                                                             "in_channels": 4},
              "formats": ("contiguous",), "sweeps": {"k": (1, 2), "s": (5,)}, "compile_at": ("branch",),
              "dram_bytes": 64 << 20, "mm_size": 256},
    "full": {"budget": Budget(0.02, 0.6, 5, 20), "point": STANDARD, "formats": ("contiguous", "channels_last"),
             "sweeps": {"k": (1, 2, 8, 16), "c": (8, 16, 64), "h": (24, 48, 144), "s": (5, 7, 9, 11), "n": (1, 2, 16)},
             "compile_at": ("branch", "layer", "k=16", "s=5"), "sweep_budget": Budget(0.02, 0.4, 3, 10)},
}


def _fmt(name: str) -> torch.memory_format:
    return torch.channels_last if name == "channels_last" else torch.contiguous_format


def branch_case(p: dict, fmt: str, device: torch.device, metrics, compile_: bool, memory: bool, name: str) -> Case:
    n, c, h, k, s = p["n"], p["c"], p["h"], p["k"], p["s"]
    bank64, names = baselines.make_bank(k, s)
    y_numel, out_numel = n * c * h * h, n * (k + 1) * c * h * h

    def build():
        bank = bank64.to(device=device, dtype=torch.float32)
        y = torch.randn(n, c, h, h, device=device).contiguous(memory_format=_fmt(fmt)).requires_grad_()
        g = torch.randn(n, (k + 1) * c, h, h, device=device).contiguous(memory_format=_fmt(fmt))
        impls = {key: core.autograd_impl(baselines.LABELS[key], partial(f, y), [y], g, metrics, device,
                                         compiled=key in baselines.COMPILED)
                 for key, f in baselines.branch_impls(bank, c, "zeros", compile_).items()}
        impls["operators"] = core.operator_impl("fused operators alone", baselines.raw_forward(y, bank),
                                                baselines.raw_backward(g, bank, (h, h)), device)
        return impls

    return Case(name, {**p, "memory_format": fmt, "bank": names}, build, baselines.pass_bytes(4, y_numel, out_numel),
                baselines.plan_macs(bank64.float(), y_numel), 4 * out_numel, memory)


def layer_case(p: dict, fmt: str, device: torch.device, compile_: bool) -> Case:
    n, c, h, k, cin = p["n"], p["c"], p["h"], p["k"], p["in_channels"]
    bank64, names = baselines.make_bank(k, p["s"])

    def build():
        bank = bank64.to(device=device, dtype=torch.float32)
        x = torch.randn(n, cin, h, h, device=device).contiguous(memory_format=_fmt(fmt)).requires_grad_()
        g = torch.randn(n, (k + 1) * c, h, h, device=device).contiguous(memory_format=_fmt(fmt))
        conv = nn.Conv2d(cin, c, 3, padding=1).to(device=device, memory_format=_fmt(fmt))
        return {key: core.autograd_impl(baselines.LAYER_LABELS[key], m, [x, *params], g, METRICS, device,
                                        compiled=key in baselines.COMPILED)
                for key, (m, params) in baselines.layer_impls(conv, bank, "zeros", compile_).items()
                for m in [partial(m, x)]}

    return Case(f"layer, {fmt}", {**p, "memory_format": fmt, "bank": names, "stage": "layer"}, build, memory=True)


def cases(preset: dict, device: torch.device):
    p, compile_at = preset["point"], preset["compile_at"]
    for fmt in preset["formats"]:
        yield branch_case(p, fmt, device, METRICS, "branch" in compile_at, True, f"branch, {fmt}")
        yield layer_case(p, fmt, device, "layer" in compile_at)
    for param, values in preset["sweeps"].items():
        for value in values:
            case = branch_case({**p, param: value}, "contiguous", device, ("forward_backward",),
                               f"{param}={value}" in compile_at, False, f"{param}={value}")
            case.budget = preset.get("sweep_budget")
            yield case


def _memory(row: dict) -> str:
    mem, saved = row.get("forward_memory"), row.get("saved_tensors")
    return f"{report.num(mem and mem['peak_bytes'] / 2**20, '.1f')} / " \
           f"{report.num(saved and saved['new_bytes'] / 2**20, '.1f')}"


def _point(p: dict) -> str:
    return (f"{p.get('stage', 'branch')} stage, N={p['n']}, C={p['c']}, {p['h']}x{p['h']}, K={p['k']} "
            f"{p['s']}x{p['s']} ({', '.join(p['bank'])}), zero padding, {p['memory_format']}")


def standard_table(case: dict) -> str:
    bounded = bool(case["bound"])
    header = ["implementation", *(f"{m.replace('_', '+')} ms" for m in METRICS)]
    header += [f"{m.replace('_', '+')} % of bound" for m in METRICS] if bounded else []
    header += ["fused speed-up, fwd+bwd", "fwd peak / saved MiB", "matches reference"]
    rows = []
    for row in case["rows"].values():
        cells = [row["label"], *(report.ms(row.get("times", {}).get(m)) for m in METRICS)]
        cells += [report.pct(case, row, m) for m in METRICS] if bounded else []
        rows.append(cells + [report.ratio(case["rows"]["fused"], row, "forward_backward"), _memory(row),
                             report.matched(row)])
    return f"**{_point(case['params'])}**\n\n" + report.table(header, rows)


def sweep_table(cases: list[dict]) -> str:
    keys = [k for k in cases[0]["rows"] if k != "operators"]
    header = ["point", *(cases[0]["rows"][k]["label"] for k in keys), "fused % of bound", "operators alone fwd, bwd %",
              "all match reference"]
    rows = []
    for c in cases:
        ops = c["rows"].get("operators", {})
        rows.append([c["case"], *(report.ms(c["rows"].get(k, {}).get("times", {}).get("forward_backward"))
                                  for k in keys),
                     report.pct(c, c["rows"]["fused"], "forward_backward"),
                     f"{report.pct(c, ops, 'forward')}, {report.pct(c, ops, 'backward')}",
                     "yes" if all(report.matched(r) in ("yes", "-") for r in c["rows"].values()) else "NO"])
    return ("**Sweeps** around the standard point (branch stage, contiguous), forward+backward ms\n\n"
            + report.table(header, rows))


def table(result: dict) -> str:
    standard = [c for c in result["cases"] if c["case"].startswith(("branch", "layer"))]
    sweeps = [c for c in result["cases"] if c not in standard]
    return "\n\n".join([standard_table(c) for c in standard] + ([sweep_table(sweeps)] if sweeps else []))


def docs(result: dict, view: str | None) -> str:
    """The standard point's tables (``view`` "sweeps": the sweeps')."""
    standard = [c for c in result["cases"] if c["case"].startswith(("branch", "layer"))]
    if view == "sweeps":
        return sweep_table([c for c in result["cases"] if c not in standard])
    return "\n\n".join(standard_table(c) for c in standard)
