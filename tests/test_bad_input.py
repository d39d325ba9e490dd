"""Bad input gets an exception that names the argument; edge cases (N = 0, NaN/Inf, large banks) behave as the
reference does; results are bit-identical run to run and across thread counts."""

import pytest
import torch

import fixedbranch as fb
from fixedbranch import reference

from .common import DTYPES, PADDING_MODES, assert_close, backward_op, pair

_ops = torch.ops.fixedbranch

Y = torch.randn(2, 3, 8, 8)
X = torch.randn(2, 3, 8, 8)
W = torch.randn(4, 3, 3, 3)
BANK = fb.filters.bank("sobel_x", "sobel_y").float()  # K = 2

# (case, call, exception type, words its message contains). Every case of docs/design.md's "Bad input" table, through
# the functions and the modules; the raw operators' side of each is in RAW_CASES below.
BAD_INPUT = [
    # wrong rank
    ("y rank", lambda: fb.fixed_branch(Y[0], BANK), ValueError, ["y", "4 dimensions", "got 3"]),
    ("x rank", lambda: fb.fixed_branch_conv2d(X[0], W, None, BANK), ValueError, ["x", "4 dimensions", "got 3"]),
    ("weight rank", lambda: fb.fixed_branch_conv2d(X, W[0], None, BANK), ValueError,
     ["weight", "4 dimensions", "got 3"]),
    ("bank rank", lambda: fb.fixed_branch(Y, BANK[0]), ValueError, ["bank", "3 dimensions", "got 2"]),
    ("bank rank, module", lambda: fb.FixedBranch(BANK[0]), ValueError, ["FixedBranch", "bank", "3 dimensions"]),
    ("grad_output rank", lambda: fb.branch_contributions(Y[0], BANK), ValueError, ["grad_output", "4 dimensions"]),
    # non-float dtype
    ("y int", lambda: fb.fixed_branch(Y.int(), BANK), ValueError, ["y", "float32", ("torch.int32", "Int")]),
    ("x bool", lambda: fb.fixed_branch_conv2d(X.bool(), W, None, BANK), ValueError, ["x", "float32", "bool"]),
    ("bank int", lambda: fb.fixed_branch(Y, BANK.long()), ValueError, ["bank", "float32", ("torch.int64", "Long")]),
    ("bank int, module", lambda: fb.FixedBranchConv2d(3, 4, 3, BANK.long()), ValueError,
     ["bank", ("torch.int64", "Long")]),
    ("y complex", lambda: fb.fixed_branch(Y.cfloat(), BANK), ValueError, ["y", ("complex64", "ComplexFloat")]),
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
     ["weight", "dtype", ("torch.float64", "Double")]),
    ("bias dtype", lambda: fb.fixed_branch_conv2d(X, W, torch.zeros(4).double(), BANK), ValueError,
     ["bias", "dtype", ("torch.float64", "Double")]),
    # empty bank
    ("empty bank", lambda: fb.fixed_branch(Y, BANK[:0]), ValueError, ["non-empty bank", ("(0, 3, 3)", "[0, 3, 3]")]),
    ("empty filter", lambda: fb.fixed_branch(Y, torch.zeros(1, 0, 3)), ValueError,
     ["non-empty bank", ("(1, 0, 3)", "[1, 0, 3]")]),
    ("empty bank, module", lambda: fb.FixedBranchConv2d(3, 4, 3, BANK[:0]), ValueError, ["non-empty bank"]),
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
    # unknown padding mode
    ("padding mode", lambda: fb.fixed_branch(Y, BANK, "wrap"), ValueError, ["padding_mode", "'wrap'", "reflect"]),
    ("padding mode, conv", lambda: fb.fixed_branch_conv2d(X, W, None, BANK, padding_mode="edge"), ValueError,
     ["padding_mode", "'edge'"]),
    ("padding mode, module", lambda: fb.FixedBranchConv2d(3, 4, 3, BANK, filter_padding_mode="constant"), ValueError,
     ["filter_padding_mode", "'constant'"]),
    # unknown filter name
    ("filter name", lambda: fb.filters.bank("sobel_x", "sobel_z"), ValueError,
     ["specs[1]", "unknown filter name", "'sobel_z'", "laplacian4"]),
    # the gradient's channel count
    ("grad_output channels", lambda: fb.branch_contributions(torch.zeros(2, 8, 8, 8), BANK), ValueError,
     ["grad_output", "multiple", "3"]),
    ("grad_output channels, no identity", lambda: fb.branch_contributions(torch.zeros(2, 9, 8, 8), BANK,
                                                                          identity=False, order="channel"),
     ValueError, ["grad_output", "multiple", "2"]),
    # the output options: the identity's stop index, the stride, the order, the input size of a strided gradient
    ("stop 0 without identity", lambda: fb.fixed_branch(Y, BANK, stop_gradient=(0,), identity=False), ValueError,
     ["fixed_branch", "stop_gradient", "identity"]),
    ("stop 0 without identity, conv", lambda: fb.fixed_branch_conv2d(X, W, None, BANK, stop_gradient=(0, 1),
                                                                     identity=False), ValueError,
     ["fixed_branch_conv2d", "stop_gradient", "identity"]),
    ("stop 0 without identity, module", lambda: fb.FixedBranch(BANK, stop_gradient=0, identity=False), ValueError,
     ["stop_gradient", "identity"]),
    ("stop 0 without identity, conv module", lambda: fb.FixedBranchConv2d(3, 4, 3, BANK, stop_gradient=(0,),
                                                                          identity=False), ValueError,
     ["stop_gradient", "identity"]),
    ("stop too large without identity", lambda: fb.fixed_branch(Y, BANK, stop_gradient=(3,), identity=False),
     ValueError, ["stop_gradient", "3", "out of range"]),
    ("stride 0", lambda: fb.fixed_branch(Y, BANK, stride=0), ValueError, ["fixed_branch", "stride", "0"]),
    ("stride negative", lambda: fb.fixed_branch(Y, BANK, stride=(1, -2)), ValueError, ["stride", "-2"]),
    ("stride float", lambda: fb.fixed_branch(Y, BANK, stride=1.5), TypeError, ["stride", "1.5"]),
    ("stride float pair", lambda: fb.fixed_branch(Y, BANK, stride=(2, 2.0)), TypeError, ["stride", "2.0"]),
    ("stride 3-tuple", lambda: fb.fixed_branch(Y, BANK, stride=(1, 2, 1)), TypeError, ["stride", "(1, 2, 1)"]),
    ("stride bool", lambda: fb.fixed_branch(Y, BANK, stride=True), TypeError, ["stride", "True"]),
    ("stride bool pair", lambda: fb.fixed_branch(Y, BANK, stride=(1, False)), TypeError, ["stride", "False"]),
    ("filter_stride 0, conv", lambda: fb.fixed_branch_conv2d(X, W, None, BANK, filter_stride=0), ValueError,
     ["fixed_branch_conv2d", "filter_stride", "0"]),
    ("filter_stride float, conv", lambda: fb.fixed_branch_conv2d(X, W, None, BANK, filter_stride=2.0), TypeError,
     ["filter_stride", "2.0"]),
    ("stride, module", lambda: fb.FixedBranch(BANK, stride=(0, 1)), ValueError, ["stride", "0"]),
    ("filter_stride, conv module", lambda: fb.FixedBranchConv2d(3, 4, 3, BANK, filter_stride=-1), ValueError,
     ["filter_stride", "-1"]),
    ("filter_stride 3-tuple, conv module", lambda: fb.FixedBranchConv2d(3, 4, 3, BANK, filter_stride=(1, 1, 1)),
     TypeError, ["filter_stride", "(1, 1, 1)"]),
    ("order", lambda: fb.fixed_branch(Y, BANK, order="channels"), ValueError,
     ["fixed_branch", "order", "'channels'", "'branch'", "'channel'"]),
    ("order, conv", lambda: fb.fixed_branch_conv2d(X, W, None, BANK, order="depth"), ValueError,
     ["fixed_branch_conv2d", "order", "'depth'"]),
    ("order, module", lambda: fb.FixedBranch(BANK, order="Channel"), ValueError, ["order", "'Channel'"]),
    ("order, conv module", lambda: fb.FixedBranchConv2d(3, 4, 3, BANK, order="branches"), ValueError,
     ["order", "'branches'"]),
    ("order, branch_contributions", lambda: fb.branch_contributions(torch.zeros(2, 9, 8, 8), BANK, order="c"),
     ValueError, ["branch_contributions", "order", "'c'"]),
    ("strided gradient without input_size", lambda: fb.branch_contributions(torch.zeros(2, 9, 4, 4), BANK,
                                                                            stride=2), ValueError,
     ["branch_contributions", "input_size"]),
    ("input_size inconsistent with the stride", lambda: fb.branch_contributions(torch.zeros(2, 9, 4, 4), BANK,
                                                                                stride=2, input_size=(9, 8)),
     ValueError, ["branch_contributions", "input_size", "9"]),
    ("input_size inconsistent without stride", lambda: fb.branch_contributions(torch.zeros(2, 9, 4, 4), BANK,
                                                                               input_size=(5, 4)),
     ValueError, ["branch_contributions", "input_size", "5"]),
]


