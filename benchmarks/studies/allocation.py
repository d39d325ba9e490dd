"""What a fresh output costs the fused CPU operators, against torch's own clone of a tensor of the same size.

A large output is new memory whose pages fault in on first write; the fused kernels fault them in themselves
(csrc/cpu/output_memory.cpp). `clone` pays the faults too, so "fused / clone" says whether the operator costs more
than merely producing a tensor of its output's size. y = 4 x C x 96 x 96 float32, the standard four 3x3 filters
(output 5 times y), C chosen for outputs of about 8 to 200 MiB. Rows per size: the forward (fb.fixed_branch under
no_grad) against a clone of the output's size; the backward operator (dL/dout -> dL/dy) against clones of dL/dy's and
of dL/dout's size; forward+backward through autograd against the two clones of the output's and dL/dy's sizes. Each
repetition is one call (so every call allocates afresh), the rows taken in turn. The allocator is the process's: run
it as it comes, with --warm-malloc, or under LD_PRELOAD (jemalloc, tcmalloc), each writing its own file.
"""

from __future__ import annotations

from functools import partial

import torch

import fixedbranch as fb

from .. import baselines, core, report
from ..core import Budget, Case

N, H, K = 4, 96, 4
LEGEND = "ms: median over single calls, each allocating its output afresh (the page faults are the point)."
PRESETS = {
    "quick": {"budget": Budget(0.0, 0.0, 3, 3), "channels": (4, 12), "dram_bytes": 64 << 20, "mm_size": 256},
    # outputs of 8.4, 35.9, 71.7, 144.1 and 199.7 MiB
    "full": {"budget": Budget(0.0, 0.0, 15, 15), "channels": (12, 51, 102, 205, 284), "threads": 2},
}


def size_case(c: int, device: torch.device) -> Case:
    bank64, names = baselines.make_bank(K, 3)

    def build():
        bank = bank64.float().to(device)
        y = torch.randn(N, c, H, H, device=device)
        g = torch.randn(N, (K + 1) * c, H, H, device=device)
        leaf = y.clone().requires_grad_()
        forward = partial(fb.fixed_branch, y, bank)
        backward = baselines.raw_backward(g, bank, (H, H))
        fused = core.autograd_impl("fused", partial(fb.fixed_branch, leaf, bank), [leaf], g, ("forward_backward",),
                                   device)
        fused.blocks.update(forward=core.calls(forward, device, no_grad=True), backward=core.calls(backward, device))
        reference = core.autograd_impl("reference", partial(fb.reference.fixed_branch, leaf, bank), [leaf], g, (),
                                       device, check=None)
        return {"fused": fused, "reference": reference,
                "clone_out": core.plain_impl("clone, output's size", {"forward": g.clone}, device),
                "clone_dy": core.plain_impl("clone, dL/dy's size", {"backward": y.clone}, device),
                "clone_g": core.plain_impl("clone, dL/dout's size", {"backward": g.clone}, device)}

    return Case(f"{N * (K + 1) * c * H * H * 4 / 2**20:.1f} MiB out", {"y": [N, c, H, H], "bank": names}, build)


def cases(preset: dict, device: torch.device):
    for c in preset["channels"]:
        yield size_case(c, device)


def _ms(row: dict, metric: str, stat: str = "median_s") -> float:
    return row["times"][metric][stat] * 1e3


def table(result: dict) -> str:
    header = ["output", "forward ms", "clone ms", "forward / clone", "backward ms", "clone dL/dout ms",
              "backward / clone dL/dout", "fwd+bwd ms", "clones out + dL/dy ms", "fwd+bwd / clones",
              "matches reference"]
    rows = []
    for case in result["cases"]:
        r = case["rows"]
        fwd, bwd, both = (_ms(r["fused"], m) for m in ("forward", "backward", "forward_backward"))
        clone_out, clone_g = _ms(r["clone_out"], "forward"), _ms(r["clone_g"], "backward")
        clones = clone_out + _ms(r["clone_dy"], "backward")
        rows.append([case["case"], f"{fwd:.1f}", f"{clone_out:.1f}", f"{fwd / clone_out:.2f}×", f"{bwd:.1f}",
                     f"{clone_g:.1f}", f"{bwd / clone_g:.2f}×", f"{both:.1f}", f"{clones:.1f}",
                     f"{both / clones:.2f}×", report.matched(r["fused"])])
    return report.table(header, rows)
