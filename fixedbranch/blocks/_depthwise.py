"""Trainable depthwise convolutions whose weight gradient runs as one fused CPU pass (``csrc/cpu/depthwise.cpp``).

ATen's CPU backward of a depthwise convolution computes the weight's gradient far below the machine's rate: for a 5x5
depthwise convolution of N8 C96 56x56 float32 on 2 cores it takes 28 ms of the 32 ms that forward and backward take,
and the fused pass 2 ms. The forward and the input's gradient stay ATen's. A backward that builds a graph (double
backward) takes ATen's differentiable formula whole.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["depthwise_conv2d", "depthwise_padding"]


_weight_grad = torch.ops.fixedbranch._depthwise_conv2d_weight_grad  # its fake kernel: fixedbranch/ops.py


def _conv_backward(grad, x, weight, padding, bias_shape, mask):
    return torch.ops.aten.convolution_backward(grad, x, weight, bias_shape, [1, 1], list(padding), [1, 1], False,
                                               [0, 0], x.shape[1], mask)


class _DepthwiseConv2d(torch.autograd.Function):
    @staticmethod
    def forward(x, weight, bias, padding):
        return F.conv2d(x, weight, bias, 1, padding, 1, x.shape[1])

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, padding = inputs
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        ctx.bias_shape = None if bias is None else list(bias.shape)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():
            grads = _conv_backward(grad, x, weight, ctx.padding, ctx.bias_shape, [need_x, need_w, need_b])
            return (*grads, None)
        grad_x = _conv_backward(grad, x, weight, ctx.padding, None, [True, False, False])[0] if need_x else None
        grad_w = None
        if need_w:
            grad_w = _weight_grad(grad, x, list(weight.shape[2:]), list(ctx.padding))
        grad_b = grad.sum((0, 2, 3)) if need_b else None
        return grad_x, grad_w, grad_b, None


def depthwise_padding(conv: nn.Conv2d) -> tuple[int, int] | None:
    """``conv``'s padding as (rows, columns) when it is a depthwise convolution that ``depthwise_conv2d`` computes
    (groups = in = out channels, stride 1, dilation 1, zero padding, symmetric), else None."""
    depthwise = conv.groups == conv.in_channels == conv.out_channels
    if not depthwise or conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.padding_mode != "zeros":
        return None
    if conv.padding == "valid":
        return 0, 0
    if conv.padding == "same":
        if any(k % 2 == 0 for k in conv.kernel_size):
            return None  # "same" pads an even size asymmetrically
        return tuple(k // 2 for k in conv.kernel_size)
    return tuple(conv.padding)


# Inputs smaller than this run ATen's backward: there the autograd.Function's own cost (tens of microseconds) is
# about what the fused pass saves.
_FUSED_MIN_NUMEL = 1 << 15


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     padding: tuple[int, int]) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, 1, padding, 1, groups=C)``; on the CPU, in float32 or float64 with ``weight``
    requiring grad, its weight gradient runs as the fused pass. Equal up to rounding."""
    fused = (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and weight.dtype == x.dtype
             and weight.requires_grad and torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
             and x.numel() >= _FUSED_MIN_NUMEL)
    if not fused:
        return F.conv2d(x, weight, bias, 1, padding, 1, x.shape[1])
    return _DepthwiseConv2d.apply(x, weight, bias, tuple(padding))
