"""Pure-PyTorch reference of the fixed-filter branch ops: the ground truth for tests, the baseline for benchmarks.

Everything here is ordinary autograd over ``F.pad``, a depthwise ``F.conv2d`` per filter and ``torch.cat`` (the
transpose: a grouped ``F.conv_transpose2d`` and the adjoint of each padding mode, written out). It
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
    "fixed_branch_transpose",
    "pad_adjoint",
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



def _axis_pad(dim: int, before: int, after: int) -> tuple[int, ...]:
    """``F.pad``'s pad tuple for one axis of an (N, C, H, W) tensor: dim 3 is W, dim 2 is H."""
    return (before, after) if dim == 3 else (0, 0, before, after)


def _pad_adjoint_1d(g: torch.Tensor, dim: int, before: int, after: int, padding_mode: str) -> torch.Tensor:
    """The adjoint of padding one axis by (before, after): each padded row's gradient goes back to the source row
    that ``F.pad`` copied into it (nowhere for "zeros")."""
    n = g.shape[dim] - before - after
    head, body, tail = g.narrow(dim, 0, before), g.narrow(dim, before, n), g.narrow(dim, before + n, after)
    if padding_mode == "zeros":
        return body
    if padding_mode == "circular":  # padded row -t is source n - t; padded row n - 1 + t is source t - 1
        return body + F.pad(head, _axis_pad(dim, n - before, 0)) + F.pad(tail, _axis_pad(dim, 0, n - after))
    if padding_mode == "replicate":  # every padded row copies the edge row
        return (body + F.pad(head.sum(dim, keepdim=True), _axis_pad(dim, 0, n - 1))
                + F.pad(tail.sum(dim, keepdim=True), _axis_pad(dim, n - 1, 0)))
    assert padding_mode == "reflect", padding_mode
    # Padded row -t (t = 1..before) is source t; padded row n - 1 + t (t = 1..after) is source n - 1 - t.
    return (body + F.pad(head.flip(dim), _axis_pad(dim, 1, n - 1 - before))
            + F.pad(tail.flip(dim), _axis_pad(dim, n - 1 - after, 1)))


def pad_adjoint(g: torch.Tensor, pads: tuple[int, int, int, int], padding_mode: str) -> torch.Tensor:
    """The adjoint of ``F.pad(y, pads, mode=PAD_MODE[padding_mode])``: a gradient of the padded image (N, C, Hp, Wp)
    to one of y (N, C, H, W). ``pads`` is in ``F.pad`` order (left, right, top, bottom). The 2-D padding pads the
    rows and then the columns (either order gives the same image), so its adjoint folds the columns and then the
    rows."""
    left, right, top, bottom = pads
    return _pad_adjoint_1d(_pad_adjoint_1d(g, 3, left, right, padding_mode), 2, top, bottom, padding_mode)


def _split_branches(z: torch.Tensor, branches: int, order: str) -> list[torch.Tensor]:
    """(N, B*C, H', W') in ``order`` -> the B branches, each (N, C, H', W')."""
    n, bc, h, w = z.shape
    if order == "branch":
        return list(z.reshape(n, branches, bc // branches, h, w).unbind(1))
    return list(z.reshape(n, bc // branches, branches, h, w).unbind(2))


def fixed_branch_transpose(
    z: torch.Tensor,
    bank: torch.Tensor,
    padding_mode: str = "zeros",
    identity: bool = True,
    order: str = "branch",
    stride=1,
    output_size=None,
) -> torch.Tensor:
    """Reference of :func:`fixedbranch.fixed_branch_transpose`: the adjoint of :func:`fixed_branch`.

    The identity's adjoint puts ``z_0`` back on every stride-th pixel of a zero image; each filter's adjoint is a
    transposed convolution (all filters at once: ``F.conv_transpose2d`` with ``groups=C`` over the channel-major
    filter branches, which sums them) onto the padded image, folded back by the adjoint of the padding.

    Args:
        z: (N, B*C, H', W'), laid out as ``identity`` and ``order`` lay out :func:`fixed_branch`'s output.
        bank: (K, S1, S2); rounded to z's dtype, never differentiated.
        padding_mode, identity, order, stride: as in :func:`fixed_branch`.
        output_size: (H, W) of fixed_branch's input; by default z's own (valid only with stride 1).

    Returns:
        (N, C, H, W) in z's memory format.
    """
    sh, sw = pair(stride)
    bank = bank.detach().to(z.dtype)
    k, s1, s2 = bank.shape
    n, bc, zh, zw = z.shape
    branches = k + int(identity)
    c = bc // branches
    h, w = (zh, zw) if output_size is None else tuple(output_size)
    parts = _split_branches(z, branches, order)
    pads = same_padding((s1, s2))
    left, right, top, bottom = pads
    hp, wp = h + top + bottom, w + left + right
    # The filter branches channel-major, (N, C*K, H', W'): one grouped transposed convolution per channel; the
    # output_padding restores the padded rows and columns that no stride-th output reaches.
    filtered = torch.stack(parts[int(identity):], dim=2).reshape(n, c * k, zh, zw)
    weight = bank.repeat(c, 1, 1).unsqueeze(1)  # (C*K, 1, S1, S2): weight[c*K + k] = F_k
    output_padding = (hp - s1 - (zh - 1) * sh, wp - s2 - (zw - 1) * sw)
    padded = F.conv_transpose2d(filtered, weight, stride=(sh, sw), groups=c, output_padding=output_padding)
    y = pad_adjoint(padded, pads, padding_mode)
    if identity:
        spread = z.new_zeros(n, c, h, w)
        spread[:, :, ::sh, ::sw] = parts[0]
        y = y + spread
    if z.is_contiguous(memory_format=torch.channels_last) and not z.is_contiguous():
        return y.contiguous(memory_format=torch.channels_last)
    return y.contiguous()
