"""Python front end of the fused operators: argument checks, fake (meta) kernels and autograd formulas.

The operators themselves (``torch.ops.fixedbranch.*``) are defined in ``csrc/fixed_branch.cpp`` with CPU and CUDA
kernels. Here each public function validates its arguments once, naming the argument, and calls the operator;
``register_fake`` and ``register_autograd`` make the operators work under ``torch.compile``, ``torch.export`` and
``torch.library.opcheck`` without graph breaks.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch._prims_common import suggest_memory_format

from . import export as _export
from .reference import same_padding

__all__ = ["PADDING_MODES", "fixed_branch", "fixed_branch_conv2d", "branch_contributions"]

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
_FLOAT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)

_ops = torch.ops.fixedbranch


# ----------------------------------------------------------------------------------------------------------------
# Argument checks: one place, every message names the argument, what was expected and what was received.


def _check_tensor(fn: str, name: str, t, ndim: int, dims: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn}: expected {name} to be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{fn}: expected {name} to have {ndim} dimensions {dims}, got {t.dim()}")
    if t.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{fn}: expected {name} to be float64, float32, float16 or bfloat16, got {t.dtype}")


def _check_bank(fn: str, bank, like: torch.Tensor | None = None, like_name: str = "") -> None:
    """The bank's own checks, and (given ``like``) that it is on like's device."""
    _check_tensor(fn, "bank", bank, 3, "(K, S1, S2)")
    if bank.shape[0] < 1 or bank.shape[1] < 1 or bank.shape[2] < 1:
        raise ValueError(f"{fn}: expected a non-empty bank (K, S1, S2 >= 1), got shape {tuple(bank.shape)}")
    if bank.requires_grad:
        raise ValueError(
            f"{fn}: bank requires grad, but the filters are fixed and never receive a gradient; pass bank.detach()"
        )
    if like is not None and bank.device != like.device:
        raise ValueError(f"{fn}: expected bank on the same device as {like_name} ({like.device}), got {bank.device}")


def _check_padding_mode(fn: str, padding_mode, name: str = "padding_mode") -> None:
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"{fn}: {name} must be one of {PADDING_MODES}, got {padding_mode!r}")


def _check_padding(fn: str, padding_mode, bank: torch.Tensor, height: int, width: int, image_name: str) -> None:
    """The mode, and whether the bank's "same" padding fits an image of height x width in that mode."""
    _check_padding_mode(fn, padding_mode)
    left, right, top, bottom = same_padding(tuple(bank.shape[1:]))
    if padding_mode == "reflect" and (max(top, bottom) >= height or max(left, right) >= width):
        raise ValueError(
            f"{fn}: reflect padding needs the image larger than the padding: a {bank.shape[1]}x{bank.shape[2]} "
            f"filter pads (top, bottom, left, right) = ({top}, {bottom}, {left}, {right}) but {image_name} is "
            f"{height}x{width}"
        )
    if padding_mode == "circular" and (max(top, bottom) > height or max(left, right) > width):
        raise ValueError(
            f"{fn}: circular padding cannot wrap around more than once: a {bank.shape[1]}x{bank.shape[2]} filter "
            f"on a {height}x{width} {image_name}"
        )


def _normalize_stop(fn: str, stop_gradient, num_filters: int) -> list[int]:
    if isinstance(stop_gradient, int) and not isinstance(stop_gradient, bool):
        stop_gradient = (stop_gradient,)
    try:
        items = list(stop_gradient)
    except TypeError:
        raise TypeError(
            f"{fn}: expected stop_gradient to be a collection of branch indices, got {type(stop_gradient).__name__}"
        ) from None
    for k in items:
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"{fn}: expected stop_gradient to hold ints, got {k!r}")
        if not 0 <= k <= num_filters:
            raise ValueError(
                f"{fn}: stop_gradient index {k} out of range [0, {num_filters}] (0 is the identity branch, "
                f"1..{num_filters} the filters of the bank)"
            )
    return sorted(set(items))


def _check_branch(fn: str, y, bank, padding_mode, stop_gradient, y_name: str = "y") -> list[int]:
    _check_tensor(fn, y_name, y, 4, "(N, C, H, W)")
    _check_bank(fn, bank, y, y_name)
    _check_padding(fn, padding_mode, bank, y.shape[2], y.shape[3], y_name)
    return _normalize_stop(fn, stop_gradient, bank.shape[0])


