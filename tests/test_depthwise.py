"""The published blocks' depthwise convolutions: the fused CPU weight gradient against ATen's, and the autograd
function that uses it (fixedbranch/blocks/_depthwise.py) under gradcheck, gradgradcheck and opcheck."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

from fixedbranch.blocks import _depthwise

from .common import assert_close, to_layout

weight_grad = torch.ops.fixedbranch._depthwise_conv2d_weight_grad


def aten_weight_grad(g, x, kernel_size, padding):
    weight = torch.zeros(x.shape[1], 1, *kernel_size, dtype=x.dtype, requires_grad=True)
    (grad,) = torch.autograd.grad(F.conv2d(x, weight, None, 1, padding, 1, x.shape[1]), weight, g)
    return grad


# (N, C, H, W, kernel_size, padding): the published 5x5 "same"; 1x1; 3x3 and 7x7; a row of more than eight taps
# (two column chunks); even and unequal sizes; no padding; rows shorter than a vector and longer than several.
CASES = [
    (2, 3, 17, 21, (5, 5), (2, 2)), (1, 2, 6, 5, (1, 1), (0, 0)), (3, 4, 9, 40, (3, 3), (1, 1)),
    (2, 2, 12, 11, (7, 7), (3, 3)), (2, 3, 9, 13, (3, 11), (1, 4)), (1, 5, 8, 7, (2, 3), (0, 1)),
    (2, 1, 5, 70, (4, 2), (0, 0)), (1, 2, 3, 3, (3, 3), (2, 2)),
]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n,c,h,w,kernel_size,padding", CASES)
def test_weight_grad_matches_aten(n, c, h, w, kernel_size, padding, dtype, layout):
    gen = torch.Generator().manual_seed(h * w + c)
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    ho, wo = h + 2 * padding[0] - kernel_size[0] + 1, w + 2 * padding[1] - kernel_size[1] + 1
    g = torch.randn(n, c, ho, wo, generator=gen, dtype=torch.float64)
    expected = aten_weight_grad(g, x, kernel_size, padding)
    actual = weight_grad(to_layout(g.to(dtype), layout), to_layout(x.to(dtype), layout), list(kernel_size),
                         list(padding))
    assert actual.shape == (c, 1, *kernel_size) and actual.dtype == dtype
    assert_close(actual, expected, dtype, f"{kernel_size} {padding} {layout}")


def test_weight_grad_of_an_empty_batch_is_zero():
    x, g = torch.randn(0, 3, 5, 5), torch.randn(0, 3, 5, 5)
    assert torch.equal(weight_grad(g, x, [3, 3], [1, 1]), torch.zeros(3, 1, 3, 3))


@pytest.mark.parametrize("args,match", [
    ((torch.randn(1, 2, 5, 5), torch.randn(2, 5, 5), [3, 3], [1, 1]), "input to have 4 dimensions"),
    ((torch.randn(1, 2, 5), torch.randn(1, 2, 5, 5), [3, 3], [1, 1]), "grad_output to have 4 dimensions"),
    ((torch.randn(1, 2, 5, 5), torch.randn(1, 2, 5, 5), [0, 3], [1, 1]), "kernel_size"),
    ((torch.randn(1, 2, 5, 5), torch.randn(1, 2, 5, 5), [3, 3], [-1, 1]), "padding"),
    ((torch.randn(1, 2, 5, 5).half(), torch.randn(1, 2, 5, 5).half(), [3, 3], [1, 1]), "input to be float32 or"),
    ((torch.randn(1, 2, 5, 5), torch.randn(1, 2, 5, 5).double(), [3, 3], [1, 1]), "grad_output to have input's dtype"),
    ((torch.randn(1, 2, 5, 5), torch.randn(1, 2, 5, 5), [3, 3], [0, 0]), r"grad_output of shape \(1, 2, 3, 3\)"),
    ((torch.randn(1, 2, 1, 1), torch.randn(1, 2, 2, 2), [5, 5], [1, 1]), "larger than the input"),
])
def test_weight_grad_bad_input_names_the_argument(args, match):
    with pytest.raises(ValueError, match=match):
        weight_grad(*args)


def test_weight_grad_opcheck():
    x, g = torch.randn(2, 3, 9, 8), torch.randn(2, 3, 9, 8)
    torch.library.opcheck(weight_grad.default, (g, x, [3, 3], [1, 1]))


@pytest.fixture
def fused_weight_grads(monkeypatch):
    """Every input size takes the fused weight gradient; counts its calls."""
    calls = []
    original = _depthwise._weight_grad

    def counted(*args):
        calls.append(args[1].shape)
        return original(*args)

    monkeypatch.setattr(_depthwise, "_FUSED_MIN_NUMEL", 0)
    monkeypatch.setattr(_depthwise, "_weight_grad", counted)
    return calls


@pytest.mark.parametrize("bias", [True, False])
def test_depthwise_conv2d_gradcheck(bias, fused_weight_grads):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 6, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 1, 3, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True) if bias else None
    inputs = (x, weight, b) if bias else (x, weight)

    def conv(x, weight, b=None):
        return _depthwise.depthwise_conv2d(x, weight, b, (1, 2))

    assert_close(conv(*inputs), F.conv2d(x, weight, b, 1, (1, 2), 1, 3), torch.float64, "forward")
    assert gradcheck(conv, inputs)
    assert fused_weight_grads, "the fused weight gradient did not run"
    assert gradgradcheck(conv, inputs)


def test_depthwise_conv2d_runs_aten_where_it_does_not_pay(fused_weight_grads):
    x = torch.randn(1, 2, 5, 5, requires_grad=True)
    weight = torch.randn(2, 1, 3, 3)  # no gradient wanted: nothing to fuse
    _depthwise.depthwise_conv2d(x, weight, None, (1, 1)).sum().backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _depthwise.depthwise_conv2d(x, weight.requires_grad_(), None, (1, 1)).float().sum().backward()
    assert not fused_weight_grads
    _depthwise.depthwise_conv2d(x, weight, None, (1, 1)).sum().backward()
    assert len(fused_weight_grads) == 1


def test_depthwise_padding_of_published_convolutions():
    conv = torch.nn.Conv2d(4, 4, 5, padding="same", groups=4)
    assert _depthwise.depthwise_padding(conv) == (2, 2)
    assert _depthwise.depthwise_padding(torch.nn.Conv2d(4, 4, (3, 7), padding=(1, 0), groups=4)) == (1, 0)
    assert _depthwise.depthwise_padding(torch.nn.Conv2d(4, 4, 3, padding="valid", groups=4)) == (0, 0)
    for other in (torch.nn.Conv2d(4, 4, 4, padding="same", groups=4), torch.nn.Conv2d(4, 8, 3, groups=4),
                  torch.nn.Conv2d(4, 4, 3, stride=2, groups=4), torch.nn.Conv2d(4, 4, 3, dilation=2, groups=4),
                  torch.nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect", groups=4)):
        assert _depthwise.depthwise_padding(other) is None, other
