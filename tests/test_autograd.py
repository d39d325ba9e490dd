"""gradcheck, gradgradcheck and torch.library.opcheck on every operator."""

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import fixedbranch as fb

from .common import PADDING_MODES, cpu_and_cuda


def _bank(device):
    # Odd, even and non-square filters in one bank: 3x3 sobel, a 2x2 and a 1x3, zero-padded to 3x3.
    return fb.filters.bank("sobel_x", torch.tensor([[1.0, -2.0], [0.5, 3.0]]), torch.tensor([[1.0, 2.0, -1.0]])).to(
        device
    )


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("mode", PADDING_MODES)
@pytest.mark.parametrize("stop", [(), (0,), (1, 3)])
def test_fixed_branch_gradcheck(mode, stop, device):
    y = torch.randn(2, 2, 5, 6, dtype=torch.float64, device=device, requires_grad=True)
    bank = _bank(device)
    fn = lambda t: fb.fixed_branch(t, bank, mode, stop)  # noqa: E731
    if not stop:  # a stopped branch's gradient is zero by design, not the numerical derivative
        assert gradcheck(fn, (y,))
    # The backward is linear in g, stop set included: its own derivative must be exact.
    assert gradgradcheck(fn, (y,))


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("mode", PADDING_MODES)
def test_fixed_branch_gradcheck_non_square_filter(mode, device):
    y = torch.randn(1, 2, 6, 5, dtype=torch.float64, device=device, requires_grad=True)
    bank = torch.randn(2, 4, 1, dtype=torch.float64, device=device)
    fn = lambda t: fb.fixed_branch(t, bank, mode)  # noqa: E731
    assert gradcheck(fn, (y,))
    assert gradgradcheck(fn, (y,))


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("mode", PADDING_MODES)
def test_fixed_branch_conv2d_gradcheck(mode, device):
    opts = dict(dtype=torch.float64, device=device, requires_grad=True)
    x, w, b = torch.randn(1, 2, 6, 7, **opts), torch.randn(2, 1, 3, 2, **opts), torch.randn(2, **opts)
    bank = _bank(device)
    fn = lambda x, w, b: fb.fixed_branch_conv2d(x, w, b, bank, (1, 2), 1, 1, 2, mode)  # noqa: E731
    assert gradcheck(fn, (x, w, b))
    # Second order goes through ATen's convolution double backward too: the fast (random-projection) mode
    # keeps it to seconds.
    assert gradgradcheck(fn, (x, w, b), fast_mode=True)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_branch_contributions_gradcheck(device):
    g = torch.randn(1, 8, 4, 5, dtype=torch.float64, device=device, requires_grad=True)
    bank = _bank(device)
    assert gradcheck(lambda t: fb.branch_contributions(t, bank, "reflect"), (g,))


def _opcheck_samples(device):
    bank = _bank(device)
    y = torch.randn(2, 3, 6, 7, device=device)
    samples = []
    for mode, stop in (("zeros", []), ("reflect", [0]), ("replicate", [2]), ("circular", [1, 3])):
        yy = y.clone().requires_grad_(True)
        samples.append(("fixed_branch", (yy, bank.float(), mode, stop)))
        g = torch.randn(2, 12, 6, 7, device=device)
        samples.append(("_fixed_branch_backward", (g, bank.float(), mode, stop)))
    samples.append(("fixed_branch", (y.contiguous(memory_format=torch.channels_last), bank.float(), "zeros", [])))
    samples.append(("fixed_branch", (y.double().requires_grad_(True), bank, "reflect", [])))
    expanded = torch.randn(1, 12, 1, 7, device=device).expand(2, 12, 6, 7)
    samples.append(("_fixed_branch_backward", (expanded, bank.float(), "zeros", [])))
    x = torch.randn(2, 4, 9, 8, device=device, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, device=device, requires_grad=True)
    b = torch.randn(6, device=device, requires_grad=True)
    samples.append(("fixed_branch_conv2d", (x, w, b, bank.float(), [1, 1], [1, 0], [1, 1], 2, "circular", [0])))
    samples.append(("fixed_branch_conv2d", (x, w, None, bank.float(), [2, 1], [0, 0], [1, 2], 2, "zeros", [])))
    return samples


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_opcheck(device):
    for name, args in _opcheck_samples(device):
        op = getattr(torch.ops.fixedbranch, name).default
        torch.library.opcheck(op, args)
