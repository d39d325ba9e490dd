"""The CPU kernels fault in a fresh output's pages before writing it (csrc/cpu/output_memory.cpp): huge pages while
they are cheap, small pages otherwise, nothing for outputs under 2 MiB or memory already backed. Whatever path
that takes, every value must still be the kernel's: outputs of many huge pages, sizes that end mid-page, both
memory formats, one and all threads, fresh and recycled memory, and tiny outputs all match the reference."""

import pytest
import torch

import fixedbranch as fb
from fixedbranch import reference

from .common import assert_close, backward_op, to_layout

BANK = fb.filters.bank(fb.filters.sobel_x(), fb.filters.sobel_y(), fb.filters.laplacian4(), fb.filters.gaussian(3, 1.0))

# (N, C, H, W) of y: outputs of about 10 and 20 MiB (several huge pages; the second ends mid-page), one just under
# 2 MiB (left to the kernel's own writes), and tiny ones.
LARGE = [(2, 16, 128, 128), (1, 3, 1201, 397)]
SMALL = [(1, 6, 64, 128), (1, 1, 2, 2), (2, 3, 5, 7)]


@pytest.fixture(params=[1, None], ids=["1-thread", "all-threads"])
def threads(request):
    before = torch.get_num_threads()
    if request.param is not None:
        torch.set_num_threads(request.param)
    yield
    torch.set_num_threads(before)


def _check(shape, layout, dtype, repeats=2):
    gen = torch.Generator().manual_seed(sum(shape))
    y = to_layout(torch.randn(shape, generator=gen, dtype=dtype), layout)
    g = to_layout(torch.randn(shape[0], 5 * shape[1], *shape[2:], generator=gen, dtype=dtype), layout)
    expected = reference.fixed_branch(y.double(), BANK)
    y64 = y.double().requires_grad_()
    (expected_grad,) = torch.autograd.grad(reference.fixed_branch(y64, BANK), y64, g.double())
    # The second round's outputs reuse the memory the first round's just freed (or get fresh memory again, by the
    # allocator's choice): both must hold only the kernel's values.
    for _ in range(repeats):
        out = fb.fixed_branch(y, BANK)
        assert_close(out, expected, dtype, f"forward {shape} {layout}")
        grad_y = backward_op(g, BANK)
        assert_close(grad_y, expected_grad, dtype, f"backward {shape} {layout}")
        del out, grad_y


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", LARGE, ids=lambda s: "x".join(map(str, s)))
def test_large_outputs_match_reference(shape, layout, threads):
    _check(shape, layout, torch.float32)


def test_large_float64_output_matches_reference():
    _check((1, 8, 160, 160), "contiguous", torch.float64)


@pytest.mark.parametrize("shape", SMALL, ids=lambda s: "x".join(map(str, s)))
def test_small_outputs_match_reference(shape, threads):
    _check(shape, "contiguous", torch.float32)


def test_outputs_after_other_allocations_match_reference():
    # Memory freed by tensors of other sizes, part of it backed and part not, under the next outputs.
    for size_mib in (3, 24, 9, 40):
        junk = torch.ones(size_mib << 18)
        del junk
        _check(LARGE[0], "contiguous", torch.float32, repeats=1)
