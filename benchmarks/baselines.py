"""The implementations compared, for the branch stage alone (y -> out) and for the whole layer (x -> out).

Every implementation computes ``out = cat([y, F_1*y, ..., F_K*y], 1)`` (branch-major channels, "same"
cross-correlation, ``F.pad``'s padding modes) and is differentiable in y (and, for the layer, in x, the conv weight
and bias):

- ``fused``: ``fb.fixed_branch`` / ``fb.FixedBranchConv2d``, one kernel forward and one backward.
- ``reference``: ``fb.reference.fixed_branch``: K times (F.pad + depthwise conv), then cat; ``nn.Conv2d`` before it.
- ``stacked``: what a careful user writes by hand: ONE grouped conv over the bank repeated per channel
  (weight (C*K, 1, S1, S2), groups=C, built once), whose (c, k)-ordered channels are reordered to branch-major
  inside the single cat that also places y. The padding is the conv's own when it can be (zeros, odd sizes),
  else an F.pad first.
- ``compile_reference``: ``torch.compile`` of the reference.
- ``compile_shifted``: ``torch.compile`` of the shifted-slice formulation: each filter as the weighted sum of the
  S1*S2 shifted slices of the padded y. It is pure pointwise code, so inductor fuses all K sums and the cat into
  one loop nest: the strongest compiled baseline. The taps stay a tensor input (any bank, no recompilation), as
  the fused op takes them.
- ``kornia``: ``kornia.filters.filter2d`` per filter (normalized=False, padding="same", border_type mapped from
  the padding mode), then cat. kornia splits even-size padding (k-1)//2 before, the rest after: the same
  "same" as ours.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

import fixedbranch as fb
from fixedbranch.reference import PAD_MODE, same_padding

LABELS = {
    "fused": "fused",
    "reference": "eager reference",
    "stacked": "eager stacked",
    "compile_reference": "compile(reference)",
    "compile_shifted": "compile(shifted-slice)",
    "kornia": "kornia",
}
LAYER_LABELS = {
    "fused": "FixedBranchConv2d",
    "reference": "nn.Conv2d + reference",
    "stacked": "nn.Conv2d + stacked",
    "compile_reference": "compile(nn.Conv2d + reference)",
    "compile_shifted": "compile(nn.Conv2d + shifted-slice)",
    "kornia": "nn.Conv2d + kornia",
}
COMPILED = ("compile_reference", "compile_shifted")

_KORNIA_BORDER = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}


# ---------------------------------------------------------------------------------------------------------------
# Branch-stage formulations: f(y, bank, padding_mode) -> out.


def fused_branch(y: torch.Tensor, bank: torch.Tensor, padding_mode: str) -> torch.Tensor:
    return fb.fixed_branch(y, bank, padding_mode)


def reference_branch(y: torch.Tensor, bank: torch.Tensor, padding_mode: str) -> torch.Tensor:
    return fb.reference.fixed_branch(y, bank, padding_mode)


def stacked_weight(bank: torch.Tensor, channels: int) -> torch.Tensor:
    """The bank repeated per channel for a grouped conv with groups=C: row c*K + k holds filter k."""
    k, s1, s2 = bank.shape
    return bank.unsqueeze(0).expand(channels, k, s1, s2).reshape(channels * k, 1, s1, s2).contiguous()


def stacked_branch(y: torch.Tensor, weight: torch.Tensor, padding_mode: str) -> torch.Tensor:
    n, c, h, w = y.shape
    k = weight.shape[0] // c
    s1, s2 = weight.shape[2:]
    if padding_mode == "zeros" and s1 % 2 and s2 % 2:
        z = F.conv2d(y, weight, padding=(s1 // 2, s2 // 2), groups=c)
    else:
        z = F.conv2d(F.pad(y, same_padding((s1, s2)), mode=PAD_MODE[padding_mode]), weight, groups=c)
    if y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous():
        # NHWC storage: the reorder is a transpose of the last two of (N, H, W, C, K), fused into the cat.
        z5 = z.permute(0, 2, 3, 1).reshape(n, h, w, c, k).transpose(3, 4)
        out = torch.cat([y.permute(0, 2, 3, 1).unsqueeze(3), z5], dim=3)
        return out.reshape(n, h, w, (k + 1) * c).permute(0, 3, 1, 2)
    z5 = z.view(n, c, k, h, w).transpose(1, 2)
    return torch.cat([y.unsqueeze(1), z5], dim=1).view(n, (k + 1) * c, h, w)


def shifted_slice_branch(y: torch.Tensor, bank: torch.Tensor, padding_mode: str) -> torch.Tensor:
    h, w = y.shape[-2:]
    k, s1, s2 = bank.shape
    yp = F.pad(y, same_padding((s1, s2)), mode=PAD_MODE[padding_mode])
    parts = [y]
    for f in range(k):
        acc = None
        for i in range(s1):
            for j in range(s2):
                term = bank[f, i, j] * yp[:, :, i : i + h, j : j + w]
                acc = term if acc is None else acc + term
        parts.append(acc)
    return torch.cat(parts, dim=1)


def kornia_branch(y: torch.Tensor, bank: torch.Tensor, padding_mode: str) -> torch.Tensor:
    import kornia

    border = _KORNIA_BORDER[padding_mode]
    parts = [y]
    for f in range(bank.shape[0]):
        parts.append(kornia.filters.filter2d(y, bank[f : f + 1], border_type=border, normalized=False, padding="same"))
    return torch.cat(parts, dim=1)


def branch_impls(bank: torch.Tensor, channels: int, padding_mode: str, compile_: bool) -> dict[str, Callable]:
    """y -> out callables for one point; the compiled ones are compiled lazily on their first call."""
    impls = {
        "fused": partial(fused_branch, bank=bank, padding_mode=padding_mode),
        "reference": partial(reference_branch, bank=bank, padding_mode=padding_mode),
        "stacked": partial(stacked_branch, weight=stacked_weight(bank, channels), padding_mode=padding_mode),
        "kornia": partial(kornia_branch, bank=bank, padding_mode=padding_mode),
    }
    if compile_:
        impls["compile_reference"] = partial(compiled(reference_branch), bank=bank, padding_mode=padding_mode)
        impls["compile_shifted"] = partial(compiled(shifted_slice_branch), bank=bank, padding_mode=padding_mode)
    return impls


def compiled(fn: Callable) -> Callable:
    # dynamic=False: one static graph per point, as a user with fixed shapes gets; the suite resets dynamo
    # between points so that recompilations never hit the cache limit and fall back to eager.
    return torch.compile(fn, dynamic=False)


# ---------------------------------------------------------------------------------------------------------------
# Whole layer: conv (3x3, padding 1) + branches.


class ConvThenBranch(nn.Module):
    """``branch(conv(x))``: nn.Conv2d followed by an unfused branch stage."""

    def __init__(self, conv: nn.Conv2d, branch: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.conv = conv
        self.branch = branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch(self.conv(x))


def layer_impls(
    conv: nn.Conv2d, bank: torch.Tensor, padding_mode: str, compile_: bool
) -> dict[str, tuple[Callable, list[torch.Tensor]]]:
    """x -> out callables for one point, each with the parameters whose gradients it computes."""
    channels = conv.out_channels
    fused = fb.FixedBranchConv2d.from_conv2d(conv, bank=bank, filter_padding_mode=padding_mode)
    fused = fused.to(memory_format=_format_of(conv.weight))
    branches = branch_impls(bank, channels, padding_mode, compile_=False)
    impls: dict[str, tuple[Callable, list[torch.Tensor]]] = {"fused": (fused, [fused.weight, fused.bias])}
    for key in ("reference", "stacked", "kornia"):
        impls[key] = (ConvThenBranch(conv, branches[key]), [conv.weight, conv.bias])
    if compile_:
        for key, fn in (("compile_reference", reference_branch), ("compile_shifted", shifted_slice_branch)):
            module = ConvThenBranch(conv, partial(fn, bank=bank, padding_mode=padding_mode))
            impls[key] = (compiled(module), [conv.weight, conv.bias])
    return impls


def _format_of(t: torch.Tensor) -> torch.memory_format:
    if t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


# ---------------------------------------------------------------------------------------------------------------
# The registered operators called directly (no autograd, no Python front end), and the banks the studies use.


def raw_forward(y: torch.Tensor, bank: torch.Tensor, padding_mode: str = "zeros", identity: bool = True,
                order: str = "branch", stride: int = 1) -> Callable[[], torch.Tensor]:
    """The forward operator as a zero-argument call; ``bank`` must be in y's dtype."""
    op, yd = torch.ops.fixedbranch.fixed_branch, y.detach()
    return partial(op, yd, bank, padding_mode, [], identity, order, [stride, stride])


