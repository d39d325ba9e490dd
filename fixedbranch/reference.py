"""Pure-PyTorch reference of the fixed-filter branch ops: the ground truth for tests, the baseline for benchmarks.

Everything here is ordinary autograd over ``F.pad``, a depthwise ``F.conv2d`` per filter and ``torch.cat``. It
needs only torch, is deliberately simple, and has the same signatures as the fused ops in :mod:`fixedbranch.ops`.

Semantics (see DESIGN.md): each filter of the bank is applied to every channel as a cross-correlation with
"same" output size; the padding is top = (S1-1)//2, bottom = S1-1-top, left = (S2-1)//2, right = S2-1-left,
with ``F.pad``'s meaning of ``padding_mode``. ``out = cat([y, F_1*y, ..., F_K*y], 1)`` (branch-major).
A branch listed in ``stop_gradient`` is computed from ``y.detach()``: unchanged forward, no gradient to y.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

__all__ = ["same_padding", "fixed_branch", "fixed_branch_conv2d", "branch_contributions"]

_PAD_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}


def same_padding(filter_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The "same" padding of a filter of size (S1, S2), in ``F.pad`` order (left, right, top, bottom)."""
    s1, s2 = filter_size
    top, left = (s1 - 1) // 2, (s2 - 1) // 2
    return left, s2 - 1 - left, top, s1 - 1 - top


def _branch(y: torch.Tensor, filt: torch.Tensor, padding_mode: str) -> torch.Tensor:
    c = y.shape[1]
    yp = F.pad(y, same_padding(tuple(filt.shape)), mode=_PAD_MODE[padding_mode])
    weight = filt.to(y.dtype).expand(c, 1, *filt.shape)
    return F.conv2d(yp, weight, groups=c)


def fixed_branch(
    y: torch.Tensor,
    bank: torch.Tensor,
    padding_mode: str = "zeros",
    stop_gradient: Iterable[int] = (),
) -> torch.Tensor:
    """Reference of :func:`fixedbranch.fixed_branch`: ``cat([y, F_1*y, ..., F_K*y], 1)``.

    Args:
        y: feature maps, (N, C, H, W).
        bank: fixed filters, (K, S1, S2); never differentiated.
        padding_mode: "zeros", "reflect", "replicate" or "circular", as ``F.pad``.
        stop_gradient: branch indices (0 = identity) whose gradient does not reach ``y``.

    Returns:
        (N, (K+1)*C, H, W), branch k in channels [k*C, (k+1)*C).
    """
    stop = set(stop_gradient)
    bank = bank.detach()
    parts = [y.detach() if 0 in stop else y]
    for k in range(bank.shape[0]):
        src = y.detach() if (k + 1) in stop else y
        parts.append(_branch(src, bank[k], padding_mode))
    out = torch.cat(parts, dim=1)
    if y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous():
        out = out.contiguous(memory_format=torch.channels_last)
    return out


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
) -> torch.Tensor:
    """Reference of :func:`fixedbranch.fixed_branch_conv2d`: ``fixed_branch(F.conv2d(x, weight, bias, ...), bank)``.

    ``padding_mode`` is the filters' padding; the convolution pads with zeros as ``F.conv2d`` does.
    """
    y = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    return fixed_branch(y, bank, padding_mode, stop_gradient)


def branch_contributions(grad_output: torch.Tensor, bank: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """Reference of :func:`fixedbranch.branch_contributions`: each branch's share of dL/dy, by autograd.

    Args:
        grad_output: dL/dout, (N, (K+1)*C, H, W).
        bank: (K, S1, S2).
        padding_mode: as in :func:`fixed_branch`.

    Returns:
        (K+1, N, C, H, W) whose entry k is F_k^T g_k (entry 0 is g_0); the entries sum to dL/dy.
    """
    k1 = bank.shape[0] + 1
    n, kc, h, w = grad_output.shape
    c = kc // k1
    with torch.enable_grad():
        y = torch.zeros(n, c, h, w, dtype=grad_output.dtype, device=grad_output.device, requires_grad=True)
        out = fixed_branch(y, bank, padding_mode)
        shares = []
        for k in range(k1):
            g = torch.zeros_like(out)
            g[:, k * c : (k + 1) * c] = grad_output[:, k * c : (k + 1) * c]
            shares.append(torch.autograd.grad(out, y, g, retain_graph=k + 1 < k1)[0])
    return torch.stack(shares)
