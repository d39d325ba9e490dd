"""Edge cases that are not errors behave as the reference does: an empty batch (N = 0), NaN and Inf, large banks
and filters."""

import pytest
import torch

import fixedbranch as fb
from fixedbranch import reference

from .common import PADDING_MODES, assert_close


# ------------------------------------------------------------------------------------------------------- N = 0


def test_empty_batch_forward_and_backward():
    bank = fb.filters.bank("sobel_x", "laplacian4")
    y = torch.zeros(0, 3, 8, 7, requires_grad=True)
    x = torch.zeros(0, 3, 8, 7, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    torch.manual_seed(0)
    layer = fb.FixedBranchConv2d(3, 4, 3, bank=bank, padding=1, filter_padding_mode="reflect")
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


# Symmetric banks run their forward over classes of equal taps, summing inputs before they are weighted: an infinity
# and its opposite in one class, or a NaN, must end as the reference's sum of products ends.
BANKS = {"edges": lambda: fb.filters.bank("sobel_x", "laplacian8", fb.filters.gaussian(5, 1.0)),
         "symmetric": lambda: fb.filters.bank(fb.filters.gaussian(5, 1.0), fb.filters.log(5, 1.0),
                                              fb.filters.gabor(5, 1.5, 0.0, 3.0))}


@pytest.mark.parametrize("bank_name", BANKS)
@pytest.mark.parametrize("options", [{}, dict(identity=False, order="channel", stride=(2, 1))],
                         ids=["default", "options"])
@pytest.mark.parametrize("padding_mode", PADDING_MODES)
def test_nan_and_inf_propagate_as_in_the_reference(padding_mode, options, bank_name):
    bank = BANKS[bank_name]().float()
    y = torch.randn(1, 2, 9, 8)
    y[0, 0, 4, 4] = float("nan")
    y[0, 0, 0, 1] = float("inf")
    y[0, 1, 8, 7] = float("-inf")
    y[0, 1, 2, 2], y[0, 1, 2, 6] = float("inf"), float("-inf")  # one class of a mirror-symmetric 5x5 filter
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
