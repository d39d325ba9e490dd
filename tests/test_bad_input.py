"""Bad input gets an exception that names the argument; edge cases (N = 0, NaN/Inf, large banks) behave as the
reference does; results are bit-identical run to run and across thread counts."""

import pytest
import torch

import fixedbranch as fb
from fixedbranch import reference

from .common import PADDING_MODES, assert_close

_ops = torch.ops.fixedbranch

Y = torch.randn(2, 3, 8, 8)
X = torch.randn(2, 3, 8, 8)
W = torch.randn(4, 3, 3, 3)
BANK = fb.filters.bank("sobel_x", "sobel_y").float()  # K = 2

# (case, call, exception type, words its message contains). Every case of DESIGN.md's "Bad input" paragraph, through
# the functions, the modules and, for the checks that guard memory safety, the raw operators.
BAD_INPUT = [
    # wrong rank
    ("y rank", lambda: fb.fixed_branch(Y[0], BANK), ValueError, ["y", "4 dimensions", "got 3"]),
    ("x rank", lambda: fb.fixed_branch_conv2d(X[0], W, None, BANK), ValueError, ["x", "4 dimensions", "got 3"]),
    ("weight rank", lambda: fb.fixed_branch_conv2d(X, W[0], None, BANK), ValueError,
     ["weight", "4 dimensions", "got 3"]),
    ("bank rank", lambda: fb.fixed_branch(Y, BANK[0]), ValueError, ["bank", "3 dimensions", "got 2"]),
    ("bank rank, module", lambda: fb.FixedBranch(BANK[0]), ValueError, ["FixedBranch", "bank", "3 dimensions"]),
    ("grad_output rank", lambda: fb.branch_contributions(Y[0], BANK), ValueError, ["grad_output", "4 dimensions"]),
    ("y rank, operator", lambda: _ops.fixed_branch(Y[0], BANK, "zeros", []), RuntimeError, ["y", "4 dimensions"]),
    ("bank rank, operator", lambda: _ops.fixed_branch(Y, BANK[0], "zeros", []), RuntimeError,
     ["bank", "3 dimensions"]),
    # non-float dtype
    ("y int", lambda: fb.fixed_branch(Y.int(), BANK), ValueError, ["y", "float32", "torch.int32"]),
    ("x bool", lambda: fb.fixed_branch_conv2d(X.bool(), W, None, BANK), ValueError, ["x", "float32", "torch.bool"]),
    ("bank int", lambda: fb.fixed_branch(Y, BANK.long()), ValueError, ["bank", "float32", "torch.int64"]),
    ("bank int, module", lambda: fb.FixedBranchConv2d(3, 4, 3, BANK.long()), ValueError, ["bank", "torch.int64"]),
    ("y complex", lambda: fb.fixed_branch(Y.cfloat(), BANK), ValueError, ["y", "complex64"]),
    ("y int, operator", lambda: _ops.fixed_branch(Y.int(), BANK, "zeros", []), RuntimeError, ["y", "Int"]),
    ("not a tensor", lambda: fb.fixed_branch(Y.numpy(), BANK), TypeError, ["y", "torch.Tensor", "ndarray"]),
    # bank (or weight) on another device: "meta" stands for any other device on a CPU-only machine
    ("bank device", lambda: fb.fixed_branch(Y, BANK.to("meta")), ValueError, ["bank", "same device", "meta"]),
    ("bank device, conv", lambda: fb.fixed_branch_conv2d(X, W, None, BANK.to("meta")), ValueError,
     ["bank", "same device", "meta"]),
    ("weight device", lambda: fb.fixed_branch_conv2d(X, W.to("meta"), None, BANK), ValueError,
     ["weight", "device", "meta"]),
    ("bias device", lambda: fb.fixed_branch_conv2d(X, W, torch.zeros(4, device="meta"), BANK), ValueError,
     ["bias", "device", "meta"]),
    # mismatched dtypes between x and weight (and bias)
    ("weight dtype", lambda: fb.fixed_branch_conv2d(X, W.double(), None, BANK), ValueError,
     ["weight", "dtype", "torch.float64"]),
    ("bias dtype", lambda: fb.fixed_branch_conv2d(X, W, torch.zeros(4).double(), BANK), ValueError,
     ["bias", "dtype", "torch.float64"]),
    ("weight dtype, operator", lambda: _ops.fixed_branch_conv2d(X, W.double(), None, BANK, [1, 1], [1, 1], [1, 1], 1,
                                                                 "zeros", []), RuntimeError, ["weight", "dtype"]),
    # empty bank
    ("empty bank", lambda: fb.fixed_branch(Y, BANK[:0]), ValueError, ["non-empty bank", "(0, 3, 3)"]),
    ("empty filter", lambda: fb.fixed_branch(Y, torch.zeros(1, 0, 3)), ValueError, ["non-empty bank", "(1, 0, 3)"]),
    ("empty bank, module", lambda: fb.FixedBranchConv2d(3, 4, 3, BANK[:0]), ValueError, ["non-empty bank"]),
    ("empty bank, operator", lambda: _ops.fixed_branch(Y, BANK[:0], "zeros", []), RuntimeError, ["non-empty bank"]),
    # bank requiring grad
    ("bank requires grad", lambda: fb.fixed_branch(Y, BANK.clone().requires_grad_()), ValueError,
     ["bank requires grad", "detach"]),
    ("bank requires grad, conv", lambda: fb.fixed_branch_conv2d(X, W, None, BANK.clone().requires_grad_()),
     ValueError, ["bank requires grad"]),
    ("bank requires grad, module", lambda: fb.FixedBranch(BANK.clone().requires_grad_()), ValueError,
     ["bank requires grad"]),
    # reflect padding larger than the image
    ("reflect too large", lambda: fb.fixed_branch(Y[:, :, :1], BANK, "reflect"), ValueError,
     ["reflect padding", "1x8"]),
    ("reflect too large, conv", lambda: fb.fixed_branch_conv2d(X[:, :, :3], W, None, BANK, padding_mode="reflect"),
     ValueError, ["reflect padding", "1x6", "convolution's output"]),
    ("reflect 31x31 on 15x40", lambda: fb.fixed_branch(torch.zeros(1, 1, 15, 40), torch.ones(1, 31, 31), "reflect"),
     ValueError, ["reflect padding", "(15, 15, 15, 15)", "15x40"]),
    ("reflect too large, operator", lambda: _ops.fixed_branch(Y[:, :, :1], BANK, "reflect", []), RuntimeError,
     ["reflect padding"]),
    ("circular wraps twice", lambda: fb.fixed_branch(Y[:, :, :1, :1], torch.ones(1, 5, 5), "circular"),
     ValueError, ["circular padding", "more than once"]),
    # stop_gradient index out of range
    ("stop too large", lambda: fb.fixed_branch(Y, BANK, stop_gradient=(3,)), ValueError,
     ["stop_gradient", "3", "out of range", "[0, 2]"]),
    ("stop negative", lambda: fb.fixed_branch_conv2d(X, W, None, BANK, stop_gradient=(-1,)), ValueError,
     ["stop_gradient", "-1", "out of range"]),
    ("stop, module", lambda: fb.FixedBranch(BANK, stop_gradient=(5,)), ValueError, ["stop_gradient", "5"]),
    ("stop not ints", lambda: fb.fixed_branch(Y, BANK, stop_gradient=("1",)), TypeError, ["stop_gradient", "ints"]),
    ("stop bool", lambda: fb.fixed_branch(Y, BANK, stop_gradient=(True,)), TypeError, ["stop_gradient", "True"]),
    ("stop, backward operator", lambda: _ops._fixed_branch_backward(torch.zeros(2, 9, 8, 8), BANK, "zeros", [3]),
     RuntimeError, ["stop_gradient", "3", "out of range"]),
    # unknown padding mode
    ("padding mode", lambda: fb.fixed_branch(Y, BANK, "wrap"), ValueError, ["padding_mode", "'wrap'", "reflect"]),
    ("padding mode, conv", lambda: fb.fixed_branch_conv2d(X, W, None, BANK, padding_mode="edge"), ValueError,
     ["padding_mode", "'edge'"]),
    ("padding mode, module", lambda: fb.FixedBranchConv2d(3, 4, 3, BANK, filter_padding_mode="constant"), ValueError,
     ["filter_padding_mode", "'constant'"]),
    ("padding mode, operator", lambda: _ops.fixed_branch(Y, BANK, "wrap", []), RuntimeError,
     ["padding_mode", "'wrap'"]),
    # unknown filter name
    ("filter name", lambda: fb.filters.bank("sobel_x", "sobel_z"), ValueError,
     ["specs[1]", "unknown filter name", "'sobel_z'", "laplacian4"]),
    # the gradient's channel count
    ("grad_output channels", lambda: fb.branch_contributions(torch.zeros(2, 8, 8, 8), BANK), ValueError,
     ["grad_output", "multiple of K+1 = 3"]),
    ("grad_output channels, operator", lambda: _ops._fixed_branch_backward(torch.zeros(2, 8, 8, 8), BANK, "zeros",
                                                                           []), RuntimeError, ["multiple of K+1"]),
]