def _as_pair(fn: str, name: str, value) -> list[int]:
    pair = [value, value] if isinstance(value, int) else list(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise ValueError(f"{fn}: expected {name} to be an int or a pair of ints, got {value!r}")
    return pair


# ----------------------------------------------------------------------------------------------------------------
# Public functions.


def fixed_branch(
    y: torch.Tensor,
    bank: torch.Tensor,
    padding_mode: str = "zeros",
    stop_gradient: Iterable[int] = (),
) -> torch.Tensor:
    r"""Applies a bank of fixed filters to every channel and concatenates: ``cat([y, F_1*y, ..., F_K*y], 1)``.

    One fused kernel reads ``y`` once and writes all K+1 slices; the backward reads the gradient once and writes
    :math:`\partial L/\partial y = g_0 + \sum_k F_k^T g_k` once (the "accumulative back-propagation").

    Args:
        y: feature maps, (N, C, H, W), float64/float32/float16/bfloat16, any strides.
        bank: fixed filters, (K, S1, S2), on y's device; converted to y's dtype. Must not require grad.
        padding_mode: border handling of each filter: "zeros", "reflect", "replicate" or "circular" (as F.pad);
            filters are cross-correlations with "same" output size.
        stop_gradient: branch indices (0 = identity, k = filter k) that send no gradient to y.

    Returns:
        (N, (K+1)*C, H, W) in y's memory format; channels [k*C, (k+1)*C) hold branch k.

    Example:
        >>> import fixedbranch as fb
        >>> y = torch.arange(9.0).reshape(1, 1, 3, 3)
        >>> fb.fixed_branch(y, fb.filters.bank("laplacian4"))[0, 1]
        tensor([[  4.,   2.,  -2.],
                [ -2.,   0.,  -6.],
                [-14., -10., -20.]])
    """
    stop = _check_branch("fixed_branch", y, bank, padding_mode, stop_gradient)
    if _export.exporting_to_onnx():
        return _export.fixed_branch(y, bank.to(y.dtype), padding_mode, stop)
    return _ops.fixed_branch(y, bank.to(y.dtype), padding_mode, stop)


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
    """Convolution followed by the fixed-filter branches, as one autograd node: ``fixed_branch(conv2d(x, ...))``.

    The convolution is ATen's (exactly ``F.conv2d``). Only ``x`` and ``weight`` are saved for backward (not the
    conv output, not the concatenation): the branch backward is linear in the gradient, so dL/dy needs neither.

    Args:
        x: input, (N, C_in, H, W).
        weight: (C_out, C_in/groups, kH, kW), same dtype and device as x.
        bias: (C_out,) or None.
        bank: fixed filters, (K, S1, S2).
        stride, padding, dilation, groups: as ``F.conv2d`` (padding: an int or a pair; use
            :class:`FixedBranchConv2d` for "same" and non-zero conv padding modes).
        padding_mode: the filters' border handling, see :func:`fixed_branch`.
        stop_gradient: see :func:`fixed_branch`.

    Returns:
        (N, (K+1)*C_out, H_out, W_out).

    Example:
        >>> import fixedbranch as fb
        >>> x, w = torch.randn(2, 3, 16, 16), torch.randn(8, 3, 3, 3)
        >>> fb.fixed_branch_conv2d(x, w, None, fb.filters.bank("sobel_x", "sobel_y"), padding=1).shape
        torch.Size([2, 24, 16, 16])
    """
    fn = "fixed_branch_conv2d"
    _check_tensor(fn, "x", x, 4, "(N, C_in, H, W)")
    _check_tensor(fn, "weight", weight, 4, "(C_out, C_in/groups, kH, kW)")
    if weight.dtype != x.dtype and not _autocast_enabled(x):
        raise ValueError(f"{fn}: expected weight to have x's dtype ({x.dtype}), got {weight.dtype}")
    if weight.device != x.device:
        raise ValueError(f"{fn}: expected weight on x's device ({x.device}), got {weight.device}")
    if bias is not None:
        _check_tensor_bias(fn, bias, weight, x)
    stride, padding, dilation = (_as_pair(fn, n, v) for n, v in (("stride", stride), ("padding", padding),
                                                                    ("dilation", dilation)))
    if not isinstance(groups, int) or groups < 1 or x.shape[1] % groups or weight.shape[0] % groups:
        raise ValueError(f"{fn}: groups={groups!r} must divide in_channels ({x.shape[1]}) and out_channels "
                         f"({weight.shape[0]})")
    if weight.shape[1] * groups != x.shape[1]:
        raise ValueError(f"{fn}: expected x to have {weight.shape[1] * groups} channels (weight.shape[1] * groups), "
                         f"got {x.shape[1]}")
    h, w = (_conv_out_size(x.shape[2 + d], weight.shape[2 + d], stride[d], padding[d], dilation[d]) for d in (0, 1))
    if h < 1 or w < 1:
        raise ValueError(f"{fn}: the convolution's output would be {h}x{w}; x ({x.shape[2]}x{x.shape[3]}) is too small "
                         f"for a {weight.shape[2]}x{weight.shape[3]} kernel with this padding and dilation")
    _check_bank(fn, bank, x, "x")
    _check_padding(fn, padding_mode, bank, h, w, "the convolution's output")
    stop = _normalize_stop(fn, stop_gradient, bank.shape[0])
    if _export.exporting_to_onnx():
        return _export.fixed_branch_conv2d(x, weight, bias, bank.to(x.dtype), stride, padding, dilation, groups,
                                           padding_mode, stop)
    return _ops.fixed_branch_conv2d(x, weight, bias, bank.to(x.dtype), stride, padding, dilation, groups,
                                    padding_mode, stop)


def _check_tensor_bias(fn: str, bias, weight: torch.Tensor, x: torch.Tensor) -> None:
    if not isinstance(bias, torch.Tensor):
        raise TypeError(f"{fn}: expected bias to be a torch.Tensor or None, got {type(bias).__name__}")
    if bias.shape != (weight.shape[0],):
        raise ValueError(f"{fn}: expected bias of shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    if (bias.dtype != x.dtype and not _autocast_enabled(x)) or bias.device != x.device:
        raise ValueError(f"{fn}: expected bias with x's dtype and device ({x.dtype}, {x.device}), got "
                         f"({bias.dtype}, {bias.device})")


def _autocast_enabled(x: torch.Tensor) -> bool:
    # Under autocast the operator's autocast kernel (autocast.py) casts x, weight and bias to the autocast dtype, as
    # nn.Conv2d's does, so their dtypes may differ here. The device list is autocast.py's; checking it first also
    # keeps torch.is_autocast_enabled away from device types it rejects (meta).
    return x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type)


def _conv_out_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def branch_contributions(
    grad_output: torch.Tensor, bank: torch.Tensor, padding_mode: str = "zeros"
) -> torch.Tensor:
    r"""Each branch's share of the gradient reaching y: entry k is :math:`F_k^T g_k` (entry 0 is :math:`g_0`).

    The K+1 shares sum to what :func:`fixed_branch`'s backward returns: the accumulated gradient of y.

    Args:
        grad_output: dL/dout, (N, (K+1)*C, H, W).
        bank: fixed filters, (K, S1, S2).
        padding_mode: as in :func:`fixed_branch`.

    Returns:
        (K+1, N, C, H, W).

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
    fn = "branch_contributions"
    _check_tensor(fn, "grad_output", grad_output, 4, "(N, (K+1)*C, H, W)")
    _check_bank(fn, bank, grad_output, "grad_output")
    _check_padding(fn, padding_mode, bank, grad_output.shape[2], grad_output.shape[3], "grad_output")
    branches = bank.shape[0] + 1
    if grad_output.shape[1] % branches:
        raise ValueError(f"{fn}: expected grad_output's channels ({grad_output.shape[1]}) to be a multiple of K+1 = "
                         f"{branches}")
    bank = bank.to(grad_output.dtype)
    every = range(branches)
    return torch.stack(
        [_ops._fixed_branch_backward(grad_output, bank, padding_mode, [j for j in every if j != k]) for k in every]
    )


# ----------------------------------------------------------------------------------------------------------------
# Fake kernels: sizes, dtype and memory format exactly as the real kernels produce them.


@torch.library.register_fake("fixedbranch::fixed_branch")
def _fixed_branch_fake(y, bank, padding_mode, stop_gradient):
    torch._check(y.dim() == 4, lambda: f"fixed_branch: expected y to have 4 dimensions, got {y.dim()}")
    torch._check(bank.dim() == 3, lambda: f"fixed_branch: expected bank to have 3 dimensions, got {bank.dim()}")
    torch._check(bank.device == y.device, lambda: f"fixed_branch: expected bank on y's device ({y.device})")
    n, c, h, w = y.shape
    return torch.empty((n, (bank.shape[0] + 1) * c, h, w), dtype=y.dtype, device=y.device,
                       memory_format=suggest_memory_format(y))


@torch.library.register_fake("fixedbranch::_fixed_branch_backward")
def _fixed_branch_backward_fake(grad_output, bank, padding_mode, stop_gradient):
    torch._check(grad_output.dim() == 4, lambda: "_fixed_branch_backward: expected 4-D grad_output")
    torch._check(bank.device == grad_output.device, lambda: "_fixed_branch_backward: bank on another device")
    n, kc, h, w = grad_output.shape
    branches = bank.shape[0] + 1
    torch._check(kc % branches == 0, lambda: "_fixed_branch_backward: channels must be a multiple of K+1")
    return torch.empty((n, kc // branches, h, w), dtype=grad_output.dtype, device=grad_output.device,
                       memory_format=suggest_memory_format(grad_output))


@torch.library.register_fake("fixedbranch::fixed_branch_conv2d")
def _fixed_branch_conv2d_fake(x, weight, bias, bank, stride, padding, dilation, groups, padding_mode,
                              stop_gradient):
    y = torch.ops.aten.convolution(x, weight, bias, stride, padding, dilation, False, [0, 0], groups)
    return _fixed_branch_fake(y, bank, padding_mode, stop_gradient)


# ----------------------------------------------------------------------------------------------------------------
# Autograd. The branch backward is linear in g; its own backward is the forward with stopped branches zeroed, so
# every order of derivative stays on the fused kernels.


def _zero_stopped(out: torch.Tensor, stop: list[int], branches: int) -> torch.Tensor:
    if not stop:
        return out
    mask = torch.zeros(branches, dtype=torch.bool, device=out.device)
    mask[stop] = True
    mask = mask.repeat_interleave(out.shape[1] // branches).view(1, -1, 1, 1)
    return out.masked_fill(mask, 0)


def _branch_setup(ctx, inputs, output):
    _, bank, ctx.padding_mode, ctx.stop = inputs
    ctx.save_for_backward(bank)


def _branch_backward(ctx, grad):
    (bank,) = ctx.saved_tensors
    grad_y = None
    if ctx.needs_input_grad[0]:
        grad_y = _ops._fixed_branch_backward(grad, bank, ctx.padding_mode, ctx.stop)
    return grad_y, None, None, None


def _branch_backward_backward(ctx, grad):
    (bank,) = ctx.saved_tensors
    grad_g = None
    if ctx.needs_input_grad[0]:
        out = _ops.fixed_branch(grad, bank, ctx.padding_mode, ctx.stop)
        grad_g = _zero_stopped(out, ctx.stop, bank.shape[0] + 1)
    return grad_g, None, None, None


def _conv_setup(ctx, inputs, output):
    x, weight, bias, bank, ctx.stride, ctx.padding, ctx.dilation, ctx.groups, ctx.padding_mode, ctx.stop = inputs
    ctx.bias_sizes = None if bias is None else list(bias.shape)
    ctx.save_for_backward(x, weight, bank)


def _conv_backward(ctx, grad):
    x, weight, bank = ctx.saved_tensors
    grad_y = _ops._fixed_branch_backward(grad, bank, ctx.padding_mode, ctx.stop)
    mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.bias_sizes is not None and ctx.needs_input_grad[2]]
    grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
        grad_y, x, weight, ctx.bias_sizes, ctx.stride, ctx.padding, ctx.dilation, False, [0, 0], ctx.groups, mask
    )
    return grad_x, grad_w, grad_b, None, None, None, None, None, None, None


torch.library.register_autograd("fixedbranch::fixed_branch", _branch_backward, setup_context=_branch_setup)
torch.library.register_autograd(
    "fixedbranch::_fixed_branch_backward", _branch_backward_backward, setup_context=_branch_setup
)
torch.library.register_autograd("fixedbranch::fixed_branch_conv2d", _conv_backward, setup_context=_conv_setup)