def _says(message: str, word) -> bool:
    """Whether message contains word (case-insensitively); a tuple of words means any one of them."""
    return any(w.lower() in message.lower() for w in ((word,) if isinstance(word, str) else word))


@pytest.mark.parametrize("case,call,error,words", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_raises_with_a_message_that_says_what(case, call, error, words):
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    for word in words:
        assert _says(message, word), f"{case}: {word!r} not in {message!r}"


# ------------------------------------------------------------------------------------ raw operators vs functions
# The operators own the checks: a raw torch.ops.fixedbranch call rejects every bad argument that the public function
# rejects, and its message names the operator and the argument, as the function's names the function and the
# argument. Each case overrides one argument of a valid call.

BRANCH_CALL = dict(y=Y, bank=BANK, padding_mode="zeros", stop=[], identity=True, order="branch", stride=[1, 1])
CONV_CALL = dict(x=X, weight=W, bias=None, bank=BANK, stride=[1, 1], padding=[1, 1], dilation=[1, 1], groups=1,
                 padding_mode="zeros", stop=[], identity=True, order="branch", filter_stride=[1, 1])
BACKWARD_CALL = dict(grad_output=torch.zeros(2, 9, 8, 8), bank=BANK, padding_mode="zeros", identity=True,
                     order="branch", stride=[1, 1], input_size=[8, 8])


def _branch_public(a):
    return fb.fixed_branch(a["y"], a["bank"], a["padding_mode"], a["stop"], a["identity"], a["order"],
                           tuple(a["stride"]))


def _branch_raw(a):
    return _ops.fixed_branch(a["y"], a["bank"], a["padding_mode"], a["stop"], a["identity"], a["order"], a["stride"])


def _conv_public(a):
    return fb.fixed_branch_conv2d(a["x"], a["weight"], a["bias"], a["bank"], tuple(a["stride"]), tuple(a["padding"]),
                                  tuple(a["dilation"]), a["groups"], a["padding_mode"], a["stop"], a["identity"],
                                  a["order"], tuple(a["filter_stride"]))


def _conv_raw(a):
    return _ops.fixed_branch_conv2d(a["x"], a["weight"], a["bias"], a["bank"], a["stride"], a["padding"],
                                    a["dilation"], a["groups"], a["padding_mode"], a["stop"], a["identity"],
                                    a["order"], a["filter_stride"])


def _backward_public(a):
    return fb.branch_contributions(a["grad_output"], a["bank"], a["padding_mode"], a["identity"], a["order"],
                                   tuple(a["stride"]), tuple(a["input_size"]))


def _backward_raw(a):
    # Every branch but the first stopped: one of the calls branch_contributions makes.
    stop = list(range(1 if a["identity"] else 2, a["bank"].shape[0] + 1)) if a["bank"].dim() == 3 else []
    return backward_op(a["grad_output"], a["bank"], a["padding_mode"], stop, a["identity"], a["order"], a["stride"],
                       a["input_size"])


# op: (public function, its name, raw operator call, the operator's name, the valid call)
OPS = {
    "fixed_branch": (_branch_public, "fixed_branch", _branch_raw, "fixed_branch", BRANCH_CALL),
    "fixed_branch_conv2d": (_conv_public, "fixed_branch_conv2d", _conv_raw, "fixed_branch_conv2d", CONV_CALL),
    "_fixed_branch_backward": (_backward_public, "branch_contributions", _backward_raw, "_fixed_branch_backward",
                               BACKWARD_CALL),
}

_BANK_CASES = [  # (case, overrides, words of both messages), for any operator
    ("bank rank", dict(bank=BANK[0]), ["bank", "3 dimensions"]),
    ("bank int", dict(bank=BANK.long()), ["bank", "float32"]),
    ("bank float8", dict(bank=BANK.to(torch.float8_e5m2)), ["bank", "float8_e5m2"]),
    ("bank bool", dict(bank=BANK.bool()), ["bank", "bool"]),
    ("bank device", dict(bank=BANK.to("meta")), ["bank", "device", "meta"]),
    ("empty bank", dict(bank=BANK[:0]), ["bank", "non-empty"]),
    ("empty filter", dict(bank=torch.zeros(2, 3, 0)), ["bank", "non-empty"]),
    ("unknown order", dict(order="channels"), ["order", "'channels'"]),
    ("unknown padding mode", dict(padding_mode="wrap"), ["padding_mode", "'wrap'"]),
]
_STOP_CASES = [
    ("stop too large", dict(stop=[3]), ["stop_gradient", "3", "out of range"]),
    ("stop negative", dict(stop=[-1]), ["stop_gradient", "-1", "out of range"]),
    ("stop 0 without identity", dict(stop=[0], identity=False), ["stop_gradient", "identity"]),
]
RAW_CASES = [
    *[("fixed_branch", *case) for case in _BANK_CASES + _STOP_CASES],
    ("fixed_branch", "y rank", dict(y=Y[0]), ["y", "4 dimensions"]),
    ("fixed_branch", "y int", dict(y=Y.int()), ["y", "float32", "int"]),
    ("fixed_branch", "y float8", dict(y=Y.to(torch.float8_e4m3fn)), ["y", "float8_e4m3fn"]),
    ("fixed_branch", "y complex", dict(y=Y.cfloat()), ["y", "complex"]),
    ("fixed_branch", "reflect too small", dict(y=Y[:, :, :1], padding_mode="reflect"), ["reflect padding", "1x8"]),
    ("fixed_branch", "circular too small", dict(y=Y[:, :, :1, :1], bank=torch.ones(1, 5, 5), padding_mode="circular"),
     ["circular padding", "more than once"]),
    ("fixed_branch", "stride 0", dict(stride=[0, 0]), ["stride", "0"]),
    ("fixed_branch", "stride negative", dict(stride=[2, -1]), ["stride", "-1"]),
    *[("fixed_branch_conv2d", *case) for case in _BANK_CASES + _STOP_CASES],
    ("fixed_branch_conv2d", "x rank", dict(x=X[0]), ["x", "4 dimensions"]),
    ("fixed_branch_conv2d", "weight rank", dict(weight=W[0]), ["weight", "4 dimensions"]),
    ("fixed_branch_conv2d", "x and weight int", dict(x=X.int(), weight=W.int()), ["x", "float32", "int"]),
    ("fixed_branch_conv2d", "x and weight float8", dict(x=X.to(torch.float8_e4m3fn), weight=W.to(torch.float8_e4m3fn)),
     ["x", "float8_e4m3fn"]),
    ("fixed_branch_conv2d", "weight dtype", dict(weight=W.double()), ["weight", "dtype"]),
    ("fixed_branch_conv2d", "bias dtype", dict(bias=torch.zeros(4).double()), ["bias", "dtype"]),
    ("fixed_branch_conv2d", "bias shape", dict(bias=torch.zeros(5)), ["bias", "(4,)"]),
    ("fixed_branch_conv2d", "weight device", dict(weight=W.to("meta")), ["weight", "device", "meta"]),
    ("fixed_branch_conv2d", "groups", dict(groups=2), ["groups"]),
    ("fixed_branch_conv2d", "reflect too small", dict(x=X[:, :, :1], padding_mode="reflect"),
     ["reflect padding", "1x8"]),
    ("fixed_branch_conv2d", "circular too small",
     dict(x=X[:, :, :1, :1], bank=torch.ones(1, 5, 5), padding_mode="circular"),
     ["circular padding", "more than once"]),
    ("fixed_branch_conv2d", "conv stride 0", dict(stride=[0, 1]), ["stride", "0"]),
    ("fixed_branch_conv2d", "filter_stride 0", dict(filter_stride=[0, 0]), ["filter_stride", "0"]),
    ("fixed_branch_conv2d", "filter_stride negative", dict(filter_stride=[1, -3]), ["filter_stride", "-3"]),
    *[("_fixed_branch_backward", *case) for case in _BANK_CASES],
    ("_fixed_branch_backward", "grad_output rank", dict(grad_output=torch.zeros(9, 8, 8)),
     ["grad_output", "4 dimensions"]),
    ("_fixed_branch_backward", "grad_output int", dict(grad_output=torch.zeros(2, 9, 8, 8, dtype=torch.int32)),
     ["grad_output", "float32"]),
    ("_fixed_branch_backward", "grad_output float8", dict(grad_output=torch.zeros(2, 9, 8, 8).to(torch.float8_e4m3fn)),
     ["grad_output", "float8_e4m3fn"]),
    ("_fixed_branch_backward", "grad_output channels", dict(grad_output=torch.zeros(2, 8, 8, 8)),
     ["grad_output", "multiple", "3"]),
    ("_fixed_branch_backward", "grad_output channels without identity", dict(grad_output=torch.zeros(2, 9, 8, 8),
                                                                             identity=False),
     ["grad_output", "multiple", "2"]),
    ("_fixed_branch_backward", "stride 0", dict(stride=[0, 1]), ["stride", "0"]),
    ("_fixed_branch_backward", "input_size inconsistent", dict(stride=[2, 2], input_size=[8, 9]),
     ["input_size", "9"]),
    ("_fixed_branch_backward", "reflect too small", dict(grad_output=torch.zeros(2, 9, 1, 8), input_size=[1, 8],
                                                         padding_mode="reflect"), ["reflect padding", "1x8"]),
]


@pytest.mark.parametrize("op,case,overrides,words", RAW_CASES, ids=[f"{c[0]}: {c[1]}" for c in RAW_CASES])
def test_raw_operator_rejects_what_the_function_rejects(op, case, overrides, words):
    public, public_name, raw, raw_name, valid = OPS[op]
    args = {**valid, **overrides}
    with pytest.raises((ValueError, TypeError)) as public_error:
        public(args)
    # A raw call must fail in the operator's own checks (a ValueError, or a RuntimeError from the dispatcher's
    # kernels for another device), never in a kernel with an unrelated message.
    with pytest.raises((ValueError, RuntimeError)) as raw_error:
        raw(args)
    for who, name, message in (("function", public_name, str(public_error.value)),
                               ("operator", raw_name, str(raw_error.value))):
        assert name in message, f"{case}: the {who}'s message does not name {name!r}: {message!r}"
        for word in words:
            assert _says(message, word), f"{case}: {word!r} not in the {who}'s message {message!r}"


def test_raw_operators_accept_the_valid_calls():
    for public, _, raw, _, valid in OPS.values():
        torch.testing.assert_close(raw(valid), public(valid)[0] if raw is _backward_raw else public(valid), rtol=0,
                                   atol=0)


@pytest.mark.parametrize("bank_dtype", DTYPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_raw_operator_and_function_compute_the_same(dtype, bank_dtype):
    """Every y dtype with every bank dtype: the operator rounds the bank to y's dtype itself, so a raw call, the
    public function and a call with the bank rounded beforehand give the same bits, forward and backward."""
    gen = torch.Generator().manual_seed(DTYPES.index(dtype) * 4 + DTYPES.index(bank_dtype))
    bank = torch.randn(3, 3, 2, generator=gen, dtype=torch.float64).to(bank_dtype)
    y = torch.randn(2, 3, 9, 8, generator=gen, dtype=torch.float64).to(dtype)
    for opts in (dict(identity=True, order="branch", stride=1), dict(identity=False, order="channel", stride=(2, 1))):
        raw = _ops.fixed_branch(y, bank, "reflect", [2], opts["identity"], opts["order"], list(pair(opts["stride"])))
        assert raw.dtype == dtype
        yy = y.clone().requires_grad_(True)
        public = fb.fixed_branch(yy, bank, "reflect", (2,), **opts)
        assert torch.equal(raw, public), f"{opts}"
        rounded = _ops.fixed_branch(y, bank.to(dtype), "reflect", [2], opts["identity"], opts["order"],
                                    list(pair(opts["stride"])))
        assert torch.equal(raw, rounded), f"{opts}: the bank is not rounded to y's dtype"
        g = torch.randn(raw.shape, generator=gen, dtype=torch.float64).to(dtype)
        (grad,) = torch.autograd.grad(public, yy, g)
        raw_grad = backward_op(g, bank, "reflect", [2], opts["identity"], opts["order"], opts["stride"], y.shape[2:])
        assert grad.dtype == dtype
        assert torch.equal(grad, raw_grad), f"{opts}"
        assert torch.equal(raw_grad, backward_op(g, bank.to(dtype), "reflect", [2], opts["identity"], opts["order"],
                                                 opts["stride"], y.shape[2:]))

    x = torch.randn(2, 2, 8, 7, generator=gen, dtype=torch.float64).to(dtype)
    w = torch.randn(3, 2, 3, 3, generator=gen, dtype=torch.float64).to(dtype)
    raw = _ops.fixed_branch_conv2d(x, w, None, bank, [1, 1], [1, 1], [1, 1], 1, "zeros", [], False, "channel", [2, 2])
    assert torch.equal(raw, fb.fixed_branch_conv2d(x, w, None, bank, padding=1, identity=False, order="channel",
                                                   filter_stride=2))
    assert torch.equal(raw, _ops.fixed_branch_conv2d(x, w, None, bank.to(dtype), [1, 1], [1, 1], [1, 1], 1, "zeros",
                                                     [], False, "channel", [2, 2]))


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
        (fb.fixed_branch(y, bank, identity=False, order="channel", stride=2), (0, 6, 4, 4)),
        (fb.fixed_branch_conv2d(x, w, None, bank, padding=1, identity=False, filter_stride=(1, 3)), (0, 8, 8, 3)),
    ]
    for out, shape in outputs:
        assert out.shape == shape
        out.sum().backward()
    assert y.grad.shape == y.shape and x.grad.shape == x.shape
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(layer.weight.grad, torch.zeros_like(w))
    assert fb.branch_contributions(torch.zeros(0, 9, 8, 7), bank).shape == (3, 0, 3, 8, 7)
    assert fb.branch_contributions(torch.zeros(0, 6, 4, 4), bank, identity=False, order="channel", stride=2,
                                   input_size=(8, 7)).shape == (2, 0, 3, 8, 7)


# ------------------------------------------------------------------------------------------------- NaN and Inf


@pytest.mark.parametrize("options", [{}, dict(identity=False, order="channel", stride=(2, 1))],
                         ids=["default", "options"])
@pytest.mark.parametrize("padding_mode", PADDING_MODES)
def test_nan_and_inf_propagate_as_in_the_reference(padding_mode, options):
    bank = fb.filters.bank("sobel_x", "laplacian8", fb.filters.gaussian(5, 1.0)).float()
    y = torch.randn(1, 2, 9, 8)
    y[0, 0, 4, 4] = float("nan")
    y[0, 0, 0, 1] = float("inf")
    y[0, 1, 8, 7] = float("-inf")
    y.requires_grad_()
    out = fb.fixed_branch(y, bank, padding_mode, **options)
    expected = reference.fixed_branch(y, bank, padding_mode, **options)
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


def _options_run():
    g = torch.Generator().manual_seed(2)
    y = torch.randn(4, 8, 47, 41, generator=g, requires_grad=True).contiguous(memory_format=torch.channels_last)
    bank = fb.filters.bank("sobel_x", "sobel_y", fb.filters.gaussian(5, 1.0))
    out = fb.fixed_branch(y, bank, "circular", stop_gradient=(1,), identity=False, order="channel", stride=(2, 3))
    return [out, *torch.autograd.grad(out, y, torch.randn(out.shape, generator=g))]


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
    branch, options, conv = _branch_run(), _options_run(), _conv_run()
    for again, first in zip(_branch_run() + _options_run() + _conv_run(), branch + options + conv):
        assert torch.equal(again, first)
    torch.set_num_threads(1)
    # The branch kernels give every thread whole planes to write (no atomics, no split sums): the thread count
    # cannot change a bit. fixed_branch_conv2d's weight gradient comes from ATen's convolution backward, whose
    # reductions may be split by thread count, so that operator is checked run to run only.
    for single, first in zip(_branch_run() + _options_run(), branch + options):
        assert torch.equal(single, first)