@pytest.mark.parametrize("case,call,error,words", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_raises_with_a_message_that_says_what(case, call, error, words):
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    for word in words:
        assert word in message, f"{case}: {word!r} not in {message!r}"


# ------------------------------------------------------------------------------------------------------- N = 0


def test_empty_batch_forward_and_backward():
    bank = fb.filters.bank("sobel_x", "laplacian4")
    y = torch.zeros(0, 3, 8, 7, requires_grad=True)
    x = torch.zeros(0, 3, 8, 7, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    torch.manual_seed(0)
    layer = fb.FixedBranchConv2d(3, 4, 3, bank, padding=1, filter_padding_mode="reflect")
    outputs = [
        (fb.fixed_branch(y, bank, "reflect"), (0, 9, 8, 7)),
        (fb.fixed_branch_conv2d(x, w, None, bank, padding=1), (0, 12, 8, 7)),
        (fb.FixedBranch(bank, "circular")(y), (0, 9, 8, 7)),
        (layer(x), (0, 12, 8, 7)),
    ]
    for out, shape in outputs:
        assert out.shape == shape
        out.sum().backward()
    assert y.grad.shape == y.shape and x.grad.shape == x.shape
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(layer.weight.grad, torch.zeros_like(w))
    assert fb.branch_contributions(torch.zeros(0, 9, 8, 7), bank).shape == (3, 0, 3, 8, 7)


# ------------------------------------------------------------------------------------------------- NaN and Inf


@pytest.mark.parametrize("padding_mode", PADDING_MODES)
def test_nan_and_inf_propagate_as_in_the_reference(padding_mode):
    bank = fb.filters.bank("sobel_x", "laplacian8", fb.filters.gaussian(5, 1.0)).float()
    y = torch.randn(1, 2, 9, 8)
    y[0, 0, 4, 4] = float("nan")
    y[0, 0, 0, 1] = float("inf")
    y[0, 1, 8, 7] = float("-inf")
    y.requires_grad_()
    out, expected = fb.fixed_branch(y, bank, padding_mode), reference.fixed_branch(y, bank, padding_mode)
    torch.testing.assert_close(out, expected, equal_nan=True, rtol=1e-5, atol=1e-5)
    g = torch.randn(out.shape)
    g[0, 3, 2, 2] = float("nan")
    grad, expected_grad = torch.autograd.grad(out, y, g)[0], torch.autograd.grad(expected, y, g)[0]
    torch.testing.assert_close(grad, expected_grad, equal_nan=True, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------- large banks


@pytest.mark.parametrize("bank_shape,image,padding_mode", [
    ((64, 3, 3), (2, 3, 10, 9), "reflect"),
    ((64, 5, 4), (1, 2, 7, 12), "circular"),
    ((2, 31, 31), (1, 2, 40, 33), "reflect"),
    ((3, 31, 30), (2, 1, 12, 20), "zeros"),
])
def test_large_banks_and_filters_match_the_reference(bank_shape, image, padding_mode):
    g = torch.Generator().manual_seed(0)
    bank = torch.randn(bank_shape, generator=g, dtype=torch.float64)
    y = torch.randn(image, generator=g, dtype=torch.float64, requires_grad=True)
    out, expected = fb.fixed_branch(y, bank, padding_mode), reference.fixed_branch(y, bank, padding_mode)
    assert out.shape == (image[0], (bank_shape[0] + 1) * image[1], *image[2:])
    assert_close(out, expected, torch.float64, "forward")
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64)
    assert_close(torch.autograd.grad(out, y, grad)[0], torch.autograd.grad(expected, y, grad)[0], torch.float64,
                 "backward")


# ---------------------------------------------------------------------------------------------- determinism


def _branch_run():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(4, 8, 48, 40, generator=g, requires_grad=True)
    bank = fb.filters.bank("sobel_x", "sobel_y", fb.filters.gaussian(5, 1.0), torch.randn(4, 3, generator=g))
    out = fb.fixed_branch(y, bank, "reflect", stop_gradient=(2,))
    grad = torch.randn(out.shape, generator=g).contiguous(memory_format=torch.channels_last)
    return [out, *torch.autograd.grad(out, y, grad)]


def _conv_run():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 40, 36, generator=g, requires_grad=True)
    w = torch.randn(8, 3, 3, 3, generator=g, requires_grad=True)
    out = fb.fixed_branch_conv2d(x, w, None, fb.filters.bank("laplacian8", "scharr_y"), padding=1,
                                 padding_mode="replicate")
    return [out, *torch.autograd.grad(out, (x, w), torch.randn(out.shape, generator=g))]


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_bit_identical_run_to_run_and_across_thread_counts(restore_threads):
    torch.set_num_threads(2)
    branch, conv = _branch_run(), _conv_run()
    for again, first in zip(_branch_run() + _conv_run(), branch + conv):
        assert torch.equal(again, first)
    torch.set_num_threads(1)
    # The branch kernels give every thread whole planes to write (no atomics, no split sums): the thread count
    # cannot change a bit. fixed_branch_conv2d's weight gradient comes from ATen's convolution backward, whose
    # reductions may be split by thread count, so that operator is checked run to run only.
    for single, first in zip(_branch_run(), branch):
        assert torch.equal(single, first)
