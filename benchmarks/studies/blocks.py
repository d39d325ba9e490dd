"""The published blocks (fixedbranch.blocks) against their published formulation, forward and forward+backward.

Each case builds one block of fixedbranch.blocks and times the block itself against the same module inside
``fixedbranch.blocks.published_formulation()``, which runs the published code's grouped convolutions (the same
parameters, so the check compares like with like): forward in evaluation mode under no_grad, and forward+backward in
training mode with the gradients of the input and of every trainable parameter. The cases are the networks' own
sizes: harmonic networks' 3x3 DCT block and 7x7 stride-2 stem (``Harm2d(use_bn=True)``, fused in training; in
evaluation mode the block folds its bank, BatchNorm and 1x1 convolution into one convolution), a 3x3 ``Harm2d``
without BatchNorm and one with dilation 2 (published formulation: the speed-up is 1 up to noise); pre-defined filter
networks' module with every filter on every channel (f = 16, fused), PFNet's stride-2 first module, and a module with
one filter per channel (f = 1, published formulation). float32, 2 threads.
"""

from __future__ import annotations

import torch

from fixedbranch import blocks

from .. import core, report
from ..core import Budget, Case

METRICS = ("forward_nograd", "forward_backward")
# name: (block, positional arguments, keyword arguments, input shape (N, C, H, W))
CASES = {
    "harmonic 3x3 block": ("Harm2d", (32, 32, 3), {"padding": 1, "use_bn": True}, (8, 32, 56, 56)),
    "harmonic 7x7/2 stem": ("Harm2d", (3, 64, 7), {"stride": 2, "padding": 3, "use_bn": True}, (8, 3, 224, 224)),
    "harmonic 3x3, use_bn=False": ("Harm2d", (32, 32, 3), {"padding": 1}, (8, 32, 56, 56)),
    "harmonic 3x3, dilation 2": ("Harm2d", (32, 32, 3), {"padding": 2, "dilation": 2, "use_bn": True},
                                 (8, 32, 56, 56)),
    "PFM, f=16": ("PredefinedFilterModule", (32, 32, "All", 4), {"f": 16}, (8, 32, 56, 56)),
    "PFNet first module, f=16, stride 2": ("PredefinedFilterModule", (3, 64, "All", 4), {"f": 16, "stride": 2},
                                           (8, 3, 224, 224)),
    "PFM, f=1": ("PredefinedFilterModule", (64, 64, "All", 4), {"f": 1}, (8, 64, 56, 56)),
}
PRESETS = {
    "quick": {"budget": Budget(0.002, 0.01, 3, 3), "scale": 8, "dram_bytes": 64 << 20, "mm_size": 256},
    "full": {"budget": Budget(0.05, 1.5, 5, 15), "scale": 1, "threads": 2},
}


def block_case(name: str, spec: tuple, scale: int, device: torch.device) -> Case:
    cls, args, kwargs, shape = spec
    if scale > 1:  # the quick preset: a quarter of the channels and 1/scale of the size, at most 2 images
        args = (max(3, args[0] // 4), max(3, args[1] // 4), *args[2:])
        shape = (2, args[0], shape[2] // scale, shape[3] // scale)

    def build():
        module = getattr(blocks, cls)(*args, **kwargs).to(device)
        x = torch.randn(shape, device=device).requires_grad_()
        params = [p for p in module.parameters() if p.requires_grad]
        with torch.no_grad():
            g = torch.randn_like(module(x))

        def impl(label: str, published: bool) -> core.Impl:
            def train():
                module.train()
                if published:
                    with blocks.published_formulation():
                        return module(x)
                return module(x)

            def evaluate():
                module.eval()
                with torch.no_grad():
                    if published:
                        with blocks.published_formulation():
                            return module(x)
                    return module(x)

            def forward_backward():
                return torch.autograd.grad(train(), [x, *params], g)

            return core.Impl(label, {"forward_nograd": core.calls(evaluate, device),
                                     "forward_backward": core.calls(forward_backward, device)},
                             lambda: [train().detach(), *forward_backward()], None if published else "reference")

        return {"reference": impl("published formulation", True), "blocks": impl(f"fixedbranch.blocks.{cls}", False)}

    params = {"block": cls, "args": list(args), "kwargs": kwargs, "input": list(shape),
              "fused": getattr(blocks, cls)(*args, **kwargs).fused}
    return Case(name, params, build)


def cases(preset: dict, device: torch.device):
    for name, spec in CASES.items():
        yield block_case(name, spec, preset["scale"], device)


def _input(p: dict) -> str:
    n, c, h, w = p["input"]
    return f"N={n}, {c}->{p['args'][1]}, {h}x{w}"


def table(result: dict) -> str:
    header = ["block", "case", "path", "published fwd ms", "blocks fwd ms", "fwd speed-up", "published fwd+bwd ms",
              "blocks fwd+bwd ms", "fwd+bwd speed-up", "matches"]
    rows = []
    for case in result["cases"]:
        p, ref, blk = case["params"], case["rows"]["reference"], case["rows"]["blocks"]
        times = [(report.ms(ref.get("times", {}).get(m)), report.ms(blk.get("times", {}).get(m)),
                  report.ratio(blk, ref, m)) for m in METRICS]
        rows.append([case["case"], _input(p), "fused" if p["fused"] else "published", *times[0], *times[1],
                     report.matched(blk)])
    return ("float32; ms of the best repetition (median in parentheses); speed-up = published / blocks, best "
            "repetitions. fwd: evaluation mode, no_grad; fwd+bwd: training mode, gradients of the input and every "
            "trainable parameter; matches: the block's output and gradients against the published formulation's "
            "(1e-5 relative).\n\n" + report.table(header, rows))
