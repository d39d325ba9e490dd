"""The fused ops against the pure-PyTorch reference: forward, first and second order gradients over random cases.

Each case takes its output options (padding mode, identity, order, stride) from a fixed enumeration, so that every
combination of them is checked several times, and draws the rest (sizes with 1x1 images and images smaller than the
filter or the stride, a bank of odd, even and non-square filters, a stop set, a dtype, an input layout and a
gradient layout) from a seeded generator: every run checks the same cases. A quarter of the banks are separable and
run factored (the CPU kernels' column and row passes, forward and transposed), the others direct.
"""

import itertools
import random

import pytest
import torch

import fixedbranch as fb
from fixedbranch import reference

from .common import (
    DTYPES,
    GRAD_LAYOUTS,
    HALF_DTYPES,
    INPUT_LAYOUTS,
    ORDERS,
    PADDING_MODES,
    STRIDES,
    assert_close,
    backward_op,
    cpu_and_cuda,
    factoring,
    make_grad,
    pair,
    separable_bank,
    to_layout,
)

# Every combination of the output options; the branch cases cycle through it three times, the conv cases once.
BRANCH_OPTIONS = list(itertools.product(PADDING_MODES, (True, False), ORDERS, STRIDES))
CONV_OPTIONS = list(itertools.product((True, False), ORDERS, STRIDES))


def _stop_set(rnd: random.Random, k: int, identity: bool) -> list[int]:
    """Up to two stopped branches among those in the output (never 0 without the identity); now and then all."""
    present = range(0 if identity else 1, k + 1)
    if rnd.random() < 0.05:
        return list(present)
    return sorted(rnd.sample(present, rnd.randint(0, min(2, len(present)))))


