"""The reference itself: small cases worked by hand, and the adjoint identity behind its gradient."""

import pytest
import torch
import torch.nn.functional as F

from fixedbranch import filters, reference

from .common import PADDING_MODES

IMAGE = torch.tensor([[1.0, 2.0, 4.0], [3.0, 5.0, 7.0], [6.0, 8.0, 9.0]], dtype=torch.float64)


def _sobel_x_at(padded: torch.Tensor, i: int, j: int) -> float:
    """sobel_x response at (i, j) of the unpadded image, by the definition of cross-correlation."""
    w = filters.sobel_x()
    return sum(w[a, b].item() * padded[i + a, j + b].item() for a in range(3) for b in range(3))


# The 3x3 image padded by one pixel in each mode, written out by hand.
PADDED_BY_HAND = {
    "zeros": [[0, 0, 0, 0, 0], [0, 1, 2, 4, 0], [0, 3, 5, 7, 0], [0, 6, 8, 9, 0], [0, 0, 0, 0, 0]],
    "reflect": [[5, 3, 5, 7, 5], [2, 1, 2, 4, 2], [5, 3, 5, 7, 5], [8, 6, 8, 9, 8], [5, 3, 5, 7, 5]],
    "replicate": [[1, 1, 2, 4, 4], [1, 1, 2, 4, 4], [3, 3, 5, 7, 7], [6, 6, 8, 9, 9], [6, 6, 8, 9, 9]],
    "circular": [[9, 6, 8, 9, 6], [4, 1, 2, 4, 1], [7, 3, 5, 7, 3], [9, 6, 8, 9, 6], [4, 1, 2, 4, 1]],
}


@pytest.mark.parametrize("mode", PADDING_MODES)
def test_sobel_on_tiny_image_by_hand(mode):
    padded = torch.tensor(PADDED_BY_HAND[mode], dtype=torch.float64)
    expected = torch.tensor([[_sobel_x_at(padded, i, j) for j in range(3)] for i in range(3)], dtype=torch.float64)
    out = reference.fixed_branch(IMAGE.view(1, 1, 3, 3), filters.bank("sobel_x"), mode)
    assert out.shape == (1, 2, 3, 3)
    assert torch.equal(out[0, 0], IMAGE)
    assert torch.allclose(out[0, 1], expected, rtol=0, atol=1e-12)


def test_zero_padding_values_by_hand():
    out = reference.fixed_branch(IMAGE.view(1, 1, 3, 3), filters.bank("sobel_x"), "zeros")[0, 1]
    # Centre: (4 - 1) + 2 (7 - 3) + (9 - 6) = 14; top-left: 2*2 + 5 = 9.
    assert out[1, 1].item() == 14.0
    assert out[0, 0].item() == 9.0


def test_even_filter_pads_bottom_right():
    # A 2x2 filter of ones sums each pixel with its right, lower and lower-right neighbours ("same": pad after).
    out = reference.fixed_branch(IMAGE.view(1, 1, 3, 3), torch.ones(1, 2, 2, dtype=torch.float64))[0, 1]
    assert out[0, 0].item() == 1 + 2 + 3 + 5
    assert out[2, 2].item() == 9
    assert reference.same_padding((2, 2)) == (0, 1, 0, 1)
    assert reference.same_padding((4, 3)) == (1, 1, 1, 2)


def test_branch_major_order_and_stop_gradient():
    y = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    bank = filters.bank("sobel_x", "laplacian4")
    out = reference.fixed_branch(y, bank, stop_gradient=(0, 2))
    assert torch.equal(out[:, 3:6], F.conv2d(F.pad(y, (1, 1, 1, 1)), bank[0].expand(3, 1, 3, 3), groups=3))
    g = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, y, g)
    (only_sobel,) = torch.autograd.grad(reference.fixed_branch(y, bank[:1]), y, torch.cat([0 * g[:, :3], g[:, 3:6]], 1))
    assert torch.allclose(grad, only_sobel)