def raw_backward(g: torch.Tensor, bank: torch.Tensor, size: tuple[int, int], padding_mode: str = "zeros",
                 identity: bool = True, order: str = "branch", stride: int = 1) -> Callable[[], torch.Tensor]:
    """The backward operator (dL/dout -> dL/dy) as a zero-argument call."""
    op = torch.ops.fixedbranch._fixed_branch_backward
    return partial(op, g, bank, padding_mode, [], identity, order, [stride, stride], list(size))


# The standard point's bank, then the 3x3 filters that extend it for the K sweep: banks of the kind predefined-filter
# networks use.
STANDARD_BANK = ("sobel_x", "sobel_y", "laplacian4", "gaussian(3,1.0)")
_MORE_3X3 = ("scharr_x", "scharr_y", "prewitt_x", "prewitt_y", "laplacian8")


def make_bank(k: int, s: int) -> tuple[torch.Tensor, list[str]]:
    """K dense-enough S x S filters in float64 and their names: the standard four (and more classic ones, then the
    DCT basis) for 3x3, else Gaussian, LoG and Gabor filters, so that no size gets a mostly-zero bank."""
    if s == 3:
        f = fb.filters
        specs = [f.sobel_x(), f.sobel_y(), f.laplacian4(), f.gaussian(3, 1.0)] + [getattr(f, n)() for n in _MORE_3X3]
        specs += list(f.dct(3)[1:])
        names = [*STANDARD_BANK, *_MORE_3X3] + [f"dct3[{i}]" for i in range(1, 9)]
        if k > len(specs):
            raise ValueError(f"make_bank: at most {len(specs)} 3x3 filters, got k={k}")
        return fb.filters.bank(*specs[:k]), names[:k]
    sigma = max(s / 6.0, 0.5)
    specs = [fb.filters.gaussian(s, sigma), fb.filters.log(s, sigma)]
    names = [f"gaussian({s},{sigma:.2f})", f"log({s},{sigma:.2f})"]
    for i in range(k - 2):
        theta = math.pi * i / max(k - 2, 1)
        specs.append(fb.filters.gabor(s, s / 4.0, theta, s / 2.0))
        names.append(f"gabor({s},theta={theta:.2f})")
    return fb.filters.bank(*specs[:k]), names[:k]


def pass_bytes(itemsize: int, y_numel: int, out_numel: int) -> dict[str, int]:
    """Fewest bytes each pass must move: forward reads y and writes out; backward reads dL/dout and writes dL/dy."""
    one = itemsize * (y_numel + out_numel)
    return {"forward": one, "backward": one, "forward_backward": 2 * one}


def plan_macs(bank: torch.Tensor, out_pixels: int) -> dict[str, int]:
    """Multiply-adds of each pass: the bank plan's taps per output pixel (fixedbranch.bank_plan, planned in the dtype
    the operators round the bank to) times the output pixels of one branch; the backward's adjoint does as many."""
    one = fb.bank_plan(bank).plan_taps * out_pixels
    return {"forward": one, "backward": one, "forward_backward": 2 * one}
