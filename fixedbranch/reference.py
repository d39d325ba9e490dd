"""Pure-PyTorch reference of the fixed-filter branch ops: the ground truth for tests, the baseline for benchmarks.

Everything here is ordinary autograd over ``F.pad``, a depthwise ``F.conv2d`` per filter and ``torch.cat``. It
needs only torch, is deliberately simple, and has the same signatures as the fused ops in :mod:`fixedbranch.ops`.

Semantics (docs/design.md, "Semantics"): each filter of the bank is applied to every channel as a
cross-correlation with "same" padding, top = (S1-1)//2, bottom = S1-1-top, left = (S2-1)//2, right = S2-1-left,
with ``F.pad``'s meaning of ``padding_mode``, sampled every ``stride``-th pixel. The output holds the identity
(``y[:, :, ::sH, ::sW]``, unless ``identity=False``) and then each filter's map, in branch-major order
(``out[:, b*C + c]``) or channel-major order (``out[:, c*B + b]``). A branch listed in ``stop_gradient`` is computed
from ``y.detach()``: unchanged forward, no gradient to y.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

__all__ = [
    "PADDING_MODES",
    "ORDERS",
    "pair",
    "same_padding",
    "strided_size",
    "fixed_branch",
    "fixed_branch_conv2d",
    "branch_contributions",
]

# The padding modes and their F.pad names; every other module takes them from here.
PAD_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}
PADDING_MODES = tuple(PAD_MODE)
# Output channel orders: "branch" puts branch b of channel c at b*C + c, "channel" at c*B + b.
ORDERS = ("branch", "channel")


def same_padding(filter_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The "same" padding of a filter of size (S1, S2), in ``F.pad`` order (left, right, top, bottom)."""
    s1, s2 = filter_size
    top, left = (s1 - 1) // 2, (s2 - 1) // 2
    return left, s2 - 1 - left, top, s1 - 1 - top


def strided_size(size: int, stride: int) -> int:
    """Pixels along an axis of ``size`` pixels sampled every ``stride``-th: (size - 1) // stride + 1."""
    return (size - 1) // stride + 1


def pair(value) -> tuple[int, int]:
    """An int or a pair as a pair: ``3`` -> ``(3, 3)``, ``(1, 2)`` -> ``(1, 2)``."""
    return (value, value) if isinstance(value, int) else (value[0], value[1])


def _branch(y: torch.Tensor, filt: torch.Tensor, padding_mode: str, stride: tuple[int, int]) -> torch.Tensor:
    c = y.shape[1]
    yp = F.pad(y, same_padding(tuple(filt.shape)), mode=PAD_MODE[padding_mode])
    weight = filt.to(y.dtype).expand(c, 1, *filt.shape)
    return F.conv2d(yp, weight, stride=stride, groups=c)


def _interleave(out: torch.Tensor, branches: int) -> torch.Tensor:
    """Branch-major (N, B*C, H, W) to channel-major: channel c*B + b holds branch b of channel c."""
    n, bc, h, w = out.shape
    return out.reshape(n, branches, bc // branches, h, w).transpose(1, 2).reshape(n, bc, h, w)


def fixed_branch(
    y: torch.Tensor,
    bank: torch.Tensor,
    padding_mode: str = "zeros",
    stop_gradient: Iterable[int] = (),
    identity: bool = True,
    order: str = "branch",
    stride=1,
) -> torch.Tensor:
    """Reference of :func:`fixedbranch.fixed_branch`: ``cat([y, F_1*y, ..., F_K*y], 1)``.

    Args:
        y: feature maps, (N, C, H, W).
        bank: fixed filters, (K, S1, S2); rounded to y's dtype, never differentiated.
        padding_mode: "zeros", "reflect", "replicate" or "circular", as ``F.pad``.
        stop_gradient: branch indices (0 = identity, k = filter k) whose gradient does not reach ``y``.
        identity: whether branch 0 (y itself) is part of the output.
        order: "branch" (``out[:, b*C + c]``) or "channel" (``out[:, c*B + b]``).
        stride: an int or a pair; every branch is sampled every stride-th pixel.

    Returns:
        (N, B*C, H', W') with B = K+1 (K without the identity), H' = (H-1)//sH + 1, W' = (W-1)//sW + 1, in y's
        memory format.
    """
    stop = set(stop_gradient)
    stride = pair(stride)
    bank = bank.detach()
    parts = []
    if identity:
        parts.append((y.detach() if 0 in stop else y)[:, :, :: stride[0], :: stride[1]])
    for k in range(bank.shape[0]):
        src = y.detach() if (k + 1) in stop else y
        parts.append(_branch(src, bank[k], padding_mode, stride))
    out = torch.cat(parts, dim=1)
    if order == "channel":
        out = _interleave(out, len(parts))
    if y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous():
        return out.contiguous(memory_format=torch.channels_last)
    return out.contiguous()


def fixed_branch_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    bank: torch.Tensor,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    padding_mode: str = "zeros",
    stop_gradient: Iterable[int] = (),
    identity: bool = True,
    order: str = "branch",
    filter_stride=1,
) -> torch.Tensor:
    """Reference of :func:`fixedbranch.fixed_branch_conv2d`: ``fixed_branch(F.conv2d(x, weight, bias, ...), bank)``.

    ``stride`` is the convolution's and ``filter_stride`` the branches'; ``padding_mode`` is the filters' padding
    (the convolution pads with zeros, as ``F.conv2d`` does).
    """
    y = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    return fixed_branch(y, bank, padding_mode, stop_gradient, identity, order, filter_stride)


def branch_contributions(
    grad_output: torch.Tensor,
    bank: torch.Tensor,
    padding_mode: str = "zeros",
    identity: bool = True,
    order: str = "branch",
    stride=1,
    input_size=None,
) -> torch.Tensor:
    """Reference of :func:`fixedbranch.branch_contributions`: each output branch's share of dL/dy, by autograd.

    Args:
        grad_output: dL/dout, (N, B*C, H', W') in the layout ``identity`` and ``order`` give the output.
        bank: (K, S1, S2).
        padding_mode, identity, order, stride: as in :func:`fixed_branch`.
        input_size: y's (H, W); needed when stride > 1, where H' does not determine H.

    Returns:
        (B, N, C, H, W) whose entry b is output branch b's share (F_k^T g_k, or g_0 for the identity); the entries
        sum to dL/dy.
    """
    branches = bank.shape[0] + int(identity)
    n, bc, h, w = grad_output.shape
    c = bc // branches
    size = (h, w) if input_size is None else tuple(input_size)
    with torch.enable_grad():
        y = torch.zeros(n, c, *size, dtype=grad_output.dtype, device=grad_output.device, requires_grad=True)
        out = fixed_branch(y, bank, padding_mode, (), identity, order, stride)
        slots = torch.arange(bc, device=grad_output.device).view(1, bc, 1, 1)
        slot_branch = slots // c if order == "branch" else slots % branches
        shares = []
        for b in range(branches):
            g = torch.where(slot_branch == b, grad_output, torch.zeros((), dtype=grad_output.dtype,
                                                                         device=grad_output.device))
            shares.append(torch.autograd.grad(out, y, g, retain_graph=b + 1 < branches)[0])
    return torch.stack(shares)