def _random_case(seed: int):
    rnd = random.Random(seed)
    mode, identity, order, stride = BRANCH_OPTIONS[seed % len(BRANCH_OPTIONS)]
    s1, s2 = rnd.choice([(1, 1), (2, 2), (3, 3), (3, 3), (5, 5), (4, 3), (1, 5), (7, 7), (6, 2), (3, 7)])
    # Reflect needs the image larger than the padding, circular at least as large.
    lo_h = {"reflect": s1 // 2 + 1, "circular": max(1, s1 // 2)}.get(mode, 1)
    lo_w = {"reflect": s2 // 2 + 1, "circular": max(1, s2 // 2)}.get(mode, 1)
    k = rnd.randint(1, 8)
    return dict(
        n=rnd.randint(1, 3),
        c=rnd.choice([1, 2, 3, 5, 8, 17]),
        h=rnd.randint(lo_h, lo_h + 12),
        w=rnd.randint(lo_w, lo_w + 20),
        k=k,
        s=(s1, s2),
        mode=mode,
        identity=identity,
        order=order,
        stride=stride,
        stop=_stop_set(rnd, k, identity),
        dtype=rnd.choice(DTYPES),
        layout=rnd.choice(INPUT_LAYOUTS),
        grad_layout=rnd.choice(GRAD_LAYOUTS),
        factored=rnd.random() < 0.25 and min(s1, s2) > 1,
    )


def _identity_slots(order: str, c: int, branches: int):
    """The output channels that hold the identity branch, in channel order."""
    return slice(0, c) if order == "branch" else slice(0, None, branches)


def _all_stopped(stop, k: int, identity: bool) -> bool:
    return set(stop) == set(range(0 if identity else 1, k + 1))


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("seed", range(3 * len(BRANCH_OPTIONS)))
def test_fixed_branch_matches_reference(seed, device):
    case = _random_case(seed)
    with factoring("always" if case["factored"] else "never"):
        _check_fixed_branch(case, seed, device)


# The strided backward's one pass over every phase, for the square direct filters it is built for: rows of several
# vectors and a partial last one, the identity in its phase or absent, a stopped filter, both float dtypes, and an
# image tall enough for blocks of an odd number of rows (the CPU kernels' tasks), which split pairs of rows.
@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("size", [3, 5, 7])
@pytest.mark.parametrize("identity,dtype,hw", [(True, torch.float32, (21, 70)), (False, torch.float64, (16, 37)),
                                               (True, torch.float64, (400, 64))],
                         ids=["identity-float32", "float64", "tall"])
def test_direct_square_filters_at_stride_two_match_reference(size, identity, dtype, hw, device):
    case = dict(n=2, c=3, h=hw[0], w=hw[1], k=4, s=(size, size), mode="zeros", identity=identity, order="branch",
                stride=2, stop=[2], dtype=dtype, layout="contiguous", grad_layout="contiguous", factored=False)
    with factoring("never"):
        _check_fixed_branch(case, size, device)


def _check_fixed_branch(case, seed, device):
    gen = torch.Generator().manual_seed(seed)
    dtype, c, k = case["dtype"], case["c"], case["k"]
    s_h, s_w = pair(case["stride"])
    if case["factored"]:
        bank = separable_bank(k, *case["s"], gen).to(device)
    else:
        bank = torch.randn(k, *case["s"], generator=gen, dtype=torch.float64).to(device)
    y = torch.randn(case["n"], c, case["h"], case["w"], generator=gen, dtype=torch.float64).to(dtype).to(device)
    y = to_layout(y, case["layout"]).requires_grad_(True)
    opts = dict(identity=case["identity"], order=case["order"], stride=case["stride"])

    out = fb.fixed_branch(y, bank, case["mode"], case["stop"], **opts)
    # The reference in float64 on what the fused op computes with: y, and the bank rounded to y's dtype.
    y64 = y.detach().double().requires_grad_(True)
    expected = reference.fixed_branch(y64, bank.to(dtype).double(), case["mode"], case["stop"], **opts)
    assert out.dtype == dtype and out.device == y.device
    assert out.shape == (case["n"], (k + case["identity"]) * c, (case["h"] - 1) // s_h + 1, (case["w"] - 1) // s_w + 1)
    assert_close(out, expected, dtype, f"forward {case}")
    if case["identity"]:  # an exact copy of y, sampled
        slots = _identity_slots(case["order"], c, k + 1)
        assert torch.equal(out[:, slots], y.detach()[:, :, ::s_h, ::s_w])
    if case["layout"] == "channels_last" and c > 1:
        assert out.is_contiguous(memory_format=torch.channels_last)
    if case["layout"] == "contiguous":
        assert out.is_contiguous()

    g = make_grad(out.shape, dtype, device, case["grad_layout"], gen).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(out, y, g, create_graph=True)
    assert grad.shape == y.shape and grad.dtype == dtype
    if _all_stopped(case["stop"], k, case["identity"]):
        assert torch.count_nonzero(grad) == 0
        return
    g64 = g.detach().double().requires_grad_(True)
    (expected_grad,) = torch.autograd.grad(expected, y64, g64, create_graph=True)
    assert_close(grad, expected_grad, dtype, f"gradient {case}")

    # Second order: the backward is linear in g, and its derivative along v is the forward of v with the stopped
    # branches zeroed.
    v = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(dtype).to(device)
    (grad_grad,) = torch.autograd.grad(grad, g, v)
    (expected_grad_grad,) = torch.autograd.grad(expected_grad, g64, v.double())
    assert_close(grad_grad, expected_grad_grad, dtype, f"second order {case}")


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("seed", range(3 * len(CONV_OPTIONS)))
def test_fixed_branch_conv2d_matches_reference(seed, device):
    rnd = random.Random(1000 + seed)
    gen = torch.Generator().manual_seed(1000 + seed)
    identity, order, filter_stride = CONV_OPTIONS[seed % len(CONV_OPTIONS)]
    dtype = rnd.choice((torch.float64, torch.float32, torch.float32, torch.bfloat16, torch.float16))
    groups = rnd.choice([1, 1, 2])
    cin, cout = groups * rnd.randint(1, 3), groups * rnd.randint(1, 4)
    kh, kw = rnd.choice([(1, 1), (3, 3), (2, 3), (5, 5)])
    stride, padding, dilation = rnd.choice([1, 2, (1, 2)]), rnd.choice([0, 1, (2, 1)]), rnd.choice([1, 2])
    mode = rnd.choice(PADDING_MODES)
    k = rnd.randint(1, 5)
    stop = _stop_set(rnd, k, identity)
    x = torch.randn(rnd.randint(1, 3), cin, rnd.randint(12, 20), rnd.randint(12, 20), generator=gen,
                    dtype=torch.float64).to(dtype).to(device)
    x = to_layout(x, rnd.choice(INPUT_LAYOUTS)).requires_grad_(True)
    weight = torch.randn(cout, cin // groups, kh, kw, generator=gen, dtype=torch.float64).to(dtype).to(device)
    weight.requires_grad_(True)
    bias = torch.randn(cout, generator=gen, dtype=torch.float64).to(dtype).to(device).requires_grad_(True)
    bank = torch.randn(k, *rnd.choice([(3, 3), (2, 2), (5, 3)]), generator=gen, dtype=torch.float64).to(device)
    args = (stride, padding, dilation, groups, mode, stop, identity, order, filter_stride)
    what = f"{dtype} {args}"

    out = fb.fixed_branch_conv2d(x, weight, bias, bank, *args)
    leaves = [t.detach().double().requires_grad_(True) for t in (x, weight, bias)]
    expected = reference.fixed_branch_conv2d(*leaves, bank.to(dtype).double(), *args)
    # The half-precision conv itself rounds y; compare half types with a tolerance that covers that.
    assert_close(out, expected, dtype, f"forward {what}")
    g = make_grad(out.shape, dtype, device, rnd.choice(GRAD_LAYOUTS), gen).detach().requires_grad_(True)
    grads = torch.autograd.grad(out, (x, weight, bias), g, create_graph=True)
    if _all_stopped(stop, k, identity):  # the reference's output has no graph at all
        assert all(torch.count_nonzero(a) == 0 for a in grads)
        return
    g64 = g.detach().double().requires_grad_(True)
    expected_grads = torch.autograd.grad(expected, leaves, g64, create_graph=True)
    if dtype in HALF_DTYPES:
        # ATen's conv backward sums dL/dy in the half dtype, so the layer's gradients carry that rounding whatever
        # computes dL/dy. Require them as close to the float64 truth as the reference run in the same dtype.
        same_dtype = [t.detach().requires_grad_(True) for t in (x, weight, bias)]
        plain = reference.fixed_branch_conv2d(*same_dtype, bank.to(dtype), *args)
        plain_grads = torch.autograd.grad(plain, same_dtype, g)
        for name, a, p, e in zip(("x", "weight", "bias"), grads, plain_grads, expected_grads):
            err = ((a.double() - e).norm() / e.norm().clamp_min(1e-30)).item()
            err_plain = ((p.double() - e).norm() / e.norm().clamp_min(1e-30)).item()
            assert err <= max(1e-2, 2 * err_plain), f"grad {name}: {err:.2e} vs reference in {dtype}: {err_plain:.2e}"
        return  # second order in half precision would compare ATen's half convolutions, not the branches
    for name, a, e in zip(("x", "weight", "bias"), grads, expected_grads):
        assert_close(a, e, dtype, f"grad {name} {what}")

    # Second order, through the fused backward's own derivative and ATen's convolution double backward.
    vs = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in (x, weight, bias)]
    got = torch.autograd.grad(grads, (g, x, weight), [v.to(dtype).to(device) for v in vs], allow_unused=True,
                              materialize_grads=True)
    want = torch.autograd.grad(expected_grads, (g64, *leaves[:2]), [v.to(dtype).double() for v in vs],
                               allow_unused=True, materialize_grads=True)
    for name, a, e in zip(("g", "x", "weight"), got, want):
        assert_close(a, e, dtype, f"second order, {name} {what}")


@pytest.mark.parametrize("stop,expected", [(0, (0,)), (2, (2,)), ({0, 2}, (0, 2)), ([2, 0, 2], (0, 2)), ((), ())],
                         ids=["int 0", "int 2", "set", "list with repeats", "empty"])
def test_stop_gradient_forms(stop, expected):
    """An int names one branch (0 included), any collection names its members."""
    gen = torch.Generator().manual_seed(9)
    bank = fb.filters.bank("sobel_x", fb.filters.gaussian(3, 1.0))
    y = torch.randn(1, 2, 6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    out = fb.fixed_branch(y, bank, "reflect", stop, order="channel")
    want = reference.fixed_branch(y, bank, "reflect", expected, order="channel")
    g = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    assert_close(torch.autograd.grad(out, y, g)[0], torch.autograd.grad(want, y, g)[0], torch.float64, f"{stop}")


# One branch_contributions case per combination of identity, order and stride; the padding modes take turns.
CONTRIBUTION_CASES = [(PADDING_MODES[i % len(PADDING_MODES)], *o)
                      for i, o in enumerate(itertools.product((True, False), ORDERS, STRIDES))]


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("mode,identity,order,stride", CONTRIBUTION_CASES)
def test_branch_contributions_sum_to_gradient(mode, identity, order, stride, device):
    gen = torch.Generator().manual_seed(7)
    bank = fb.filters.bank("sobel_x", "laplacian4", fb.filters.gaussian(5, 1.0)).to(device)
    y = torch.randn(2, 3, 9, 10, generator=gen, dtype=torch.float64).to(device).requires_grad_(True)
    opts = dict(identity=identity, order=order, stride=stride)
    out = fb.fixed_branch(y, bank, mode, **opts)
    g = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(device)
    (grad,) = torch.autograd.grad(out, y, g)
    shares = fb.branch_contributions(g, bank, mode, **opts, input_size=(9, 10))
    branches = 3 + identity
    assert shares.shape == (branches, 2, 3, 9, 10)
    assert_close(shares.sum(0), grad, torch.float64, "sum of shares")
    assert_close(shares, reference.branch_contributions(g, bank, mode, **opts, input_size=(9, 10)), torch.float64,
                 "shares")
    s_h, s_w = pair(stride)
    if identity:  # the identity's share is g_0 where y was sampled, zero elsewhere
        g0 = torch.zeros_like(y)
        g0[:, :, ::s_h, ::s_w] = g[:, _identity_slots(order, 3, branches)]
        assert torch.equal(shares[0], g0)
    if (s_h, s_w) == (1, 1):  # the input size is the gradient's own
        assert torch.equal(fb.branch_contributions(g, bank, mode, **opts), shares)


def test_branch_contributions_half_dtypes_match_reference():
    gen = torch.Generator().manual_seed(8)
    bank = fb.filters.bank("sobel_y", fb.filters.log(5, 1.0))
    for dtype in HALF_DTYPES + (torch.float32,):
        g = torch.randn(2, 4, 5, 6, generator=gen, dtype=torch.float64).to(dtype)  # 2 channels, no identity
        shares = fb.branch_contributions(g, bank, "replicate", identity=False, order="channel", stride=(2, 1),
                                         input_size=(10, 6))
        assert shares.dtype == dtype
        expected = reference.branch_contributions(g.double(), bank.to(dtype).double(), "replicate", False, "channel",
                                                  (2, 1), (10, 6))
        assert_close(shares, expected, dtype, str(dtype))


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_modules_match_reference(device):
    torch.manual_seed(0)
    bank = fb.filters.bank("sobel_x", "sobel_y", "laplacian8").to(device)
    layer = fb.FixedBranchConv2d(3, 6, 3, bank=bank, padding=1, filter_padding_mode="reflect", stop_gradient=(2,),
                                 device=device)
    conv = torch.nn.Conv2d(3, 6, 3, padding=1, device=device)
    conv.load_state_dict(layer.state_dict())
    x = torch.randn(2, 3, 12, 12, device=device)
    out = layer(x)
    expected = reference.fixed_branch(conv(x), bank.float(), "reflect", (2,))
    assert_close(out, expected, torch.float32, "FixedBranchConv2d")
    g = torch.randn_like(out)
    out.backward(g)
    expected.backward(g)
    assert_close(layer.weight.grad, conv.weight.grad, torch.float32, "weight grad")
    assert_close(layer.bias.grad, conv.bias.grad, torch.float32, "bias grad")

    branch = fb.FixedBranch(bank, "circular", (0,))
    y = torch.randn(2, 4, 7, 9, device=device)
    assert_close(branch(y), reference.fixed_branch(y, bank.float(), "circular"), torch.float32, "FixedBranch")


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("identity,order,stride",
                         [(False, "branch", 1), (True, "channel", 2), (False, "channel", (2, 1))])
def test_modules_with_output_options_match_reference(identity, order, stride, device):
    torch.manual_seed(0)
    # A Gaussian, so that the bias gradient (the sum of dL/dy) is not zero without the identity.
    bank = fb.filters.bank("sobel_x", fb.filters.gaussian(3, 1.0), "laplacian8").to(device)
    opts = dict(identity=identity, order=order)
    layer = fb.FixedBranchConv2d(3, 5, 3, bank=bank, stride=(1, 2), padding=1, filter_padding_mode="replicate",
                                 stop_gradient=(3,), filter_stride=stride, device=device, **opts)
    conv = torch.nn.Conv2d(3, 5, 3, stride=(1, 2), padding=1, device=device)
    conv.load_state_dict(layer.state_dict())
    x = torch.randn(2, 3, 13, 16, device=device, requires_grad=True)
    out = layer(x)
    expected = reference.fixed_branch(conv(x), bank.float(), "replicate", (3,), stride=stride, **opts)
    assert_close(out, expected, torch.float32, "FixedBranchConv2d")
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, layer.weight, layer.bias), g)
    want = torch.autograd.grad(expected, (x, conv.weight, conv.bias), g)
    for name, a, e in zip(("x", "weight", "bias"), got, want):
        assert_close(a, e, torch.float32, f"grad {name}")

    branch = fb.FixedBranch(bank, "reflect", (1,), stride=stride, **opts)
    y = torch.randn(2, 4, 7, 9, device=device)
    assert_close(branch(y), reference.fixed_branch(y, bank.float(), "reflect", (1,), stride=stride, **opts),
                 torch.float32, "FixedBranch")


@pytest.mark.parametrize("conv_padding", ["same", "valid", 2])
@pytest.mark.parametrize("conv_mode", ["zeros", "reflect", "circular"])
def test_fixed_branch_conv2d_module_padding_as_nn_conv2d(conv_padding, conv_mode):
    torch.manual_seed(1)
    bank = fb.filters.bank("sobel_x", fb.filters.gaussian(4, 1.0))
    kernel = (4, 3)  # even: "same" pads asymmetrically
    layer = fb.FixedBranchConv2d(2, 3, kernel, bank=bank, padding=conv_padding, padding_mode=conv_mode)
    conv = torch.nn.Conv2d(2, 3, kernel, padding=conv_padding, padding_mode=conv_mode)
    conv.load_state_dict(layer.state_dict())
    x = torch.randn(2, 2, 11, 13)
    assert_close(layer(x), reference.fixed_branch(conv(x), bank.float()), torch.float32, "conv padding")


# The strided NCHW kernels that run a task plane by plane (csrc/cpu/planes.cpp), case by case: a filter as wide as
# the stride (outputs written in place), wider and narrower filters (rows of a plane longer than the output's),
# the stride larger than the filter (phases with no tap), odd sizes, strided views, the identity live or stopped and
# every filter stopped (the identity's gradient alone), in float64, float32 and bfloat16 (rows through op-math buffers).
PLANE_CASES = [
    ((2, 2), 2, (8, 12), (), True), ((2, 2), 2, (7, 9), (1,), False), ((4, 4), 2, (9, 10), (0, 2), True),
    ((3, 3), (2, 3), (11, 13), (), False), ((1, 2), (1, 2), (5, 8), (1, 2), True), ((3, 1), 3, (10, 4), (), True),
    ((2, 2), 3, (8, 8), (0,), True), ((3, 3), 2, (6, 6), (1, 2), True),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("s,stride,hw,stop,identity", PLANE_CASES)
def test_strided_plane_kernels_match_reference(s, stride, hw, stop, identity, dtype):
    gen = torch.Generator().manual_seed(sum(s) + sum(hw))
    bank = torch.randn(2, *s, generator=gen, dtype=torch.float64)
    wide = torch.randn(2, 3, hw[0], 2 * hw[1], generator=gen, dtype=torch.float64)
    for y in (wide[..., : hw[1]].contiguous(), wide[..., ::2]):  # contiguous rows, and every other column
        y = y.to(dtype).requires_grad_(True)
        with factoring("never"):
            out = fb.fixed_branch(y, bank, "zeros", stop, identity=identity, order="channel", stride=stride)
            g = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(dtype)
            (grad,) = torch.autograd.grad(out, y, g)
        y64 = y.detach().double().requires_grad_(True)
        expected = reference.fixed_branch(y64, bank.to(dtype).double(), "zeros", stop, identity=identity,
                                          order="channel", stride=stride)
        (expected_grad,) = torch.autograd.grad(expected, y64, g.double())
        assert_close(out, expected, dtype, f"forward {s} {stride} {hw}")
        assert_close(grad, expected_grad, dtype, f"gradient {s} {stride} {hw}")


# The forward at column stride 2 that reads y where it lies (forward_pairs, csrc/cpu/planes.cpp), case by case: banks
# of up to 16 taps, odd and even widths (tap columns that share their loads in pairs, and one left alone), one to five
# filters (one block of them), rows of one output, shorter than a vector, one step of float32 (64 outputs) and past
# it, several steps and a partial last vector; maps of one row and of rows whose taps all lie in y between rows that
# reach past its top or bottom edge; row strides 1 to 3; the identity live or absent, both orders, float32 and
# float64, y contiguous and rows of a wider tensor.
PAIR_CASES = [
    ((3, 3), 4, 2, (5, 7)), ((3, 3), 5, (1, 2), (9, 33)), ((2, 3), 1, (3, 2), (13, 130)), ((4, 4), 3, 2, (40, 161)),
    ((1, 3), 2, 2, (3, 2)), ((3, 1), 1, 2, (1, 1)), ((3, 3), 2, 2, (2, 257)), ((2, 2), 4, 2, (7, 129)),
    ((4, 3), 5, 3, (17, 96)), ((3, 5), 3, 2, (11, 70)), ((2, 6), 2, (1, 2), (6, 50)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("s,k,stride,hw", PAIR_CASES)
def test_stride_two_forward_from_y_in_place_matches_reference(s, k, stride, hw, dtype):
    gen = torch.Generator().manual_seed(sum(s) + sum(hw) + k)
    bank = torch.randn(k, *s, generator=gen, dtype=torch.float64)
    wide = torch.randn(2, 3, hw[0], 2 * hw[1], generator=gen, dtype=torch.float64).to(dtype)
    for y, identity, order in ((wide[..., : hw[1]].contiguous(), True, "branch"), (wide[..., : hw[1]], False, "channel")):
        with factoring("never"):
            out = fb.fixed_branch(y, bank, "zeros", identity=identity, order=order, stride=stride)
        expected = reference.fixed_branch(y.double(), bank.to(dtype).double(), "zeros", identity=identity,
                                          order=order, stride=stride)
        assert_close(out, expected, dtype, f"{s} k={k} stride {stride} {hw} {order}")


# The 2x2, stride-2 kernels (csrc/cpu/tiles.cpp), case by case: rows of one output (Wo = 1), shorter than a vector,
# just under, at and over a vector of float32 and float64, and wider; one and several rows per map (a row's last
# vector runs over into the next row only inside a run of contiguous rows); y and the gradient with contiguous rows,
# rows of a wider tensor, zero strides (an expanded gradient) and channels_last (the row kernels); every padding mode
# (even sizes read none), both orders, the identity live, stopped or absent, and stopped filters.
TILE_CASES = [
    ((2, 2), (), True, "branch"), ((4, 30), (1,), False, "channel"), ((6, 32), (0, 2), True, "channel"),
    ((2, 34), (), False, "branch"), ((10, 56), (3,), True, "channel"), ((4, 66), (0,), True, "branch"),
    ((8, 16), (1, 2, 3, 4), True, "channel"), ((8, 12), (), True, "channel"), ((6, 4), (2,), False, "branch"),
    ((12, 20), (), True, "branch"),
]


def _rows_of_wider(t: torch.Tensor) -> torch.Tensor:
    """t's values in rows that are a slice of twice as wide rows: contiguous along W, not from row to row."""
    wide = torch.zeros(*t.shape[:3], 2 * t.shape[3], dtype=t.dtype)
    wide[..., : t.shape[3]] = t
    return wide[..., : t.shape[3]]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("hw,stop,identity,order", TILE_CASES)
def test_tile_kernels_match_reference(hw, stop, identity, order, dtype):
    gen = torch.Generator().manual_seed(sum(hw) + len(stop))
    bank = torch.randn(4, 2, 2, generator=gen, dtype=torch.float64)
    y64 = torch.randn(2, 3, *hw, generator=gen, dtype=torch.float64)
    for mode in PADDING_MODES:
        expected = reference.fixed_branch(y64.requires_grad_(True), bank.to(dtype).double(), mode, stop,
                                          identity=identity, order=order, stride=2)
        g64 = torch.randn(expected.shape, generator=gen, dtype=torch.float64)
        for y_layout, g_layout in (("contiguous", "contiguous"), ("wider", "expanded"), ("channels_last", "wider")):
            y = y64.detach().to(dtype)
            y = _rows_of_wider(y) if y_layout == "wider" else to_layout(y, y_layout)
            y.requires_grad_(True)
            if g_layout == "expanded":
                g = make_grad(expected.shape, dtype, "cpu", "expanded", gen)
            else:
                g = g64.to(dtype)
                g = _rows_of_wider(g) if g_layout == "wider" else g
            (expected_grad,) = torch.autograd.grad(expected, y64, g.double(), retain_graph=True)
            out = fb.fixed_branch(y, bank, mode, stop, identity=identity, order=order, stride=2)
            (grad,) = torch.autograd.grad(out, y, g)
            what = f"{hw} {mode} y {y_layout} g {g_layout}"
            assert_close(out, expected, dtype, f"forward {what}")
            assert_close(grad, expected_grad, dtype, f"gradient {what}")


# Images tall enough that a task holds a block of rows, not the whole image: the backward stages each task's gradient
# rows as its row blocks reach them (direct banks) or all first (factored), in every padding mode.
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("policy", ["never", "always"])
def test_tall_images_in_row_blocks_match_reference(policy, dtype):
    gen = torch.Generator().manual_seed(7)
    bank = separable_bank(4, 5, 3, gen)
    y64 = torch.randn(2, 3, 300, 21, generator=gen, dtype=torch.float64)
    for mode in PADDING_MODES:
        expected = reference.fixed_branch(y64.requires_grad_(True), bank.to(dtype).double(), mode, [2])
        g = torch.randn(expected.shape, generator=gen, dtype=torch.float64)
        (expected_grad,) = torch.autograd.grad(expected, y64, g)
        y = y64.detach().to(dtype).requires_grad_(True)
        with factoring(policy):
            out = fb.fixed_branch(y, bank, mode, [2])
            (grad,) = torch.autograd.grad(out, y, g.to(dtype))
        assert_close(out, expected, dtype, f"forward {mode}")
        assert_close(grad, expected_grad, dtype, f"gradient {mode}")


def reference_gradient(bank, y64, mode, stop, identity, gen):
    """A random float64 dL/dout for the reference's output, and the reference's dL/dy from it."""
    expected = reference.fixed_branch(y64, bank, mode, stop, identity)
    g = torch.randn(expected.shape, generator=gen, dtype=torch.float64)
    (expected_grad,) = torch.autograd.grad(expected, y64, g)
    return g, expected_grad


def assert_direct_gradient_matches(bank, y64, mode, stop, identity, layout, dtype, gen, what):
    """dL/dy of the bank's direct filters (factoring never), y and a random g in `layout` and `dtype`, against the
    reference's in float64."""
    g, expected_grad = reference_gradient(bank, y64, mode, stop, identity, gen)
    y = to_layout(y64.detach().to(dtype), layout).requires_grad_(True)
    with factoring("never"):
        out = fb.fixed_branch(y, bank.to(dtype), mode, stop, identity)
        (grad,) = torch.autograd.grad(out, y, to_layout(g.to(dtype), layout))
    assert_close(grad, expected_grad, dtype, f"gradient, {what}")


# Square banks' backward (3x3 to 11x11) at stride 1 gathers blocks of four rows with the taps known at compile time
# (a 3x3 filter's held in registers), rows outside the gradient read as zeros; shorter blocks, rows of fewer than two
# vectors and banks of more than 32 live filters take the general gather. Heights leave a partial block, widths a
# partial vector; stopped filters, no identity, every padding mode, both layouts (of y and the gradient).
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("size", [3, 5, 7, 9, 11])
def test_square_backward_in_row_blocks_matches_reference(size, layout, dtype):
    gen = torch.Generator().manual_seed(13 + size)
    for k, stop, identity, (h, w) in ((1, [], True, (13, 37)), (4, [2], False, (9, 20)), (9, [0, 5], True, (22, 70)),
                                      (32, [], True, (6, 33)), (34, [1], True, (7, 35))):
        bank = torch.randn(k, size, size, generator=gen, dtype=torch.float64)
        for mode in PADDING_MODES:
            lo = size // 2 + 1  # reflect needs the image larger than the padding
            y64 = torch.randn(2, 3, max(h, lo), max(w, lo), generator=gen, dtype=torch.float64).requires_grad_(True)
            assert_direct_gradient_matches(bank, y64, mode, stop, identity, layout, dtype, gen, f"K={k}, {mode}")


def masked_3x3_bank(patterns: tuple[str, ...], gen: torch.Generator) -> torch.Tensor:
    """A float64 bank of random 3x3 filters, filter i zero where patterns[i] (nine '0'/'1' taps, row-major) has '0'."""
    masks = torch.tensor([[float(c) for c in p] for p in patterns], dtype=torch.float64).view(-1, 3, 3)
    return torch.randn(len(patterns), 3, 3, generator=gen, dtype=torch.float64) * masks


# 3x3 filters with zeros where the edge and Laplacian filters have them: the backward's gathers multiply only the taps
# of each filter's pattern (a zero middle column or row, zero corners; taps inside the smallest pattern that holds
# them, e.g. corners only; any other zeros: every tap), filters of each kind side by side, stopped ones among them.
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_sparse_3x3_backward_matches_reference(layout, dtype):
    gen = torch.Generator().manual_seed(29)
    bank = masked_3x3_bank(("010111010", "101101101", "111000111", "101000101", "000010000", "100000000", "011110110",
                            "111111111"), gen)
    for stop, identity, (h, w) in (([], True, (13, 37)), ([1, 4], False, (22, 70)), ([0], True, (6, 33))):
        for mode in PADDING_MODES:
            y64 = torch.randn(2, 3, h, w, generator=gen, dtype=torch.float64).requires_grad_(True)
            assert_direct_gradient_matches(bank, y64, mode, stop, identity, layout, dtype, gen, f"stop {stop}, {mode}")


# The 3x3 backward's gathers read NCHW gradient rows whose pixels lie on the vectors' alignment (rows of a multiple of
# 64 bytes) with aligned loads and lane shifts: rows of one to seven vectors (a step past both ends, a first step
# before the row, a last one after it, steps inside, a partial last step), every pattern, a stopped filter, the
# identity live or not; the same gradient one value off the alignment takes the unaligned gather.
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_aligned_3x3_backward_matches_reference(dtype):
    gen = torch.Generator().manual_seed(37)
    bank = masked_3x3_bank(("010111010", "101101101", "111000111", "111111111", "101000101"), gen)
    widths = (8, 16, 24, 32, 48, 64, 80, 96, 112)
    for w, stop, identity, offset in itertools.product(widths, ([], [2]), (True, False), (0, 1)):
        y64 = torch.randn(2, 3, 9, w, generator=gen, dtype=torch.float64).requires_grad_(True)
        g64, expected_grad = reference_gradient(bank, y64, "zeros", stop, identity, gen)
        g = torch.zeros(g64.numel() + offset, dtype=dtype)[offset:].view(g64.shape).copy_(g64)
        with factoring("never"):
            grad = backward_op(g, bank.to(dtype), "zeros", stop, identity)
        assert_close(grad, expected_grad, dtype, f"width {w}, stop {stop}, identity {identity}, offset {offset}")


# The forward's 3x3 direct filters multiply only the taps of their zero pattern (as the backward's gathers): blocks
# of one to six filters mixing the patterns, a subset of one, a single tap, a filter of zeros and dense filters,
# at strides 1 and 2, in every padding mode, layout and order. In NCHW at column stride 1 their rows are staged
# whole vectors long, aligned (correlate_3x3's aligned rows): widths of part of a vector to several.
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("k", [1, 3, 4, 6, 9])
def test_sparse_3x3_forward_matches_reference(k, layout, dtype):
    gen = torch.Generator().manual_seed(31 + k)
    patterns = ("101101101", "111000111", "010111010", "111111111", "101000101", "000010000", "011110110",
                "000000000", "010000010")
    bank = masked_3x3_bank(patterns[:k], gen).to(dtype)
    sizes = ((13, 37), (6, 70), (5, 16), (4, 2))
    for mode, stride, order, (h, w) in itertools.product(PADDING_MODES, (1, 2, (1, 2)), ORDERS, sizes):
        y = torch.randn(2, 3, h, w, generator=gen, dtype=torch.float64)
        expected = reference.fixed_branch(y, bank.double(), mode, order=order, stride=stride)
        out = fb.fixed_branch(to_layout(y.to(dtype), layout), bank, mode, order=order, stride=stride)
        assert_close(out, expected, dtype, f"{mode}, stride {stride}, {order}, {h}x{w}")


# Factored banks' backward in NCHW at column stride 1 or 2 sums each column's transposed row passes in registers (at
# stride 2 both phases, interleaved), for the odd row widths 3 to 11 (up to 7 in float64): rows shorter than a
# vector, rows of several vectors and a partial one, gradients read in place (contiguous) or staged (sliced,
# expanded), the identity live or absent, zero and reflect padding, filters taller or shorter than wide (column
# passes of 3 to 11 taps; at row stride 2 on rows of two vectors or more, one pass per row parity with its own taps).
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("stride", [1, 2, (1, 2), (2, 1)], ids=str)
@pytest.mark.parametrize("s", [(3, 3), (5, 5), (7, 7), (5, 9), (9, 5), (11, 11), (3, 11), (7, 4)], ids=str)
def test_factored_row_sums_in_registers_match_reference(s, stride, dtype):
    gen = torch.Generator().manual_seed(17 + s[0] * 13 + s[1])
    bank = separable_bank(6, *s, gen)
    for (h, w), identity, mode, grad_layout in (((9, 10), True, "zeros", "contiguous"),
                                                ((14, 37), False, "reflect", "sliced"),
                                                ((12, 70), True, "reflect", "contiguous"),
                                                ((7, 33), True, "zeros", "expanded")):
        y64 = torch.randn(2, 3, max(h, s[0]), max(w, s[1]), generator=gen, dtype=torch.float64).requires_grad_(True)
        expected = reference.fixed_branch(y64, bank.to(dtype).double(), mode, [2], identity, stride=stride)
        g = make_grad(expected.shape, torch.float64, "cpu", grad_layout, gen)
        (expected_grad,) = torch.autograd.grad(expected, y64, g)
        y = y64.detach().to(dtype).requires_grad_(True)
        with factoring("always"):
            out = fb.fixed_branch(y, bank.to(dtype), mode, [2], identity, stride=stride)
            (grad,) = torch.autograd.grad(out, y, g.to(dtype))
        assert_close(grad, expected_grad, dtype, f"gradient, {h}x{w}, {mode}, {grad_layout}")


# channels_last tasks (of a channels_last gradient) span up to 64 channels: with 70, every image has a block of 64 and
# one of 6, run by one thread one after the other, so buffers laid out for one width are reused at the other (the
# factored backward's mixed rows, whose zero borders the narrower block writes into).
@pytest.mark.parametrize("policy", ["never", "always"])
def test_channel_blocks_of_two_widths_match_reference(policy):
    gen = torch.Generator().manual_seed(17)
    bank = separable_bank(4, 3, 5, gen)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        for mode in PADDING_MODES:
            y64 = torch.randn(2, 70, 9, 13, generator=gen, dtype=torch.float64).requires_grad_(True)
            expected = reference.fixed_branch(y64, bank, mode)
            g = torch.randn(expected.shape, generator=gen, dtype=torch.float64)
            (expected_grad,) = torch.autograd.grad(expected, y64, g)
            y = to_layout(y64.detach().float(), "channels_last").requires_grad_(True)
            with factoring(policy):
                out = fb.fixed_branch(y, bank.float(), mode)
                (grad,) = torch.autograd.grad(out, y, to_layout(g.float(), "channels_last"))
            assert_close(out, expected, torch.float32, f"forward {mode}")
            assert_close(grad, expected_grad, torch.float32, f"gradient {mode}")
    finally:
        torch.set_num_threads(threads)


# channels_last blocks of whole vectors (16, 32, 48 and 160 float32 channels, 8 float64) in branch order: the
# forward's direct filters write each pixel's channels straight into the output, beside factored filters that go
# through a row buffer, and a direct bank's backward in zero mode reads g and writes dL/dy pixel by pixel where they
# lie (pixels.cpp: image borders, uneven padding, pixel blocks and their rest, up to four vectors a chunk, the column
# phases of strides 2, 3 and unequal pairs), the identity's gradient among its taps or stopped, no live filter. 24
# channels (not whole vectors) take the row kernels, whose backward at stride 1 copies the identity's gradient as it
# stages each pixel; other modes take the row kernels throughout. Against the reference in float64.
@pytest.mark.parametrize("dtype,c", [(torch.float32, 16), (torch.float32, 48), (torch.float64, 8),
                                     (torch.float32, 32), (torch.float32, 24), (torch.float32, 160)])
@pytest.mark.parametrize("policy", ["never", "always"])
def test_channels_last_pixel_runs_match_reference(dtype, c, policy):
    gen = torch.Generator().manual_seed(c)
    # Two rank-1 filters (factored under "always") around a direct one; five 4x5 filters (even rows: uneven padding).
    mixed = torch.cat([separable_bank(2, 3, 3, gen), torch.randn(1, 3, 3, generator=gen, dtype=torch.float64),
                       separable_bank(1, 3, 3, gen)])
    uneven = torch.randn(5, 4, 5, generator=gen, dtype=torch.float64)
    cases = [(mixed, mode, identity, stop, stride) for mode in PADDING_MODES for identity in (True, False)
             for stop, stride in (((), 1), ((2,), 1), ((1, 2, 3, 4), 1), ((), 2))]
    cases += [(mixed, "zeros", True, (0,), 1), (mixed, "zeros", True, (0, 3), 1), (uneven, "zeros", True, (), 1),
              (uneven, "zeros", False, (1,), 1), (uneven, "reflect", True, (), 1)]
    cases += [(bank, "zeros", identity, (), stride) for bank in (mixed, uneven) for identity in (True, False)
              for stride in (3, (2, 1), (1, 3), (3, 2))]
    for bank, mode, identity, stop, stride in cases:
        y64 = torch.randn(2, c, 11, 13, generator=gen, dtype=torch.float64).requires_grad_(True)
        expected = reference.fixed_branch(y64, bank, mode, stop, identity=identity, stride=stride)
        g = torch.randn(expected.shape, generator=gen, dtype=torch.float64)
        # Every branch stopped: the reference's output is a constant, its gradient zero.
        expected_grad = torch.autograd.grad(expected, y64, g)[0] if expected.requires_grad else torch.zeros_like(y64)
        what = f"{tuple(bank.shape)} {mode} identity={identity} stop={stop} stride={stride}"
        with factoring(policy):
            out = fb.fixed_branch(to_layout(y64.detach().to(dtype), "channels_last"), bank.to(dtype), mode, stop,
                                  identity=identity, stride=stride)
            grad = backward_op(to_layout(g.to(dtype), "channels_last"), bank.to(dtype), mode, stop, identity,
                               stride=stride, input_size=(11, 13))
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert_close(out, expected, dtype, "forward " + what)
        assert_close(grad, expected_grad, dtype, "gradient " + what)


# The factored forward runs the row passes of the single-term filters on one column in register blocks of several
# branches, over all of a task's rows at once where the output takes them in place: a DCT 5x5 basis (five filters on
# each of five columns) and thirteen filters on one column (blocks of uneven split), at stride 1 and 2, in both
# layouts (channels_last runs row by row), against the reference.
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_column_groups_in_blocks_match_reference(layout, stride, dtype):
    gen = torch.Generator().manual_seed(11)
    column = torch.randn(5, generator=gen, dtype=torch.float64)
    one_column = torch.einsum("a,kb->kab", column, torch.randn(13, 5, generator=gen, dtype=torch.float64))
    for bank in (fb.filters.dct(5), one_column):
        y64 = torch.randn(2, 3, 40, 29, generator=gen, dtype=torch.float64)
        expected = reference.fixed_branch(y64.requires_grad_(True), bank.to(dtype).double(), "reflect", [1],
                                          stride=stride)
        g = torch.randn(expected.shape, generator=gen, dtype=torch.float64)
        (expected_grad,) = torch.autograd.grad(expected, y64, g)
        y = to_layout(y64.detach().to(dtype), layout).requires_grad_(True)
        with factoring("always"):
            out = fb.fixed_branch(y, bank, "reflect", [1], stride=stride)
            (grad,) = torch.autograd.grad(out, y, g.to(dtype))
        assert_close(out, expected, dtype, f"forward, {bank.shape[0]} filters")
        assert_close(grad, expected_grad, dtype, f"gradient, {bank.shape[0]} filters")


def _symmetric_bank(k: int, s1: int, s2: int, symmetry: str, gen: torch.Generator) -> torch.Tensor:
    """k random filters with a symmetry every one shares, so that their taps fall into classes of equal weights:
    mirror (both axes: classes of 4, 2, 1), point (180 degrees: classes of 2, 1), octo (both axes and the diagonal,
    square: classes of 8, 4, 1) or levels (a few integer values: classes of any size)."""
    if symmetry == "levels":
        return torch.randint(-1, 3, (k, s1, s2), generator=gen).double()
    a = torch.randn(k, s1, s2, generator=gen, dtype=torch.float64)
    if symmetry == "octo":
        a = a + a.transpose(1, 2)
    if symmetry in ("mirror", "octo"):
        a = a + a.flip(1)
        return a + a.flip(2)
    return a + a.flip(1).flip(2)


# Direct filters whose taps share weights in every filter of a register block (symmetric banks: Gaussians, LoGs,
# Gabors) are run over classes of taps, each class's inputs summed before the block's multiply-adds. Blocks of 1 to 8
# filters (and 9 and 13: several blocks), classes of every size, the forward's three direct paths (NCHW rows at once,
# channels_last row by row, strided planes), every padding mode and dtype, against the reference.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("symmetry,s", [("mirror", (5, 5)), ("mirror", (4, 6)), ("point", (11, 11)),
                                        ("point", (3, 5)), ("octo", (7, 7)), ("octo", (3, 3)), ("levels", (3, 3)),
                                        ("levels", (5, 4))], ids=str)
def test_symmetric_direct_banks_match_reference(symmetry, s, dtype):
    gen = torch.Generator().manual_seed(23 + 7 * s[0] + s[1])
    cases = list(zip((1, 2, 3, 5, 7, 8, 9, 13), ("contiguous", "channels_last") * 4, (1, 2, 1, (1, 2), 1, 2, 1, 1),
                     PADDING_MODES * 2))
    for k, layout, stride, mode in cases:
        bank = _symmetric_bank(k, *s, symmetry, gen)
        y = torch.randn(2, 3, 13, 37, generator=gen, dtype=torch.float64).to(dtype)
        expected = reference.fixed_branch(y.double(), bank.to(dtype).double(), mode, stride=stride)
        y = to_layout(y, layout)
        with factoring("never"):
            out = fb.fixed_branch(y, bank.to(dtype), mode, stride=stride)
        assert_close(out, expected, dtype, f"{k} filters, {layout}, stride {stride}, {mode}")


# Their backward at stride 1 (one channel a pixel) gathers from one mix of the gradients per class of taps, each
# class's taps then summing its mix with weight one: column by column for odd widths up to a vector's lanes (the
# columns' lane shifts; mirror symmetric banks sum half the columns), row by row otherwise (the 4 x 6 bank, and 9 x 9
# in float64). Banks of 2 to 13 filters, every padding mode, stop sets with and
# without the identity, both orders, gradients contiguous, expanded and sliced (staged instead of read where they
# lie) and channels_last (which gathers), every dtype, against the reference's gradient in float64.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("symmetry,s", [("mirror", (5, 5)), ("mirror", (4, 6)), ("mirror", (9, 9)), ("point", (11, 11)),
                                        ("point", (3, 5)), ("octo", (7, 7)), ("octo", (3, 3)), ("levels", (3, 3))],
                         ids=str)
def test_symmetric_direct_banks_gradients_match_reference(symmetry, s, dtype):
    gen = torch.Generator().manual_seed(29 + 7 * s[0] + s[1])
    cases = list(zip((2, 3, 5, 8, 9, 13), PADDING_MODES * 2, ((), (1,), (0,), (2,), (), (0, 3)),
                     (True, True, True, False, False, True), ORDERS * 3,
                     ("contiguous", "expanded", "channels_last", "sliced", "contiguous", "channels_last")))
    for k, mode, stop, identity, order, layout in cases:
        bank = _symmetric_bank(k, *s, symmetry, gen).to(dtype)
        g = make_grad((2, 3 * (k + int(identity)), 13, 37), dtype, "cpu", layout, gen)
        y = torch.zeros(2, 3, 13, 37, dtype=torch.float64, requires_grad=True)
        out = reference.fixed_branch(y, bank.double(), mode, stop, identity, order)
        (expected,) = torch.autograd.grad(out, y, g.double())
        with factoring("never"):
            grad = backward_op(g, bank, mode, stop, identity, order)
        assert_close(grad, expected, dtype, f"{k} filters, stop {stop}, identity {identity}, {order}, {layout}, {mode}")


# Banks of factored and direct filters (Gabor banks: filters at 0 and 90 degrees factor, the oblique ones do not): at
# stride 1 the direct filters' gather reads the gradient's rows where they lie (contiguous) or staged (sliced,
# expanded, channels_last), its sums starting from the identity's gradient in zero mode, and the factored filters'
# passes add theirs. Stopped direct and factored filters, no identity, every padding mode, both orders, every dtype.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("s", [(3, 3), (5, 5), (11, 11), (5, 7)], ids=str)
def test_banks_of_factored_and_direct_filters_gradients_match_reference(s, dtype):
    gen = torch.Generator().manual_seed(31 + 5 * s[0] + s[1])
    factored, direct = separable_bank(4, *s, gen), torch.randn(3, *s, generator=gen, dtype=torch.float64)
    bank = torch.cat([direct[:1], factored, direct[1:]])  # direct filters first, between and after factored ones
    cases = zip(PADDING_MODES * 2, ((), (1,), (2, 4), (0,), (), (1, 7)), (True, True, False, True, False, True),
                ORDERS * 3, ("contiguous", "sliced", "contiguous", "expanded", "channels_last", "contiguous"))
    for mode, stop, identity, order, layout in cases:
        g = make_grad((2, 3 * (len(bank) + int(identity)), 14, 37), dtype, "cpu", layout, gen)
        y = torch.zeros(2, 3, 14, 37, dtype=torch.float64, requires_grad=True)
        out = reference.fixed_branch(y, bank, mode, stop, identity, order)
        (expected,) = torch.autograd.grad(out, y, g.double())
        with factoring("always"):
            grad = backward_op(g, bank.to(dtype), mode, stop, identity, order)
        assert_close(grad, expected, dtype, f"stop {stop}, identity {identity}, {order}, {layout}, {mode}")
