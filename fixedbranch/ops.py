"""Python front end of the fused operators: the public functions, fake (meta) kernels and autograd formulas.

The operators (``torch.ops.fixedbranch.*``, csrc/fixed_branch.cpp) own the contract: they check every tensor and
option themselves, with messages that name the argument (docs/design.md, "Bad input"), so a raw operator call and
the public function accept, reject and compute alike. Here each public function adds only what C++ cannot
express: TypeErrors for non-tensor arguments, a bank that requires grad, and normalising collections (a stop set
given as an int or a set, a stride given as an int). ``register_fake`` and ``register_autograd`` make the
operators work under ``torch.compile``, ``torch.export`` and ``torch.library.opcheck`` without graph breaks.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch._prims_common import suggest_memory_format

from . import export as _export
from .arguments import check_bank, check_int, check_pair, check_tensor, stop_list
from .reference import pair, strided_size

__all__ = ["fixed_branch", "fixed_branch_conv2d", "fixed_branch_transpose", "branch_contributions"]

_ops = torch.ops.fixedbranch
# The overloads themselves: calling the packet (torch.ops.fixedbranch.fixed_branch) resolves the overload per call.
_fixed_branch_op = _ops.fixed_branch.default
_fixed_branch_conv2d_op = _ops.fixed_branch_conv2d.default
_backward_op = _ops._fixed_branch_backward.default
_transpose_op = _ops.fixed_branch_transpose.default


# ----------------------------------------------------------------------------------------------------------------
# What the operators cannot check of the transpose's output_size.


def _size_pair(fn: str, name: str, value) -> list:
    """An image size (H, W): a pair of ints (or of symbolic sizes, as ``x.shape[2:]`` under torch.compile)."""
    pair = list(value) if isinstance(value, (tuple, list, torch.Size)) else None
    if pair is None or len(pair) != 2 or not all(
        isinstance(v, (int, torch.SymInt)) and not isinstance(v, bool) for v in pair
    ):
        raise TypeError(f"{fn}: expected {name} to be a pair of ints (H, W), got {value!r}")
    return pair


# ----------------------------------------------------------------------------------------------------------------
# Public functions.


def fixed_branch(
    y: torch.Tensor,
    bank: torch.Tensor,
    padding_mode: str = "zeros",
    stop_gradient: Iterable[int] = (),
    identity: bool = True,
    order: str = "branch",
    stride=1,
) -> torch.Tensor:
    r"""Applies a bank of fixed filters to every channel and concatenates: ``cat([y, F_1*y, ..., F_K*y], 1)``.

    One fused kernel reads ``y`` once and writes every output slice; the backward reads the gradient once and
    writes :math:`\partial L/\partial y = g_0 + \sum_k F_k^T g_k` once (the "accumulative back-propagation").

    Args:
        y: feature maps, (N, C, H, W), float64/float32/float16/bfloat16, any strides.
        bank: fixed filters, (K, S1, S2), on y's device; rounded to y's dtype. Must not require grad.
        padding_mode: border handling of each filter: "zeros", "reflect", "replicate" or "circular" (as F.pad);
            filters are cross-correlations with "same" output size.
        stop_gradient: branch indices (0 = identity, k = filter k) that send no gradient to y.
        identity: whether branch 0, y itself, is part of the output.
        order: "branch" puts branch b of channel c at ``b*C + c`` (torch.cat's order), "channel" at ``c*B + b``
            (a grouped convolution with a repeated bank, as harmonic and predefined-filter networks use).
        stride: an int or a pair: every branch sampled every stride-th pixel, exactly
            ``F.conv2d(pad(y), F_k, stride=stride)``; the identity is ``y[:, :, ::sH, ::sW]``.

    Returns:
        (N, B*C, H', W') in y's memory format, B = K+1 (K without the identity), H' = (H-1)//sH + 1.

    Example:
        >>> import fixedbranch as fb
        >>> y = torch.arange(9.0).reshape(1, 1, 3, 3)
        >>> fb.fixed_branch(y, fb.filters.bank("laplacian4"))[0, 1]
        tensor([[  4.,   2.,  -2.],
                [ -2.,   0.,  -6.],
                [-14., -10., -20.]])
        >>> fb.fixed_branch(y, fb.filters.bank("laplacian4"), identity=False, stride=2)[0, 0]
        tensor([[  4.,  -2.],
                [-14., -20.]])
    """
    fn = "fixedbranch.fixed_branch"
    check_tensor(fn, "y", y)
    stop = stop_list(fn, stop_gradient)
    check_bank(fn, bank)
    stride = check_pair(fn, "stride", stride)
    if _export.exporting_to_onnx():
        return _export.fixed_branch(y, bank, padding_mode, stop, identity, order, stride)
    return _fixed_branch_op(y, bank, padding_mode, stop, identity, order, stride)


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
    """Convolution followed by the fixed-filter branches, as one autograd node: ``fixed_branch(conv2d(x, ...))``.

    The convolution is ATen's (exactly ``F.conv2d``). Only ``x`` and ``weight`` are saved for backward (not the
    conv output, not the concatenation): the branch backward is linear in the gradient, so dL/dy needs neither.

    Args:
        x: input, (N, C_in, H, W).
        weight: (C_out, C_in/groups, kH, kW), same dtype and device as x.
        bias: (C_out,) or None.
        bank: fixed filters, (K, S1, S2).
        stride, padding, dilation, groups: the convolution's, as ``F.conv2d`` (padding: an int or a pair; use
            :class:`FixedBranchConv2d` for "same" and non-zero conv padding modes).
        padding_mode, stop_gradient, identity, order: the branches', see :func:`fixed_branch`.
        filter_stride: the branches' stride, see :func:`fixed_branch`'s ``stride``.

    Returns:
        (N, B*C_out, H', W').

    Example:
        >>> import fixedbranch as fb
        >>> x, w = torch.randn(2, 3, 16, 16), torch.randn(8, 3, 3, 3)
        >>> fb.fixed_branch_conv2d(x, w, None, fb.filters.bank("sobel_x", "sobel_y"), padding=1).shape
        torch.Size([2, 24, 16, 16])
    """
    fn = "fixedbranch.fixed_branch_conv2d"
    check_tensor(fn, "x", x)
    check_tensor(fn, "weight", weight)
    if bias is not None:
        check_tensor(fn, "bias", bias)
    stop = stop_list(fn, stop_gradient)
    check_bank(fn, bank)
    check_int(fn, "groups", groups)
    stride, padding, dilation, filter_stride = (
        check_pair(fn, name, value)
        for name, value in (("stride", stride), ("padding", padding), ("dilation", dilation),
                            ("filter_stride", filter_stride))
    )
    args = (x, weight, bias, bank, stride, padding, dilation, groups, padding_mode, stop, identity, order,
            filter_stride)
    if _export.exporting_to_onnx():
        return _export.fixed_branch_conv2d(*args)
    return _fixed_branch_conv2d_op(*args)


def fixed_branch_transpose(
    z: torch.Tensor,
    bank: torch.Tensor,
    padding_mode: str = "zeros",
    identity: bool = True,
    order: str = "branch",
    stride=1,
    output_size=None,
) -> torch.Tensor:
    r"""The adjoint of :func:`fixed_branch` with the same bank and options: :math:`z_0 + \sum_k F_k^T z_k`.

    For every y and z, ``<fixed_branch(y, bank, ...), z> = <y, fixed_branch_transpose(z, bank, ...)>``. It is what
    :func:`fixed_branch`'s backward computes (the same fused kernels), as a function of its own: a synthesis bank
    after an analysis bank. With a wavelet synthesis bank (:func:`fixedbranch.filters.wavelet`), ``stride=2``,
    ``identity=False`` and ``order="channel"`` it is one level of the inverse 2-D discrete wavelet transform.
    Its gradient is :func:`fixed_branch`.

    Args:
        z: (N, B*C, H', W') laid out as ``identity`` and ``order`` lay out :func:`fixed_branch`'s output
            (B = K+1, or K with ``identity=False``), any float dtype and strides.
        bank: fixed filters, (K, S1, S2), on z's device; rounded to z's dtype. Must not require grad.
        padding_mode, identity, order, stride: as in :func:`fixed_branch`; the padding's adjoint sends each border
            value's share back to the pixel it was copied from.
        output_size: (H, W) of fixed_branch's input. Required when a stride is > 1 (H' = (H-1)//sH + 1 does not
            determine H); by default (H', W').

    Returns:
        (N, C, H, W) in z's memory format.

    Example:
        >>> import fixedbranch as fb
        >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
        >>> z = fb.fixed_branch(x, fb.filters.wavelet("haar"), identity=False, order="channel", stride=2)
        >>> fb.fixed_branch_transpose(z, fb.filters.wavelet("haar", synthesis=True), identity=False,
        ...                           order="channel", stride=2, output_size=(4, 4))
        tensor([[[[ 0.,  1.,  2.,  3.],
                  [ 4.,  5.,  6.,  7.],
                  [ 8.,  9., 10., 11.],
                  [12., 13., 14., 15.]]]])
    """
    fn = "fixedbranch.fixed_branch_transpose"
    check_tensor(fn, "z", z)
    check_bank(fn, bank)
    stride = check_pair(fn, "stride", stride)
    if output_size is not None:
        output_size = _size_pair(fn, "output_size", output_size)
    if _export.exporting_to_onnx():
        return _export.fixed_branch_transpose(z, bank, padding_mode, identity, order, stride, output_size)
    return _transpose_op(z, bank, padding_mode, identity, order, stride, output_size)


def branch_contributions(
    grad_output: torch.Tensor,
    bank: torch.Tensor,
    padding_mode: str = "zeros",
    identity: bool = True,
    order: str = "branch",
    stride=1,
    input_size=None,
) -> torch.Tensor:
    r"""Each output branch's share of the gradient reaching y: :math:`F_k^T g_k` per filter, :math:`g_0` for the
    identity.

    The B shares sum to what :func:`fixed_branch`'s backward returns: the accumulated gradient of y.

    Args:
        grad_output: dL/dout, (N, B*C, H', W'), laid out as ``identity`` and ``order`` lay out the output.
        bank: fixed filters, (K, S1, S2).
        padding_mode, identity, order, stride: as in :func:`fixed_branch`.
        input_size: y's (H, W). Required when a stride is > 1 (H' does not determine H); otherwise (H', W').

    Returns:
        (B, N, C, H, W): entry b is output branch b's share.

    Example:
        >>> import fixedbranch as fb
        >>> g = torch.ones(1, 3, 4, 4)
        >>> shares = fb.branch_contributions(g, fb.filters.bank("laplacian4", "sobel_x"))
        >>> shares.shape
        torch.Size([3, 1, 1, 4, 4])
        >>> shares.sum(0)[0, 0]
        tensor([[-4.,  0.,  0.,  2.],
                [-4.,  1.,  1.,  4.],
                [-4.,  1.,  1.,  4.],
                [-4.,  0.,  0.,  2.]])
    """
    fn = "fixedbranch.branch_contributions"
    check_bank(fn, bank)
    stride = check_pair(fn, "stride", stride)
    check_tensor(fn, "grad_output", grad_output)
    if input_size is None:
        if stride != [1, 1]:
            raise ValueError(f"{fn}: input_size (y's (H, W)) is required with stride {tuple(stride)}: the gradient's "
                             "size does not determine it")
        # (A grad_output of another rank is the operator's to reject.)
        input_size = list(grad_output.shape[2:]) if grad_output.dim() == 4 else [0, 0]
    input_size = check_pair(fn, "input_size", tuple(input_size))
    # The backward's own checks, in this function's name, before it runs once per branch.
    _ops._check_backward_options(grad_output, bank, padding_mode, identity, order, stride, input_size, fn)
    branches = ([0] if identity else []) + list(range(1, bank.shape[0] + 1))
    return torch.stack([
        _backward_op(grad_output, bank, padding_mode, [j for j in branches if j != b], identity, order, stride,
                     input_size)
        for b in branches
    ])


# ----------------------------------------------------------------------------------------------------------------
# Fake kernels: sizes, dtype and memory format exactly as the real kernels produce them.


def _fake_same_device(what: str, name: str, t, like: torch.Tensor, like_name: str) -> None:
    # A meta tensor among CPU or CUDA ones dispatches here, not to the device kernels and their checks.
    if t is not None and t.device != like.device:
        raise ValueError(f"{what}: expected {name} on the same device as {like_name} ({like.device}), got {t.device}")


@torch.library.register_fake("fixedbranch::fixed_branch")
def _fixed_branch_fake(y, bank, padding_mode="zeros", stop_gradient=(), identity=True, order="branch",
                       stride=(1, 1)):
    torch._check(y.dim() == 4, lambda: f"fixedbranch.fixed_branch: expected y to have 4 dimensions, got {y.dim()}")
    torch._check(bank.dim() == 3,
                 lambda: f"fixedbranch.fixed_branch: expected bank to have 3 dimensions, got {bank.dim()}")
    _fake_same_device("fixedbranch.fixed_branch", "bank", bank, y, "y")
    n, c, h, w = y.shape
    branches = bank.shape[0] + int(identity)
    stride = pair(stride)
    return torch.empty((n, branches * c, strided_size(h, stride[0]), strided_size(w, stride[1])), dtype=y.dtype,
                       device=y.device, memory_format=suggest_memory_format(y))


@torch.library.register_fake("fixedbranch::_fixed_branch_backward")
def _fixed_branch_backward_fake(grad_output, bank, padding_mode, stop_gradient, identity, order, stride, input_size):
    torch._check(grad_output.dim() == 4,
                 lambda: "fixedbranch._fixed_branch_backward: expected grad_output to have 4 dimensions")
    _fake_same_device("fixedbranch._fixed_branch_backward", "bank", bank, grad_output, "grad_output")
    n, bc, _, _ = grad_output.shape
    branches = bank.shape[0] + int(identity)
    torch._check(bc % branches == 0, lambda: "fixedbranch._fixed_branch_backward: expected grad_output's channels to "
                 "be a multiple of the branches of the output")
    return torch.empty((n, bc // branches, *input_size), dtype=grad_output.dtype, device=grad_output.device,
                       memory_format=suggest_memory_format(grad_output))


@torch.library.register_fake("fixedbranch::fixed_branch_transpose")
def _fixed_branch_transpose_fake(z, bank, padding_mode="zeros", identity=True, order="branch", stride=(1, 1),
                                 output_size=None):
    what = "fixedbranch.fixed_branch_transpose"
    torch._check(z.dim() == 4, lambda: f"{what}: expected z to have 4 dimensions, got {z.dim()}")
    torch._check(bank.dim() == 3, lambda: f"{what}: expected bank to have 3 dimensions, got {bank.dim()}")
    _fake_same_device(what, "bank", bank, z, "z")
    n, bc, h, w = z.shape
    branches = bank.shape[0] + int(identity)
    torch._check(bc % branches == 0, lambda: f"{what}: expected z's channels to be a multiple of the branches")
    stride = (stride, stride) if isinstance(stride, int) else stride
    if output_size is None:
        torch._check(tuple(stride) == (1, 1), lambda: f"{what}: output_size is required with stride {stride}")
        output_size = (h, w)
    for size, s, got in zip(output_size, stride, (h, w)):
        torch._check(strided_size(size, s) == got, lambda: f"{what}: z's size does not match output_size")
    return torch.empty((n, bc // branches, *output_size), dtype=z.dtype, device=z.device,
                       memory_format=suggest_memory_format(z))


@torch.library.register_fake("fixedbranch::_depthwise_conv2d_weight_grad")
def _depthwise_conv2d_weight_grad_fake(grad_output, input, kernel_size, padding):
    _fake_same_device("fixedbranch._depthwise_conv2d_weight_grad", "grad_output", grad_output, input, "input")
    return input.new_empty(input.shape[1], 1, *kernel_size)


@torch.library.register_fake("fixedbranch::fixed_branch_conv2d")
def _fixed_branch_conv2d_fake(x, weight, bias, bank, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1,
                              padding_mode="zeros", stop_gradient=(), identity=True, order="branch",
                              filter_stride=(1, 1)):
    for name, t in (("weight", weight), ("bias", bias), ("bank", bank)):
        _fake_same_device("fixedbranch.fixed_branch_conv2d", name, t, x, "x")
    stride, padding, dilation = (list(pair(v)) for v in (stride, padding, dilation))
    y = torch.ops.aten.convolution(x, weight, bias, stride, padding, dilation, False, [0, 0], groups)
    return _fixed_branch_fake(y, bank, padding_mode, stop_gradient, identity, order, filter_stride)

# Autograd is registered in C++ (csrc/autograd.cpp): a Python formula cost more per call than the fused kernel on a
# small feature map.
