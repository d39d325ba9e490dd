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
