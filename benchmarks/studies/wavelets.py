"""Wavelet transforms, their inverses and WTConv2d against WTConv's formulation (grouped conv2d, conv_transpose2d).

WTConv (BGU-CS-VIL/WTConv, ``wtconv/util/wavelet.py``) computes one level of a 2-D discrete wavelet transform as
``F.conv2d(x, bank repeated per channel, stride=2, groups=C, padding=L//2-1)`` and its inverse as
``F.conv_transpose2d`` with the synthesis bank. Here: the transform as ``fb.fixed_branch(x, fb.filters.wavelet(name),
identity=False, order="channel", stride=2)``, the inverse as ``fb.fixed_branch_transpose(z, fb.filters.wavelet(name,
synthesis=True), identity=False, order="channel", stride=2, output_size=(H, W))``, each checked against and timed
beside WTConv's call (forward, and forward+backward with the input's gradient), with the bound of its bytes moved; and
``fixedbranch.blocks.WTConv2d`` (1 to 3 levels of Haar) against the same module inside
``fixedbranch.blocks.published_formulation()`` (WTConv2d's own code path, forward+backward with the gradients of the
input and every parameter). Beside the layer, what bounds it: its trainable depthwise convolutions and scales alone
(the base 5x5 convolution and each level's, on the same shapes, forward+backward), as published (ATen's depthwise
backward) and as the block runs them (the scale folded into the filters, the weight gradient as one fused CPU pass).
float32, 2 threads, N=8, C=96, 56x56.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import fixedbranch as fb
from fixedbranch import blocks
from fixedbranch.blocks import wavelet

from .. import baselines, core, report
from ..core import Budget, Case

METRICS = ("forward", "forward_backward")
PRESETS = {
    "quick": {"budget": Budget(0.002, 0.01, 3, 3), "point": (2, 8, 16, 16), "wavelets": ("db1", "db2"),
              "levels": (1, 2), "dram_bytes": 64 << 20, "mm_size": 256},
    "full": {"budget": Budget(0.05, 1.5, 5, 15), "point": (8, 96, 56, 56), "wavelets": ("db1", "db2"),
             "levels": (1, 2, 3), "threads": 2},
}


def _repeated(bank: torch.Tensor, channels: int) -> torch.Tensor:
    """WTConv's (4C, 1, L, L) weight: the bank repeated per channel."""
    return bank.repeat(channels, 1, 1).unsqueeze(1)