@pytest.mark.parametrize("mode", PADDING_MODES)
@pytest.mark.parametrize("size", [(3, 3), (2, 2), (4, 4), (5, 2), (1, 3), (1, 1)])
def test_adjoint_identity(mode, size):
    """<F(y), g> = <y, F^T(g)>: the reference's gradient is the adjoint, so dL/dy = g_0 + sum_k F_k^T g_k."""
    gen = torch.Generator().manual_seed(sum(size))
    bank = torch.randn(3, *size, generator=gen, dtype=torch.float64)
    y = torch.randn(2, 2, 6, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    out = reference.fixed_branch(y, bank, mode)
    g = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    (grad,) = torch.autograd.grad(out, y, g)
    # The forward is linear in y, so <out, g> = <y, dL/dy> exactly (up to round-off).
    assert torch.allclose((out * g).sum(), (y * grad).sum(), rtol=1e-12)
    # And each branch alone satisfies it, with its explicit adjoint: pad^T(conv_transpose(g_k)).
    for k in range(3):
        g_k = g[:, 2 * (k + 1) : 2 * (k + 2)]
        full = F.conv_transpose2d(g_k, bank[k].expand(2, 1, *size), groups=2)  # in padded coordinates
        left, right, top, bottom = reference.same_padding(size)
        mode_pad = {"zeros": "constant"}.get(mode, mode)
        pad_of = F.pad(y.detach(), (left, right, top, bottom), mode=mode_pad)
        # pad^T(full) by autograd of F.pad (a linear map): <pad(y), full> = <y, pad^T(full)>.
        y2 = y.detach().clone().requires_grad_(True)
        (pad_t,) = torch.autograd.grad(F.pad(y2, (left, right, top, bottom), mode=mode_pad), y2, full)
        assert torch.allclose((pad_of * full).sum(), (y.detach() * pad_t).sum(), rtol=1e-12)
        branch = reference.fixed_branch(y, bank[k : k + 1], mode)[:, 2:]
        assert torch.allclose((branch * g_k).sum(), (y.detach() * pad_t).sum(), rtol=1e-12)


def test_branch_contributions_reference_sums_to_gradient():
    y = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    bank = filters.bank("sobel_y", filters.gaussian(5, 1.5))
    out = reference.fixed_branch(y, bank, "reflect")
    g = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, y, g)
    shares = reference.branch_contributions(g, bank, "reflect")
    assert shares.shape == (3, 1, 2, 5, 6)
    assert torch.allclose(shares.sum(0), grad, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------- output options
# Each option against a formulation that shares no code with the reference: a loop over output pixels for the
# stride, explicit index arithmetic for the channel order, and the grouped convolution with a repeated bank that
# harmonic and predefined-filter networks write.


def _by_pixel_loop(y, bank, mode, stride):
    """Branch-major output with the identity, one output pixel at a time from the definition of strided
    cross-correlation: out[n, k*C + c, i, j] = sum_ab F_k[a, b] pad(y)[n, c, i*sH + a, j*sW + b]."""
    n, c, h, w = y.shape
    k, s1, s2 = bank.shape
    s_h, s_w = stride
    padded = F.pad(y, reference.same_padding((s1, s2)), mode=reference.PAD_MODE[mode])
    h_out, w_out = (h - 1) // s_h + 1, (w - 1) // s_w + 1
    out = torch.zeros(n, (k + 1) * c, h_out, w_out, dtype=y.dtype)
    for i in range(h_out):
        for j in range(w_out):
            out[:, :c, i, j] = y[:, :, i * s_h, j * s_w]
            window = padded[:, :, i * s_h : i * s_h + s1, j * s_w : j * s_w + s2]  # (N, C, S1, S2)
            for f in range(k):
                out[:, (f + 1) * c : (f + 2) * c, i, j] = (window * bank[f]).sum((2, 3))
    return out


@pytest.mark.parametrize("mode", PADDING_MODES)
@pytest.mark.parametrize("stride", [(1, 1), (2, 2), (3, 3), (2, 1), (1, 3), (4, 2)])
@pytest.mark.parametrize("size", [(3, 3), (2, 2), (4, 3), (1, 5)])
def test_stride_by_pixel_loop(size, stride, mode):
    gen = torch.Generator().manual_seed(sum(size) + 10 * sum(stride))
    bank = torch.randn(2, *size, generator=gen, dtype=torch.float64)
    y = torch.randn(2, 3, 7, 8, generator=gen, dtype=torch.float64)
    out = reference.fixed_branch(y, bank, mode, stride=stride)
    assert out.shape == (2, 9, reference.strided_size(7, stride[0]), reference.strided_size(8, stride[1]))
    assert torch.allclose(out, _by_pixel_loop(y, bank, mode, stride), rtol=1e-12, atol=1e-12)
    # An int stride means the same in both directions.
    if stride[0] == stride[1]:
        assert torch.equal(reference.fixed_branch(y, bank, mode, stride=stride[0]), out)


def test_strided_size():
    # (size - 1) // stride + 1 = ceil(size / stride): the pixels 0, s, 2s, ... below size.
    for size in range(1, 12):
        for stride in range(1, 6):
            assert reference.strided_size(size, stride) == len(range(0, size, stride))


@pytest.mark.parametrize("identity", [True, False])
@pytest.mark.parametrize("stride", [1, (2, 1)])
def test_channel_order_by_index(identity, stride):
    """out_channel[:, c*B + b] = out_branch[:, b*C + c] for every branch b and channel c, written out."""
    gen = torch.Generator().manual_seed(3)
    bank = torch.randn(3, 3, 2, generator=gen, dtype=torch.float64)
    y = torch.randn(2, 4, 6, 5, generator=gen, dtype=torch.float64)
    c, b_count = 4, 3 + identity
    by_branch = reference.fixed_branch(y, bank, "reflect", identity=identity, order="branch", stride=stride)
    by_channel = reference.fixed_branch(y, bank, "reflect", identity=identity, order="channel", stride=stride)
    assert by_branch.shape == by_channel.shape == (2, b_count * c, *by_branch.shape[2:])
    for ch in range(c):
        for b in range(b_count):
            assert torch.equal(by_channel[:, ch * b_count + b], by_branch[:, b * c + ch]), (ch, b)


def test_without_identity_drops_branch_zero():
    gen = torch.Generator().manual_seed(4)
    bank = torch.randn(2, 3, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(1, 3, 5, 7, generator=gen, dtype=torch.float64)
    for stride in (1, 2, (1, 3)):
        full = reference.fixed_branch(y, bank, "replicate", stride=stride)
        assert torch.equal(reference.fixed_branch(y, bank, "replicate", identity=False, stride=stride), full[:, 3:])
        s_h, s_w = (stride, stride) if isinstance(stride, int) else stride
        assert torch.equal(full[:, :3], y[:, :, ::s_h, ::s_w])


def _delta(size):
    """The filter that picks the pixel itself under "same" padding: a one at (top, left)."""
    left, _, top, _ = reference.same_padding(size)
    delta = torch.zeros(size, dtype=torch.float64)
    delta[top, left] = 1
    return delta


@pytest.mark.parametrize("mode", PADDING_MODES)
@pytest.mark.parametrize("stride", [1, 2, (1, 2), (3, 2)])
@pytest.mark.parametrize("identity", [False, True])
def test_channel_order_is_grouped_conv_with_repeated_bank(identity, stride, mode):
    """Harmonic networks apply a bank to every channel as one grouped convolution whose weight repeats the bank
    per channel (channel c*K + k holds filter k): that is order="channel", and with the identity as a delta filter
    in front of the bank, identity=True."""
    gen = torch.Generator().manual_seed(5)
    size = (4, 3)
    bank = torch.randn(3, *size, generator=gen, dtype=torch.float64)
    y = torch.randn(2, 5, 9, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    filters_ = torch.cat([_delta(size)[None], bank]) if identity else bank
    weight = filters_.repeat(5, 1, 1).unsqueeze(1)  # (C*B, 1, S1, S2)
    padded = F.pad(y, reference.same_padding(size), mode=reference.PAD_MODE[mode])
    grouped = F.conv2d(padded, weight, stride=stride, groups=5)
    out = reference.fixed_branch(y, bank, mode, identity=identity, order="channel", stride=stride)
    assert torch.allclose(out, grouped, rtol=1e-12, atol=1e-12)
    g = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    (grad,) = torch.autograd.grad(out, y, g)
    (grouped_grad,) = torch.autograd.grad(grouped, y, g)
    assert torch.allclose(grad, grouped_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("order", ["branch", "channel"])
def test_stop_gradient_with_output_options(order):
    """A stopped branch sends nothing back whatever the order and stride: dL/dy equals the gradient of the output
    with that branch's slots zeroed."""
    gen = torch.Generator().manual_seed(6)
    bank = filters.bank("sobel_x", "laplacian4", "sobel_y")
    y = torch.randn(2, 3, 8, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    opts = dict(identity=False, order=order, stride=(2, 1))
    out = reference.fixed_branch(y, bank, "reflect", (2,), **opts)
    g = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    (grad,) = torch.autograd.grad(out, y, g)
    # Without the identity, filter 2 is output branch 1: channels [C, 2C) branch-major, c*3 + 1 channel-major.
    slots = slice(3, 6) if order == "branch" else slice(1, None, 3)
    masked = g.clone()
    masked[:, slots] = 0
    (expected,) = torch.autograd.grad(reference.fixed_branch(y, bank, "reflect", (), **opts), y, masked)
    assert torch.allclose(grad, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stride", [(2, 2), (3, 1)])
def test_strided_adjoint_identity(stride):
    """<F_s(y), g> = <y, F_s^T(g)> with the stride, and F_s^T scatters g onto the sampled pixels before the
    ordinary adjoint: F_s^T(g) = F^T(zero-upsampled g)."""
    gen = torch.Generator().manual_seed(7)
    bank = torch.randn(2, 3, 2, generator=gen, dtype=torch.float64)
    y = torch.randn(1, 2, 7, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    out = reference.fixed_branch(y, bank, "circular", stride=stride)
    g = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    (grad,) = torch.autograd.grad(out, y, g)
    assert torch.allclose((out * g).sum(), (y * grad).sum(), rtol=1e-12)
    dense = reference.fixed_branch(y, bank, "circular")
    upsampled = torch.zeros(dense.shape, dtype=torch.float64)
    upsampled[:, :, :: stride[0], :: stride[1]] = g
    (dense_grad,) = torch.autograd.grad(dense, y, upsampled)
    assert torch.allclose(grad, dense_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("identity", [True, False])
@pytest.mark.parametrize("order", ["branch", "channel"])
def test_branch_contributions_reference_with_output_options(order, identity):
    gen = torch.Generator().manual_seed(8)
    bank = filters.bank("sobel_y", filters.gaussian(5, 1.5))
    y = torch.randn(2, 3, 9, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    opts = dict(identity=identity, order=order, stride=(2, 3))
    out = reference.fixed_branch(y, bank, "reflect", **opts)
    g = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    (grad,) = torch.autograd.grad(out, y, g)
    shares = reference.branch_contributions(g, bank, "reflect", **opts, input_size=(9, 6))
    branches = 2 + identity
    assert shares.shape == (branches, 2, 3, 9, 6)
    assert torch.allclose(shares.sum(0), grad, rtol=1e-12, atol=1e-12)
    # Share b is the gradient of output branch b alone, whatever the order: the same as branch-major with g
    # permuted to branch-major.
    g_branch = g if order == "branch" else g.reshape(2, 3, branches, *g.shape[2:]).transpose(1, 2).reshape(g.shape)
    by_branch = reference.branch_contributions(g_branch, bank, "reflect", identity, "branch", (2, 3), (9, 6))
    assert torch.allclose(shares, by_branch, rtol=1e-12, atol=1e-12)
    for b in range(branches):
        alone = torch.zeros_like(g_branch)
        alone[:, b * 3 : (b + 1) * 3] = g_branch[:, b * 3 : (b + 1) * 3]
        (expected,) = torch.autograd.grad(
            reference.fixed_branch(y, bank, "reflect", identity=identity, stride=(2, 3)), y, alone
        )
        assert torch.allclose(shares[b], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("order", ["branch", "channel"])
def test_memory_format_follows_y(order):
    y = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    bank = filters.bank("sobel_x")
    for stride in (1, 2):
        out = reference.fixed_branch(y.contiguous(memory_format=torch.channels_last), bank, order=order,
                                     stride=stride)
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert reference.fixed_branch(y, bank, order=order, stride=stride).is_contiguous()
