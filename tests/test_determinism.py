"""Results are bit-identical run to run and, for the branch kernels, across thread counts (no atomics, no split
sums in the gradient path)."""

import pytest
import torch

import fixedbranch as fb


# ---------------------------------------------------------------------------------------------- determinism


def _branch_run():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(4, 8, 48, 40, generator=g, requires_grad=True)
    bank = fb.filters.bank("sobel_x", "sobel_y", fb.filters.gaussian(5, 1.0), torch.randn(4, 3, generator=g))
    out = fb.fixed_branch(y, bank, "reflect", stop_gradient=(2,))
    grad = torch.randn(out.shape, generator=g).contiguous(memory_format=torch.channels_last)
    return [out, *torch.autograd.grad(out, y, grad)]


def _options_run():
    g = torch.Generator().manual_seed(2)
    y = torch.randn(4, 8, 47, 41, generator=g, requires_grad=True).contiguous(memory_format=torch.channels_last)
    bank = fb.filters.bank("sobel_x", "sobel_y", fb.filters.gaussian(5, 1.0))
    out = fb.fixed_branch(y, bank, "circular", stop_gradient=(1,), identity=False, order="channel", stride=(2, 3))
    return [out, *torch.autograd.grad(out, y, torch.randn(out.shape, generator=g))]


def _conv_run():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 40, 36, generator=g, requires_grad=True)
    w = torch.randn(8, 3, 3, 3, generator=g, requires_grad=True)
    out = fb.fixed_branch_conv2d(x, w, None, fb.filters.bank("laplacian8", "scharr_y"), padding=1,
                                 padding_mode="replicate")
    return [out, *torch.autograd.grad(out, (x, w), torch.randn(out.shape, generator=g))]


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_bit_identical_run_to_run_and_across_thread_counts(restore_threads):
    torch.set_num_threads(2)
    branch, options, conv = _branch_run(), _options_run(), _conv_run()
    for again, first in zip(_branch_run() + _options_run() + _conv_run(), branch + options + conv):
        assert torch.equal(again, first)
    torch.set_num_threads(1)
    # The branch kernels give every thread whole planes to write (no atomics, no split sums): the thread count
    # cannot change a bit. fixed_branch_conv2d's weight gradient comes from ATen's convolution backward, whose
    # reductions may be split by thread count, so that operator is checked run to run only.
    for single, first in zip(_branch_run() + _options_run(), branch + options):
        assert torch.equal(single, first)
