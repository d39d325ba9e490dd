"""Bad input gets an exception that names the argument and what was expected, from the public functions, the modules
and the raw operators alike. (Edge cases that are not errors: test_edge_cases.py; determinism: test_determinism.py.)"""

import pytest
import torch

import fixedbranch as fb

from .common import DTYPES, backward_op, pair

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
    ("bank int, module", lambda: fb.FixedBranchConv2d(3, 4, 3, bank=BANK.long()), ValueError,
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
    ("empty bank, module", lambda: fb.FixedBranchConv2d(3, 4, 3, bank=BANK[:0]), ValueError, ["non-empty bank"]),
    # bank requiring grad
    ("bank requires grad", lambda: fb.fixed_branch(Y, BANK.clone().requires_grad_()), ValueError,
     ["bank requires grad", "detach"]),
    ("bank requires grad, conv", lambda: fb.fixed_branch_conv2d(X, W, None, BANK.clone().requires_grad_()),
     ValueError, ["bank requires grad"]),
    ("bank requires grad, module", lambda: fb.FixedBranch(BANK.clone().requires_grad_()), ValueError,
     ["bank requires grad"]),
    # reflect padding larger than the image
    ("reflect too large", lambda: fb.fixed_branch(Y[:, :, :1], BANK, "reflect"), ValueError,
     ["='reflect' needs", "1x8"]),
    ("reflect too large, conv", lambda: fb.fixed_branch_conv2d(X[:, :, :3], W, None, BANK, padding_mode="reflect"),
     ValueError, ["='reflect' needs", "1x6", "convolution's output"]),
    ("reflect 31x31 on 15x40", lambda: fb.fixed_branch(torch.zeros(1, 1, 15, 40), torch.ones(1, 31, 31), "reflect"),
     ValueError, ["='reflect' needs", "(15, 15, 15, 15)", "15x40"]),
    ("circular wraps twice", lambda: fb.fixed_branch(Y[:, :, :1, :1], torch.ones(1, 5, 5), "circular"),
     ValueError, ["='circular' cannot", "more than once"]),
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
    ("padding mode, module", lambda: fb.FixedBranchConv2d(3, 4, 3, bank=BANK, filter_padding_mode="constant"),
     ValueError,
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
    ("stop 0 without identity, conv module", lambda: fb.FixedBranchConv2d(3, 4, 3, bank=BANK, stop_gradient=(0,),
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
    ("filter_stride, conv module", lambda: fb.FixedBranchConv2d(3, 4, 3, bank=BANK, filter_stride=-1), ValueError,
     ["filter_stride", "-1"]),
    ("filter_stride 3-tuple, conv module", lambda: fb.FixedBranchConv2d(3, 4, 3, bank=BANK, filter_stride=(1, 1, 1)),
     TypeError, ["filter_stride", "(1, 1, 1)"]),
    ("order", lambda: fb.fixed_branch(Y, BANK, order="channels"), ValueError,
     ["fixed_branch", "order", "'channels'", "'branch'", "'channel'"]),
    ("order, conv", lambda: fb.fixed_branch_conv2d(X, W, None, BANK, order="depth"), ValueError,
     ["fixed_branch_conv2d", "order", "'depth'"]),
    ("order, module", lambda: fb.FixedBranch(BANK, order="Channel"), ValueError, ["order", "'Channel'"]),
    ("order, conv module", lambda: fb.FixedBranchConv2d(3, 4, 3, bank=BANK, order="branches"), ValueError,
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
    ("fixed_branch", "reflect too small", dict(y=Y[:, :, :1], padding_mode="reflect"), ["='reflect' needs", "1x8"]),
    ("fixed_branch", "circular too small", dict(y=Y[:, :, :1, :1], bank=torch.ones(1, 5, 5), padding_mode="circular"),
     ["='circular' cannot", "more than once"]),
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
     ["='reflect' needs", "1x8"]),
    ("fixed_branch_conv2d", "circular too small",
     dict(x=X[:, :, :1, :1], bank=torch.ones(1, 5, 5), padding_mode="circular"),
     ["='circular' cannot", "more than once"]),
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
                                                         padding_mode="reflect"), ["='reflect' needs", "1x8"]),
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


# ----------------------------------------------------------------------------------------------- message style
# Every message starts with the public function or class the user called, fully qualified; scalars are echoed as
# given; a 2-D bank is told how to make a bank.

NAMED_CALLS = [
    ("fixedbranch.fixed_branch", lambda: fb.fixed_branch(Y, BANK, "wrap")),
    ("fixedbranch.fixed_branch", lambda: fb.fixed_branch(Y.numpy(), BANK)),
    ("fixedbranch.fixed_branch_conv2d", lambda: fb.fixed_branch_conv2d(X, W, None, BANK, groups=2)),
    ("fixedbranch.fixed_branch_conv2d", lambda: fb.fixed_branch_conv2d(X, W, None, BANK, groups=2.0)),
    ("fixedbranch.branch_contributions", lambda: fb.branch_contributions(torch.zeros(2, 8, 8, 8), BANK)),
    ("fixedbranch.branch_contributions", lambda: fb.branch_contributions(torch.zeros(2, 9, 8, 8), BANK, "edge")),
    ("fixedbranch.FixedBranch", lambda: fb.FixedBranch(BANK, "wrap")),
    ("fixedbranch.FixedBranch", lambda: fb.FixedBranch([1.0])),
    ("fixedbranch.FixedBranchConv2d", lambda: fb.FixedBranchConv2d(3, 4, 3, bank=BANK, filter_padding_mode="wrap")),
    ("fixedbranch.FixedBranchConv2d", lambda: fb.FixedBranchConv2d(3, 4, 3, bank=BANK, filter_stride=0)),
    ("fixedbranch.FixedBranchConv2d.from_conv2d", lambda: fb.FixedBranchConv2d.from_conv2d(torch.nn.Linear(2, 2),
                                                                                          bank=BANK)),
    ("fixedbranch.bank_plan", lambda: fb.bank_plan(BANK[0])),
    ("fixedbranch.bank_plan", lambda: fb.bank_plan("sobel_x")),
    ("fixedbranch.filters.bank", lambda: fb.filters.bank("sobel_z")),
    ("fixedbranch.filters.gaussian", lambda: fb.filters.gaussian(0, 1.0)),
    ("fixedbranch.filters.dct", lambda: fb.filters.dct(3, level=9)),
    ("fixedbranch.filters.lbcnn", lambda: fb.filters.lbcnn(2, 3, 2.0)),
    ("fixedbranch.filters.sobel_x", lambda: fb.filters.sobel_x(dtype=torch.int64)),
    ("fixedbranch._set_factoring", lambda: _ops._set_factoring("sometimes")),
]


@pytest.mark.parametrize("name,call", NAMED_CALLS, ids=[f"{i}: {c[0]}" for i, c in enumerate(NAMED_CALLS)])
def test_messages_start_with_the_public_name(name, call):
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    assert str(info.value).startswith(name + ": "), str(info.value)


@pytest.mark.parametrize("call,echo", [
    (lambda: fb.fixed_branch(Y, BANK, stride=0), "got 0"),
    (lambda: fb.fixed_branch(Y, BANK, stride=(1, 0)), "got (1, 0)"),
    (lambda: _ops.fixed_branch(Y, BANK, stride=0), "got 0"),
    (lambda: fb.FixedBranch(BANK, stride=-2), "got -2"),
    (lambda: fb.fixed_branch_conv2d(X, W, None, BANK, dilation=0), "got 0"),
    (lambda: fb.fixed_branch_conv2d(X, W, None, BANK, padding=-1), "got -1"),
    (lambda: fb.FixedBranchConv2d(3, 4, 3, bank=BANK, filter_stride=0), "got 0"),
    (lambda: fb.branch_contributions(torch.zeros(2, 9, 8, 8), BANK, stride=0, input_size=(8, 8)), "got 0"),
])
def test_scalars_are_echoed_as_given(call, echo):
    with pytest.raises(ValueError) as info:
        call()
    assert str(info.value).endswith(echo) and "[" not in str(info.value), str(info.value)


@pytest.mark.parametrize("call", [
    lambda f: fb.fixed_branch(Y, f),
    lambda f: fb.fixed_branch_conv2d(X, W, None, f),
    lambda f: fb.FixedBranch(f),
    lambda f: fb.FixedBranchConv2d(3, 4, 3, bank=f),
    lambda f: fb.bank_plan(f),
    lambda f: _ops.fixed_branch(Y, f),
])
def test_a_2d_bank_is_told_how_to_make_a_bank(call):
    with pytest.raises(ValueError) as info:
        call(fb.filters.sobel_x().float())
    message = str(info.value)
    assert "got 2" in message and "fixedbranch.filters.bank(f)" in message and "f[None]" in message, message
