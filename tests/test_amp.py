"""Autocast: the fused layers take the autocast dtype as nn.Conv2d does, and match the reference there."""

import pytest
import torch
from torch import nn

import fixedbranch as fb
from fixedbranch import reference

from .common import assert_close, cpu_and_cuda

HALF_DTYPES = (torch.bfloat16, torch.float16)
BANK = fb.filters.bank("sobel_x", "laplacian4", fb.filters.gaussian(5, 1.0))


def _layer_and_conv(device):
    torch.manual_seed(0)
    layer = fb.FixedBranchConv2d(3, 4, 3, bank=BANK, padding=1, filter_padding_mode="reflect").to(device)
    conv = nn.Conv2d(3, 4, 3, padding=1).to(device)
    conv.load_state_dict(layer.state_dict())
    return layer, conv


def _rounded(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """What autocast feeds the kernels, in float64: the value rounded to the autocast dtype."""
    return t.detach().to(dtype).double()


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("input_dtype", [torch.float32, "autocast"])
def test_conv_layer_takes_the_autocast_dtype_like_nn_conv2d(device, dtype, input_dtype):
    layer, conv = _layer_and_conv(device)
    x = torch.randn(2, 3, 10, 9, device=device)
    # "autocast": the input comes from an earlier autocast layer, so it is already in half precision while the
    # weight stays float32, which nn.Conv2d accepts under autocast.
    x = (x.to(dtype) if input_dtype == "autocast" else x).requires_grad_()
    with torch.autocast(device, dtype=dtype):
        out = layer(x)
        plain = conv(x)
    assert out.dtype == plain.dtype == dtype
    bank = _rounded(BANK, dtype).to(device)
    expected = reference.fixed_branch_conv2d(
        _rounded(x, dtype), _rounded(layer.weight, dtype), _rounded(layer.bias, dtype), bank, padding=1,
        padding_mode="reflect",
    )
    assert_close(out, expected, dtype, "forward")

    # Backward: autograd undoes the casts, so the gradients have the parameters' and the input's dtypes.
    g = torch.randn(out.shape, device=device)
    out.backward(g.to(dtype))
    assert layer.weight.grad.dtype == torch.float32 and x.grad.dtype == x.dtype
    w = _rounded(layer.weight, dtype).requires_grad_()
    x64 = _rounded(x, dtype).requires_grad_()
    ref_out = reference.fixed_branch_conv2d(x64, w, _rounded(layer.bias, dtype), bank, padding=1,
                                            padding_mode="reflect")
    grad_x, grad_w = torch.autograd.grad(ref_out, (x64, w), _rounded(g, dtype))
    assert_close(layer.weight.grad, grad_w, dtype, "weight gradient")
    assert_close(x.grad, grad_x, dtype, "input gradient")


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_fixed_branch_runs_in_the_autocast_dtype(device, dtype):
    # The branches are depthwise convolutions, and conv2d is on autocast's lower-precision list: a float32 input
    # is cast, as it would be for the depthwise convolutions this replaces.
    y = torch.randn(2, 4, 9, 8, device=device)
    layer = fb.FixedBranch(BANK, "circular").to(device)
    with torch.autocast(device, dtype=dtype):
        out = layer(y)
        direct = fb.fixed_branch(y, BANK.to(device), "circular")
    assert out.dtype == direct.dtype == dtype
    expected = reference.fixed_branch(_rounded(y, dtype), _rounded(BANK, dtype).to(device), "circular")
    assert_close(out, expected, dtype, "FixedBranch")
    assert torch.equal(out, direct)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_autocast_dtype_is_read_at_each_call(device):
    layer, _ = _layer_and_conv(device)
    x = torch.randn(1, 3, 8, 8, device=device)
    for dtype in (torch.bfloat16, torch.float16, torch.bfloat16):
        with torch.autocast(device, dtype=dtype):
            assert layer(x).dtype == dtype
            with torch.autocast(device, enabled=False):
                assert layer(x).dtype == torch.float32
    assert layer(x).dtype == torch.float32


def test_training_step_under_autocast_and_compile():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), fb.FixedBranchConv2d(4, 4, 3, bank=BANK, padding=1),
        fb.FixedBranch(fb.filters.bank("sobel_y")), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 3),
    )
    x, target = torch.randn(4, 3, 12, 12), torch.tensor([0, 1, 2, 1])

    def loss_fn(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return nn.functional.cross_entropy(model(x), target)

    eager = loss_fn(x)
    eager_grads = torch.autograd.grad(eager, list(model.parameters()))
    compiled = torch.compile(loss_fn, backend="aot_eager", fullgraph=True)
    loss = compiled(x)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert_close(loss, eager, torch.bfloat16, "loss")
    for got, want in zip(grads, eager_grads):
        assert got.dtype == torch.float32 and torch.isfinite(got).all()
        assert_close(got, want, torch.bfloat16, "gradient")
