"""Calls from several Python threads at once give exactly the results of the same calls made one after another."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import fixedbranch as fb

from .common import PADDING_MODES, cpu_and_cuda

CALLS = 50
THREADS = 4


def _call(i: int, device: str):
    """Forward and backward of both operators on inputs that depend on i (so mixed-up results would show)."""
    g = torch.Generator().manual_seed(i)
    mode = PADDING_MODES[i % len(PADDING_MODES)]
    bank = torch.randn(1 + i % 3, 3, 2 + i % 3, generator=g, dtype=torch.float64).to(device)
    x = torch.randn(2, 3, 9 + i % 4, 8, generator=g).to(device).requires_grad_()
    w = torch.randn(4, 3, 3, 3, generator=g).to(device).requires_grad_()
    out = fb.fixed_branch_conv2d(x, w, None, bank, padding=1, padding_mode=mode, stop_gradient=(i % 2,))
    branches = fb.fixed_branch(out, bank, mode)
    grad_x, grad_w = torch.autograd.grad(branches, (x, w), torch.ones_like(branches))
    return [t.detach().cpu() for t in (out, branches, grad_x, grad_w)]


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_concurrent_calls_equal_sequential_calls(device):
    sequential = [_call(i, device) for i in range(CALLS)]
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        concurrent = list(pool.map(_call, range(CALLS), [device] * CALLS))
    for i, (seq, con) in enumerate(zip(sequential, concurrent)):
        for a, b in zip(seq, con):
            assert torch.equal(a, b), f"call {i} differs when run concurrently"
