"""gradcheck, gradgradcheck and torch.library.opcheck on every operator."""

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import fixedbranch as fb

from .common import PADDING_MODES, backward_op, cpu_and_cuda, factoring


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
def test_symmetric_bank_gradcheck(mode, device):
    # Gaussians and LoGs run direct: on the CPU their backward sums class mixes of the gradients (equal taps).
    sigmas = (0.8, 1.2, 1.6)
    bank = fb.filters.bank(*(fb.filters.gaussian(5, s) for s in sigmas), *(fb.filters.log(5, s) for s in sigmas))
    y = torch.randn(2, 2, 7, 9, dtype=torch.float64, device=device, requires_grad=True)
    fn = lambda t: fb.fixed_branch(t, bank.to(device), mode, (2,))  # noqa: E731
    with factoring("never"):
        assert gradgradcheck(fn, (y,))
        assert gradcheck(lambda t: fb.fixed_branch(t, bank.to(device), mode), (y,))


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


# Strides (square, non-square, larger than the filter) with either order, with and without the identity.
OPTION_CASES = [
    ("zeros", dict(identity=False, order="branch", stride=2)),
    ("reflect", dict(identity=True, order="channel", stride=(2, 1))),
    ("replicate", dict(identity=False, order="channel", stride=(1, 3))),
    ("circular", dict(identity=True, order="branch", stride=3)),
]


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("mode,options", OPTION_CASES,
                         ids=["-".join([m, *(f"{k}={v}" for k, v in o.items())]) for m, o in OPTION_CASES])
def test_fixed_branch_gradcheck_with_output_options(mode, options, device):
    y = torch.randn(1, 2, 7, 6, dtype=torch.float64, device=device, requires_grad=True)
    bank = _bank(device)
    assert gradcheck(lambda t: fb.fixed_branch(t, bank, mode, **options), (y,))
    # A stopped filter branch: the derivative of the backward is still exact.
    assert gradgradcheck(lambda t: fb.fixed_branch(t, bank, mode, (2,), **options), (y,))


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("stop", [(), (1,), (0, 2)])
def test_backward_operator_is_linear_with_exact_adjoint(stop, device):
    """The backward operator's own backward is its exact adjoint (the forward with stopped branches zeroed), with a
    stride that leaves y's last row and column unsampled."""
    bank = _bank(device)
    g = torch.randn(1, 8, 3, 4, dtype=torch.float64, device=device, requires_grad=True)
    assert gradcheck(lambda t: backward_op(t, bank, "reflect", stop, True, "channel", (2, 2), (6, 8)), (g,))
    g = torch.randn(1, 6, 6, 3, dtype=torch.float64, device=device, requires_grad=True)
    stop = [k for k in stop if k]  # branch 0 is not in an output without the identity
    assert gradcheck(lambda t: backward_op(t, bank, "circular", stop, False, "branch", (1, 2), (6, 6)), (g,))


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_fixed_branch_conv2d_gradcheck_with_output_options(device):
    opts = dict(dtype=torch.float64, device=device, requires_grad=True)
    x, w, b = torch.randn(1, 2, 7, 8, **opts), torch.randn(2, 2, 3, 3, **opts), torch.randn(2, **opts)
    bank = _bank(device)
    fn = lambda x, w, b: fb.fixed_branch_conv2d(x, w, b, bank, 1, 1, 1, 1, "reflect", (), False,  # noqa: E731
                                                "channel", (2, 3))
    assert gradcheck(fn, (x, w, b))
    assert gradgradcheck(fn, (x, w, b), fast_mode=True)


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_branch_contributions_gradcheck(device):
    g = torch.randn(1, 8, 4, 5, dtype=torch.float64, device=device, requires_grad=True)
    bank = _bank(device)
    assert gradcheck(lambda t: fb.branch_contributions(t, bank, "reflect"), (g,))
    g = torch.randn(1, 6, 2, 3, dtype=torch.float64, device=device, requires_grad=True)
    assert gradcheck(lambda t: fb.branch_contributions(t, bank, "zeros", identity=False, order="channel", stride=2,
                                                       input_size=(4, 5)), (g,))


def _opcheck_samples(device):
    """(id, operator, args): every operator with every option, in both layouts, float32 and float64."""
    bank = _bank(device)
    y = torch.randn(2, 3, 7, 6, device=device)
    samples = []
    cases = (
        ("zeros", [], True, "branch", [1, 1]),
        ("reflect", [0], True, "channel", [2, 2]),
        ("replicate", [2], False, "branch", [2, 1]),
        ("circular", [1, 3], False, "channel", [1, 3]),
    )
    for mode, stop, identity, order, stride in cases:
        tag = f"{mode}-{stop}-{identity}-{order}-{stride}"
        samples.append((f"forward-{tag}", "fixed_branch",
                        (y.clone().requires_grad_(True), bank.float(), mode, stop, identity, order, stride)))
        out_size = [(7 - 1) // stride[0] + 1, (6 - 1) // stride[1] + 1]
        g = torch.randn(2, 3 * (3 + identity), *out_size, device=device)
        samples.append((f"backward-{tag}", "_fixed_branch_backward",
                        (g.requires_grad_(True), bank.float(), mode, stop, identity, order, stride, [7, 6])))
    channels_last = y.contiguous(memory_format=torch.channels_last)
    samples.append(("forward-channels_last", "fixed_branch",
                    (channels_last, bank.float(), "zeros", [], False, "channel", [2, 2])))
    samples.append(("forward-float64", "fixed_branch",
                    (y.double().requires_grad_(True), bank, "reflect", [], True, "branch", [1, 2])))
    expanded = torch.randn(1, 12, 1, 3, device=device).expand(2, 12, 4, 3)
    samples.append(("backward-expanded", "_fixed_branch_backward",
                    (expanded, bank.float(), "zeros", [], True, "channel", [2, 2], [7, 6])))
    x = torch.randn(2, 4, 9, 8, device=device, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, device=device, requires_grad=True)
    b = torch.randn(6, device=device, requires_grad=True)
    samples.append(("conv-circular", "fixed_branch_conv2d",
                    (x, w, b, bank.float(), [1, 1], [1, 0], [1, 1], 2, "circular", [0], True, "branch", [1, 1])))
    samples.append(("conv-strided", "fixed_branch_conv2d",
                    (x, w, None, bank.float(), [2, 1], [0, 0], [1, 2], 2, "zeros", [], False, "channel", [2, 3])))
    samples.append(("conv-channels_last", "fixed_branch_conv2d",
                    (x.detach().contiguous(memory_format=torch.channels_last), w, b, bank.float(), [1, 1], [1, 1],
                     [1, 1], 2, "reflect", [2], True, "channel", [2, 2])))
    return samples


OPCHECK_IDS = [name for name, _, _ in _opcheck_samples("cpu")]


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("sample", range(len(OPCHECK_IDS)), ids=OPCHECK_IDS)
def test_opcheck(sample, device):
    _, name, args = _opcheck_samples(device)[sample]
    torch.library.opcheck(getattr(torch.ops.fixedbranch, name).default, args)
