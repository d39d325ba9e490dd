"""The fixed cost of one call, in microseconds, on an input so small that the arithmetic is negligible.

y = 1 x 2 x 4 x 4 float32, the standard 4-filter 3x3 bank (float64, as fb.filters.bank returns it, or float32:
bank32), one thread. Rows: the public function, the module, the conv layer, the registered operator called
directly, and what a user writes by hand (one depthwise F.conv2d with the bank repeated per channel, groups=C, then
torch.cat; an nn.Conv2d before it for the layer). Columns: forward under no_grad; forward recording autograd (y, or
x and the parameters, require grad); forward+backward (`torch.autograd.grad` with one precomputed gradient). Per-call
timing: repetitions of many blocks of about 300 µs of back-to-back calls, each repetition the median over its
blocks, the garbage collector off; the best repetition is reported.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

import fixedbranch as fb

from .. import baselines, core, report
from ..core import Budget, Case

SHAPE, K = (1, 2, 4, 4), 4
LEGEND = "µs per call: the best repetition, each the median over blocks of back-to-back calls."
METRICS = ("forward_nograd", "forward", "forward_backward")
PRESETS = {
    "quick": {"budget": Budget(100e-6, 0.0, 3, 3, blocks_per_rep=3), "threads": 1, "dram_bytes": 64 << 20,
              "mm_size": 256},
    "full": {"budget": Budget(300e-6, 0.0, 9, 9, blocks_per_rep=15), "threads": 1},
}
# (numerator, denominator, label): the ratios of the table, each for every column.
RATIOS = (
    ("fixed_branch", "raw_op", "`fb.fixed_branch` / raw operator"),
    ("module", "depthwise_cat", "`fb.FixedBranch` / (depthwise conv + cat)"),
    ("conv_layer", "conv_depthwise_cat", "`fb.FixedBranchConv2d` / (`nn.Conv2d` + depthwise conv + cat)"),
)


def _reorder(out: torch.Tensor, first: int, second: int) -> torch.Tensor:
    """The maps after the identity, (first, second)-ordered, as (second, first): (C, K) <-> (K, C)."""
    n, _, h, w = out.shape
    z = out[:, SHAPE[1]:].reshape(n, first, second, h, w).transpose(1, 2).reshape(n, first * second, h, w)
    return torch.cat([out[:, :SHAPE[1]], z], 1)


def build(device: torch.device) -> dict[str, core.Impl]:
    bank, _ = baselines.make_bank(K, 3)
    bank32, c = bank.float(), SHAPE[1]
    y, x = torch.randn(SHAPE).requires_grad_(), torch.randn(SHAPE).requires_grad_()
    g = torch.randn(SHAPE[0], (K + 1) * c, *SHAPE[2:])
    dw = baselines.stacked_weight(bank32, c)
    conv = nn.Conv2d(c, c, 3, padding=1)
    layer = fb.FixedBranchConv2d.from_conv2d(conv, bank=bank)

    def depthwise_cat(t):
        return torch.cat([t, F.conv2d(t, dw, padding=1, groups=c)], 1)

    rows = {
        "fixed_branch": ("`fb.fixed_branch(y, bank)`", partial(fb.fixed_branch, y, bank), [y], "reference"),
        "fixed_branch_f32": ("`fb.fixed_branch(y, bank32)`", partial(fb.fixed_branch, y, bank32), [y], "reference"),
        "module": ("`fb.FixedBranch(bank)(y)`", partial(fb.FixedBranch(bank), y), [y], "reference"),
        "raw_op": ("`torch.ops.fixedbranch.fixed_branch` (bank32)", baselines.raw_forward(y, bank32), [], "reference"),
        "depthwise_cat": ("depthwise `F.conv2d` + `torch.cat` (bank32)", partial(depthwise_cat, y), [y], "reference"),
        "conv_layer": ("`fb.FixedBranchConv2d(2, 2, 3, bank=bank, padding=1)(x)`", partial(layer, x),
                       [x, *layer.parameters()], "layer_reference"),
        "conv_depthwise_cat": ("`nn.Conv2d(2, 2, 3, padding=1)` + depthwise conv + cat",
                               lambda: depthwise_cat(conv(x)), [x, *conv.parameters()], "layer_reference"),
    }
    # The depthwise rows' channels are (c, k)-ordered: they get the same gradient in their order, and their output is
    # compared in branch-major order.
    g_ck = _reorder(g, K, c)
    impls = {key: core.autograd_impl(label, fn, wrt, g_ck if "depthwise" in key else g,
                                     METRICS if wrt else METRICS[:1], device, check=check)
             for key, (label, fn, wrt, check) in rows.items()}
    impls["reference"] = core.autograd_impl("reference", partial(fb.reference.fixed_branch, y, bank32), [y], g, (),
                                            device, check=None)
    impls["layer_reference"] = core.autograd_impl(
        "reference layer", lambda: fb.reference.fixed_branch(conv(x), bank32), [x, *conv.parameters()], g, (), device,
        check=None)
    impls["raw_op"].outputs = lambda: [baselines.raw_forward(y, bank32)()]
    for key in ("depthwise_cat", "conv_depthwise_cat"):
        outputs = impls[key].outputs
        impls[key].outputs = lambda outputs=outputs: [_reorder(o, c, K) if i == 0 else o
                                                      for i, o in enumerate(outputs())]
    return impls


def cases(preset: dict, device: torch.device):
    yield Case("1x2x4x4", {"shape": list(SHAPE), "k": K}, partial(build, device))


def table(result: dict) -> str:
    case = result["cases"][0]
    rows = case["rows"]
    columns = [m.replace("forward_nograd", "forward, no grad").replace("_", "+") for m in METRICS]

    def us(row, metric):
        t = row.get("times", {}).get(metric)
        return "-" if not t else f"{t['min_s'] * 1e6:.2f}"

    lines = [[r["label"], *(us(r, m) for m in METRICS), report.matched(r)] for r in rows.values() if "times" in r]
    ratios = [[label, *(report.ratio(rows[den], rows[num], m) for m in METRICS), ""] for num, den, label in RATIOS]
    return report.table(["call (µs, best repetition)", *columns, "matches reference"], lines + ratios)