def transform_case(name: str, point: tuple, device: torch.device) -> Case:
    n, c, h, w = point
    bank64 = fb.filters.wavelet(name)
    pad = bank64.shape[-1] // 2 - 1

    def build():
        bank = bank64.float().to(device)
        weight = _repeated(bank, c)
        x = torch.randn(point, device=device).requires_grad_()
        g = torch.randn(n, 4 * c, h // 2, w // 2, device=device)
        return {
            "reference": core.autograd_impl("WTConv: grouped conv2d", lambda: F.conv2d(x, weight, stride=2, groups=c,
                                                                                     padding=pad),
                                            [x], g, METRICS, device, check=None),
            "fused": core.autograd_impl("fb.fixed_branch", lambda: fb.fixed_branch(x, bank, identity=False,
                                                                                   order="channel", stride=2),
                                        [x], g, METRICS, device),
        }

    numel = n * c * h * w
    return Case(f"transform {name}", {"what": "transform", "wavelet": name, "point": list(point)}, build,
                baselines.pass_bytes(4, numel, numel), baselines.plan_macs(bank64.float(), numel // 4), 4 * numel)


def inverse_case(name: str, point: tuple, device: torch.device) -> Case:
    n, c, h, w = point
    bank64 = fb.filters.wavelet(name, synthesis=True)
    pad = bank64.shape[-1] // 2 - 1

    def build():
        bank = bank64.float().to(device)
        weight = _repeated(bank, c)
        z = torch.randn(n, 4 * c, h // 2, w // 2, device=device).requires_grad_()
        g = torch.randn(point, device=device)
        return {
            "reference": core.autograd_impl("WTConv: grouped conv_transpose2d",
                                            lambda: F.conv_transpose2d(z, weight, stride=2, groups=c, padding=pad),
                                            [z], g, METRICS, device, check=None),
            "fused": core.autograd_impl("fb.fixed_branch_transpose",
                                        lambda: fb.fixed_branch_transpose(z, bank, identity=False, order="channel",
                                                                          stride=2, output_size=(h, w)),
                                        [z], g, METRICS, device),
        }

    numel = n * c * h * w
    return Case(f"inverse {name}", {"what": "inverse", "wavelet": name, "point": list(point)}, build,
                baselines.pass_bytes(4, numel, numel), baselines.plan_macs(bank64.float(), numel // 4), 4 * numel)


def layer_case(levels: int, point: tuple, device: torch.device) -> Case:
    n, c, h, w = point

    def build():
        module = blocks.WTConv2d(c, c, 5, wt_levels=levels).to(device)
        x = torch.randn(point, device=device).requires_grad_()
        g = torch.randn(point, device=device)
        params = [p for p in module.parameters() if p.requires_grad]

        def published():
            with blocks.published_formulation():
                return module(x)

        # What bounds the layer: its depthwise convolutions and scales, on the shapes they see, without the wavelets.
        inputs = [torch.randn(n, c, h, w, device=device).requires_grad_()]
        inputs += [torch.randn(n, 4 * c, -(-h // 2**i), -(-w // 2**i), device=device).requires_grad_()
                   for i in range(1, levels + 1)]
        convs = [(module.base_conv, module.base_scale), *zip(module.wavelet_convs, module.wavelet_scale)]

        def convolutions():
            return [scale(conv(t)) for t, (conv, scale) in zip(inputs, convs)]

        def fused_convolutions():
            return [wavelet.scaled_conv(conv, scale, t) for t, (conv, scale) in zip(inputs, convs)]

        def fwd_bwd(run):
            def call():
                outs = run()
                return torch.autograd.grad(outs, inputs + params, [o.detach() for o in outs], allow_unused=True)
            return call

        return {
            "reference": core.autograd_impl("WTConv2d, published formulation", published, [x, *params], g, METRICS,
                                            device, check=None),
            "blocks": core.autograd_impl("fixedbranch.blocks.WTConv2d", lambda: module(x), [x, *params], g,
                                         METRICS, device),
            "convs": core.Impl("its depthwise convolutions alone, as published", {
                "forward": core.calls(convolutions, device),
                "forward_backward": core.calls(fwd_bwd(convolutions), device)}, None, None),
            "fused convs": core.Impl("its depthwise convolutions alone, as the block runs them", {
                "forward": core.calls(fused_convolutions, device),
                "forward_backward": core.calls(fwd_bwd(fused_convolutions), device)}, None, None),
        }

    return Case(f"WTConv2d, {levels} level{'s' if levels > 1 else ''}",
                {"what": "WTConv2d", "wavelet": "db1", "levels": levels, "point": list(point)}, build)


def cases(preset: dict, device: torch.device):
    point = preset["point"]
    for name in preset["wavelets"]:
        yield transform_case(name, point, device)
        yield inverse_case(name, point, device)
    for levels in preset["levels"]:
        yield layer_case(levels, point, device)


def table(result: dict) -> str:
    header = ["case", "WTConv fwd ms", "fused fwd ms", "fwd speed-up", "WTConv fwd+bwd ms", "fused fwd+bwd ms",
              "fwd+bwd speed-up", "fused fwd+bwd % of bound", "depthwise convs alone fwd+bwd ms, published / block",
              "matches"]
    rows = []
    for case in result["cases"]:
        ref = case["rows"]["reference"]
        new = case["rows"].get("fused") or case["rows"]["blocks"]
        convs = [case["rows"].get(row, {}).get("times", {}).get("forward_backward") for row in ("convs", "fused convs")]
        cells = [case["case"]]
        for m in METRICS:
            cells += [report.ms(ref.get("times", {}).get(m)), report.ms(new.get("times", {}).get(m)),
                      report.ratio(new, ref, m)]
        alone = " / ".join(report.ms(t) for t in convs) if convs[0] is not None else report.ms(None)
        rows.append(cells + [report.pct(case, new, "forward_backward"), alone, report.matched(new)])
    n, c, h, w = result["cases"][0]["params"]["point"]
    return (f"float32, N={n}, C={c}, {h}x{w}; ms of the best repetition (median in parentheses); speed-up = WTConv's "
            "formulation / fixedbranch, best repetitions; fwd+bwd includes the input's gradient (and, for WTConv2d, "
            "every parameter's); matches: output and gradients against WTConv's formulation (1e-5 relative).\n\n"
            + report.table(header, rows))
