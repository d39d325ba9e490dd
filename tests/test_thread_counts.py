"""The CPU kernels give bit-identical outputs and gradients whatever the number of threads: each task gathers its own
rows in a fixed order, and the tiling depends on the sizes only."""

import pytest
import torch

import fixedbranch as fb

from .common import backward_op, factoring, separable_bank, to_layout

# (stride, padding mode, layout, factored): strided and unequal strides, every mode, both layouts, both paths.
CASES = [
    (1, "zeros", "contiguous", False),
    (2, "reflect", "channels_last", False),
    ((3, 1), "circular", "contiguous", True),
    ((1, 2), "replicate", "channels_last", True),
    (3, "zeros", "transposed", True),
]


@pytest.mark.parametrize("stride,mode,layout,factored", CASES)
def test_results_do_not_depend_on_the_thread_count(stride, mode, layout, factored):
    gen = torch.Generator().manual_seed(0)
    # Enough rows and channels for several tasks per thread.
    y = to_layout(torch.randn(2, 6, 70, 45, generator=gen), layout)
    bank = (separable_bank(5, 5, 3, gen) if factored else torch.randn(5, 5, 3, generator=gen, dtype=torch.float64))
    bank = bank.float()
    threads = torch.get_num_threads()
    results = []
    try:
        with factoring("always" if factored else "never"):
            for n in (1, 2, 3):
                torch.set_num_threads(n)
                out = fb.fixed_branch(y, bank, mode, stride=stride)
                g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
                results.append((out, backward_op(g, bank, mode, stride=stride, input_size=y.shape[2:])))
    finally:
        torch.set_num_threads(threads)
    for out, grad in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(grad, results[0][1])
