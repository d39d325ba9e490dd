"""The branch stage's output options (identity, channel order, stride 2) against its default output.

At the suite's standard point (float32, 8 x 32 x 96 x 96, the standard 3x3 bank, zero padding), contiguous and
channels_last: per option, the fused op (fb.fixed_branch with that option) against the eager reference with the
same option and against the fused default output (identity, branch order, stride 1), timed in turn; for stride 2
also the full-resolution op followed by subsampling (`out[:, :, ::2, ::2].contiguous()`, what one writes without
the option). Each case's bound is the option's own problem: without the identity the output has K maps, at stride 2
a quarter of the pixels.
"""

from __future__ import annotations

from functools import partial

import torch

import fixedbranch as fb
from fixedbranch.reference import strided_size

from .. import baselines, core, report
from ..core import Budget, Case

METRICS = ("forward", "backward", "forward_backward")
OPTIONS = {
    "identity=False": {"identity": False},
    'order="channel"': {"order": "channel"},
    'identity=False, order="channel"': {"identity": False, "order": "channel"},
    "stride=2": {"stride": 2},
}
PRESETS = {
    "quick": {"budget": Budget(0.002, 0.01, 3, 3), "point": (1, 4, 16, 16), "formats": ("contiguous",),
              "dram_bytes": 64 << 20, "mm_size": 256},
    "full": {"budget": Budget(0.02, 0.6, 5, 20), "point": (8, 32, 96, 96), "formats": ("contiguous", "channels_last")},
}


def option_case(name: str, options: dict, point: tuple, fmt: str, device: torch.device) -> Case:
    n, c, h, w = point
    bank64, names = baselines.make_bank(4, 3)
    k, stride = bank64.shape[0], options.get("stride", 1)
    branches, ho, wo = k + options.get("identity", True), strided_size(h, stride), strided_size(w, stride)
    memory_format = torch.channels_last if fmt == "channels_last" else torch.contiguous_format

    def build():
        bank = bank64.float().to(device)
        y = torch.randn(point, device=device).contiguous(memory_format=memory_format).requires_grad_()

        def grad(b, hh, ww):
            return torch.randn(n, b * c, hh, ww, device=device).contiguous(memory_format=memory_format)

        g = grad(branches, ho, wo)
        impls = {
            "fused": core.autograd_impl("fused", partial(fb.fixed_branch, y, bank, **options), [y], g, METRICS, device),
            "reference": core.autograd_impl("eager reference", partial(fb.reference.fixed_branch, y, bank, **options),
                                            [y], g, METRICS, device, check=None),
            "default": core.autograd_impl("fused, default output", partial(fb.fixed_branch, y, bank), [y],
                                          grad(k + 1, h, w), METRICS, device, check=None),
        }
        if stride > 1:
            def subsampled():
                return fb.fixed_branch(y, bank)[:, :, ::stride, ::stride].contiguous()

            impls["subsample"] = core.autograd_impl("fused at stride 1, then subsampled", subsampled, [y], g, METRICS,
                                                    device)
        return impls

    y_numel, out_numel = n * c * h * w, n * branches * c * ho * wo
    return Case(f"{name}, {fmt}", {"option": name, "memory_format": fmt, "y": list(point), "bank": names}, build,
                baselines.pass_bytes(4, y_numel, out_numel), baselines.plan_macs(bank64.float(), n * c * ho * wo),
                4 * out_numel)


def cases(preset: dict, device: torch.device):
    for fmt in preset["formats"]:
        for name, options in OPTIONS.items():
            yield option_case(name, options, preset["point"], fmt, device)


def table(result: dict) -> str:
    """Per case the fused op with the option first, then the rows it is compared with: its speed-up over each."""
    header = ["option", "row", *(f"{m.replace('_', '+')} ms" for m in METRICS),
              *(f"{m.replace('_', '+')} % of bound" for m in METRICS), "fused speed-up, fwd / bwd / fwd+bwd",
              "matches reference"]
    rows = []
    for case in result["cases"]:
        fused = case["rows"]["fused"]
        for key in ["fused", *(k for k in case["rows"] if k != "fused")]:
            row, t = case["rows"][key], case["rows"][key].get("times", {})
            rows.append([case["case"], row["label"], *(report.ms(t.get(m)) for m in METRICS),
                         *(report.pct(case, row, m) if key != "default" else "-" for m in METRICS),
                         " / ".join(report.ratio(fused, row, m) for m in METRICS), report.matched(row)])
    return report.table(header, rows)
