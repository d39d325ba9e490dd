"""The fused ops against the pure-PyTorch reference: forward and gradients over random configurations.

Each case draws sizes (1x1 images and images smaller than the filter included), a bank (odd, even and non-square
filters), a padding mode, a stop set, a dtype, an input layout and a gradient layout from a seeded generator, so
that every run checks the same several hundred cases.
"""

import random

import pytest
import torch

import fixedbranch as fb
from fixedbranch import reference

from .common import PADDING_MODES, assert_close, cpu_and_cuda

DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
INPUT_LAYOUTS = ("contiguous", "channels_last", "transposed", "sliced")
GRAD_LAYOUTS = ("dense", "channels_last", "expanded", "transposed")


def _layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as t in another memory layout."""
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "transposed":  # H and W swapped in memory: neither NCHW nor channels_last
        return t.transpose(2, 3).contiguous().transpose(2, 3)
    if layout == "sliced":  # every other column of a wider tensor: stride_w = 2
        wide = torch.zeros(*t.shape[:3], 2 * t.shape[3], dtype=t.dtype, device=t.device)
        wide[..., ::2] = t
        return wide[..., ::2]
    return t.contiguous()


def _grad(shape, dtype, device, layout: str, gen: torch.Generator) -> torch.Tensor:
    if layout == "expanded":  # zero strides, as autograd hands out for sum() and broadcasting
        return torch.randn(1, shape[1], 1, shape[3], generator=gen, dtype=torch.float64).to(dtype).to(device).expand(
            shape
        )
    return _layout(torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype).to(device), layout)


def _random_case(seed: int):
    rnd = random.Random(seed)
    s1, s2 = rnd.choice([(1, 1), (2, 2), (3, 3), (3, 3), (5, 5), (4, 3), (1, 5), (7, 7), (6, 2), (3, 7)])
    mode = rnd.choice(PADDING_MODES)
    # Reflect needs the image larger than the padding, circular at least as large.
    lo_h = {"reflect": s1 // 2 + 1, "circular": max(1, s1 // 2)}.get(mode, 1)
    lo_w = {"reflect": s2 // 2 + 1, "circular": max(1, s2 // 2)}.get(mode, 1)
    h, w = rnd.randint(lo_h, lo_h + 12), rnd.randint(lo_w, lo_w + 20)
    k = rnd.randint(1, 8)
    return dict(
        n=rnd.randint(1, 3),
        c=rnd.choice([1, 2, 3, 5, 8, 17]),
        h=h,
        w=w,
        k=k,
        s=(s1, s2),
        mode=mode,
        stop=sorted(rnd.sample(range(k + 1), rnd.randint(0, min(2, k + 1)))),
        dtype=rnd.choice(DTYPES),
        layout=rnd.choice(INPUT_LAYOUTS),
        grad_layout=rnd.choice(GRAD_LAYOUTS),
    )


def _expected_dtype_inputs(y: torch.Tensor, bank: torch.Tensor):
    """Reference inputs: float64 copies of what the fused op computes with (its bank is rounded to y's dtype)."""
    return y.detach().double(), bank.to(y.dtype).double()


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("seed", range(240))
def test_fixed_branch_matches_reference(seed, device):
    case = _random_case(seed)
    gen = torch.Generator().manual_seed(seed)
    dtype = case["dtype"]
    shape = (case["n"], case["c"], case["h"], case["w"])
    bank = torch.randn(case["k"], *case["s"], generator=gen, dtype=torch.float64).to(device)
    y = _layout(torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype).to(device), case["layout"])
    y.requires_grad_(True)

    out = fb.fixed_branch(y, bank, case["mode"], case["stop"])
    y64, bank64 = _expected_dtype_inputs(y, bank)
    y64.requires_grad_(True)
    expected = reference.fixed_branch(y64, bank64, case["mode"], case["stop"])
    assert out.dtype == dtype and out.device == y.device
    assert_close(out, expected, dtype, f"forward {case}")
    # Branch 0 is an exact copy of y.
    assert torch.equal(out[:, : case["c"]], y.detach())
    if case["layout"] == "channels_last" and case["c"] > 1:
        assert out.is_contiguous(memory_format=torch.channels_last)

    g = _grad(out.shape, dtype, device, case["grad_layout"], gen)
    (grad,) = torch.autograd.grad(out, y, g)
    if len(case["stop"]) == case["k"] + 1:
        assert torch.count_nonzero(grad) == 0
    else:
        (expected_grad,) = torch.autograd.grad(expected, y64, g.double())
        assert_close(grad, expected_grad, dtype, f"gradient {case}")


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("seed", range(60))
def test_fixed_branch_conv2d_matches_reference(seed, device):
    rnd = random.Random(1000 + seed)
    gen = torch.Generator().manual_seed(1000 + seed)
    dtype = rnd.choice((torch.float64, torch.float32, torch.float32, torch.bfloat16))
    groups = rnd.choice([1, 1, 2])
    cin, cout = groups * rnd.randint(1, 3), groups * rnd.randint(1, 4)
    kh, kw = rnd.choice([(1, 1), (3, 3), (2, 3), (5, 5)])
    stride, padding, dilation = rnd.choice([1, 2, (1, 2)]), rnd.choice([0, 1, (2, 1)]), rnd.choice([1, 2])
    mode = rnd.choice(PADDING_MODES)
    s = rnd.choice([(3, 3), (2, 2), (5, 3)])
    k = rnd.randint(1, 5)
    stop = sorted(rnd.sample(range(k + 1), rnd.randint(0, 2)))
    x = torch.randn(rnd.randint(1, 3), cin, rnd.randint(12, 20), rnd.randint(12, 20), generator=gen,
                    dtype=torch.float64).to(dtype).to(device)
    x = _layout(x, rnd.choice(INPUT_LAYOUTS)).requires_grad_(True)
    weight = torch.randn(cout, cin // groups, kh, kw, generator=gen, dtype=torch.float64).to(dtype).to(device)
    weight.requires_grad_(True)
    bias = torch.randn(cout, generator=gen, dtype=torch.float64).to(dtype).to(device).requires_grad_(True)
    bank = torch.randn(k, *s, generator=gen, dtype=torch.float64).to(device)
    args = (stride, padding, dilation, groups, mode, stop)

    out = fb.fixed_branch_conv2d(x, weight, bias, bank, *args)
    leaves = [t.detach().double().requires_grad_(True) for t in (x, weight, bias)]
    expected = reference.fixed_branch_conv2d(*leaves, bank.to(dtype).double(), *args)
    # The half-precision conv itself rounds y; compare half types with a tolerance that covers that.
    assert_close(out, expected, dtype, "forward")
    g = _grad(out.shape, dtype, device, rnd.choice(GRAD_LAYOUTS), gen)
    grads = torch.autograd.grad(out, (x, weight, bias), g)
    if len(stop) == k + 1:  # every branch stopped: the reference's output has no graph at all
        assert all(torch.count_nonzero(a) == 0 for a in grads)
        return
    expected_grads = torch.autograd.grad(expected, leaves, g.double())
    half = dtype in (torch.float16, torch.bfloat16)
    if half:
        # ATen's conv backward sums dL/dy in the half dtype, so the layer's gradients carry that rounding whatever
        # computes dL/dy. Require them as close to the float64 truth as the reference run in the same dtype.
        same_dtype = [t.detach().requires_grad_(True) for t in (x, weight, bias)]
        plain = reference.fixed_branch_conv2d(*same_dtype, bank.to(dtype), *args)
        plain_grads = torch.autograd.grad(plain, same_dtype, g)
    for i, (name, a, e) in enumerate(zip(("x", "weight", "bias"), grads, expected_grads)):
        if half:
            err = ((a.double() - e).norm() / e.norm().clamp_min(1e-30)).item()
            err_plain = ((plain_grads[i].double() - e).norm() / e.norm().clamp_min(1e-30)).item()
            assert err <= max(1e-2, 2 * err_plain), f"grad {name}: {err:.2e} vs reference in {dtype}: {err_plain:.2e}"
        else:
            assert_close(a, e, dtype, f"grad {name}")


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("mode", PADDING_MODES)
def test_branch_contributions_sum_to_gradient(mode, device):
    gen = torch.Generator().manual_seed(7)
    bank = fb.filters.bank("sobel_x", "laplacian4", fb.filters.gaussian(5, 1.0)).to(device)
    y = torch.randn(2, 3, 9, 10, generator=gen, dtype=torch.float64).to(device).requires_grad_(True)
    out = fb.fixed_branch(y, bank, mode)
    g = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(device)
    (grad,) = torch.autograd.grad(out, y, g)
    shares = fb.branch_contributions(g, bank, mode)
    assert shares.shape == (4, 2, 3, 9, 10)
    assert_close(shares.sum(0), grad, torch.float64, "sum of shares")
    assert_close(shares, reference.branch_contributions(g, bank, mode), torch.float64, "shares")
    assert torch.equal(shares[0], g[:, :3])


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_modules_match_reference(device):
    torch.manual_seed(0)
    bank = fb.filters.bank("sobel_x", "sobel_y", "laplacian8").to(device)
    layer = fb.FixedBranchConv2d(3, 6, 3, bank, padding=1, filter_padding_mode="reflect", stop_gradient=(2,),
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


@pytest.mark.parametrize("conv_padding", ["same", "valid", 2])
@pytest.mark.parametrize("conv_mode", ["zeros", "reflect", "circular"])
def test_fixed_branch_conv2d_module_padding_as_nn_conv2d(conv_padding, conv_mode):
    torch.manual_seed(1)
    bank = fb.filters.bank("sobel_x", fb.filters.gaussian(4, 1.0))
    kernel = (4, 3)  # even: "same" pads asymmetrically
    layer = fb.FixedBranchConv2d(2, 3, kernel, bank, padding=conv_padding, padding_mode=conv_mode)
    conv = torch.nn.Conv2d(2, 3, kernel, padding=conv_padding, padding_mode=conv_mode)
    conv.load_state_dict(layer.state_dict())
    x = torch.randn(2, 2, 11, 13)
    assert_close(layer(x), reference.fixed_branch(conv(x), bank.float()), torch.float32, "conv padding")
