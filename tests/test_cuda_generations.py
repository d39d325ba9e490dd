"""The next CUDA kernels (FIXEDBRANCH_CUDA_KERNELS=next) against the verified ones, and what only the next ones do:
factored banks, the plan cache, the stop set for any K. Every test needs a CUDA device and is skipped without one;
test_cuda.py runs its whole suite under each generation.

Where the two generations sum in the same order (direct 3x3 and 5x5 banks: filter rows, then columns, then the
identity last in the backward) they must agree bit for bit, with every option, padding mode, layout and dtype;
elsewhere to the dtype's tolerance.
"""

import itertools

import pytest
import torch

import fixedbranch as fb
from fixedbranch import reference

from .common import (
    CUDA_KERNELS_VARIABLE,
    DTYPES,
    ORDERS,
    PADDING_MODES,
    assert_close,
    backward_op,
    make_grad,
    pair,
    to_layout,
)

pytestmark = pytest.mark.needs_cuda

_ops = torch.ops.fixedbranch

# identity, order, stride: taken in turn by the parametrised cases (strides 1 and 2 take the unrolled kernels).
OPTIONS = list(itertools.product((True, False), ORDERS, (1, 2, (2, 1), (1, 3))))


@pytest.fixture
def run_as(monkeypatch):
    """run_as(generation, fn, *args): fn(*args) under that kernel generation."""

    def run(generation, fn, *args):
        monkeypatch.setenv(CUDA_KERNELS_VARIABLE, generation)
        assert _ops._cuda_kernels() == generation
        return fn(*args)

    return run


@pytest.fixture
def factoring():
    """factoring(policy): sets the bank factoring policy for the test, restoring the previous one afterwards."""
    previous = []

    def set_policy(policy):
        previous.append(_ops._set_factoring(policy))

    yield set_policy
    if previous:
        _ops._set_factoring(previous[0])


def _forward(y, bank, mode, stop, identity, order, stride):
    return _ops.fixed_branch(y, bank, mode, list(stop), identity, order, list(pair(stride)))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("size", [(3, 3), (5, 5)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("mode", PADDING_MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_generations_agree_bit_for_bit(dtype, mode, size, layout, run_as, factoring):
    factoring("never")  # both generations correlate directly, in the same order
    index = DTYPES.index(dtype) + 4 * PADDING_MODES.index(mode) + 3 * size[0] + (layout == "channels_last")
    identity, order, stride = OPTIONS[index % len(OPTIONS)]
    stop = [k for k in ((0, 2), (1,), ())[index % 3] if identity or k != 0]
    gen = torch.Generator().manual_seed(index)
    bank = torch.randn(5, *size, generator=gen, dtype=torch.float64).to(dtype).cuda()
    # 8 channels and 40 columns: whole 16-byte vectors of every dtype in both layouts, and partial ones at 37.
    for shape in ((2, 8, 19, 40), (1, 3, 17, 37)):
        y = to_layout(torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype).cuda(), layout)
        what = f"{shape} identity={identity} {order} stride={stride} stop={stop}"
        args = (y, bank, mode, stop, identity, order, stride)
        out_v, out_n = run_as("verified", _forward, *args), run_as("next", _forward, *args)
        assert torch.equal(out_v, out_n), f"forward {what}"
        assert out_n.stride() == out_v.stride()
        g = to_layout(torch.randn(out_v.shape, generator=gen, dtype=torch.float64).to(dtype).cuda(), layout)
        bargs = (g, bank, mode, stop, identity, order, stride, shape[2:])
        grad_v, grad_n = run_as("verified", backward_op, *bargs), run_as("next", backward_op, *bargs)
        assert torch.equal(grad_v, grad_n), f"backward {what}"


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (5, 3), (7, 7), (4, 9)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("mode", PADDING_MODES)
def test_generations_agree_other_sizes(mode, size, run_as, factoring):
    """Sizes the two generations sum in different orders: equal within the tolerance, with strides 1 to 3."""
    factoring("never")
    gen = torch.Generator().manual_seed(sum(size) + PADDING_MODES.index(mode))
    bank = torch.randn(3, *size, generator=gen, dtype=torch.float64).cuda().float()
    for layout, (identity, order, stride) in zip(("contiguous", "channels_last", "sliced", "transposed"),
                                                 ((True, "branch", 1), (False, "channel", 2), (True, "channel", (3, 1)),
                                                  (False, "branch", (1, 2)))):
        y = to_layout(torch.randn(2, 5, 23, 29, generator=gen).cuda(), layout)
        args = (y, bank, mode, (1,) if identity else (2,), identity, order, stride)
        assert_close(run_as("next", _forward, *args), run_as("verified", _forward, *args), torch.float32, layout)
        g = make_grad(run_as("next", _forward, *args).shape, torch.float32, "cuda", "expanded" if layout == "sliced"
                      else layout, gen)
        bargs = (g, bank, mode, args[3], identity, order, stride, (23, 29))
        assert_close(run_as("next", backward_op, *bargs), run_as("verified", backward_op, *bargs), torch.float32,
                     f"backward {layout}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
def test_factored_forward_matches_reference(dtype, layout, run_as, factoring):
    """The factored kernel (a DCT basis, and a Sobel/Gaussian bank forced to factor) against the reference, every
    option, and against the next generation's direct kernel."""
    gen = torch.Generator().manual_seed(DTYPES.index(dtype))
    banks = {"dct5": fb.filters.dct(5), "dct7": fb.filters.dct(7, level=4),
             "edges": fb.filters.bank("sobel_x", "sobel_y", fb.filters.gaussian(3, 1.0))}
    for (name, bank64), (identity, order, stride), mode in zip(
            banks.items(), (OPTIONS[0], OPTIONS[5], OPTIONS[10]), ("zeros", "reflect", "circular")):
        factoring("always" if name == "edges" else "auto")
        bank = bank64.to(dtype).cuda()  # in y's dtype, as the modules keep it: the plan is cached for this tensor
        y = to_layout(torch.randn(2, 6, 26, 33, generator=gen, dtype=torch.float64).to(dtype).cuda(), layout)
        args = (y, bank, mode, (), identity, order, stride)
        out = run_as("next", _forward, *args)
        what = f"{name} {dtype} {layout} identity={identity} {order} stride={stride}"
        expected = reference.fixed_branch(y.double(), bank.double(), mode, (), identity, order, stride)
        assert_close(out, expected, dtype, what)
        factoring("never")
        assert_close(out, run_as("next", _forward, *args), dtype, f"factored vs direct {what}")


def test_plan_cache_follows_the_bank(run_as, factoring):
    """The factored path's plan is cached per bank tensor: an in-place change re-plans, a bank of another dtype
    (rounded afresh on every call) runs direct, and all agree with the reference."""
    factoring("auto")
    gen = torch.Generator().manual_seed(21)
    y = torch.randn(2, 4, 30, 30, generator=gen).cuda()
    bank = fb.filters.dct(6).float().cuda()
    first = run_as("next", _forward, y, bank, "zeros", (), True, "branch", 1)
    assert_close(first, reference.fixed_branch(y.double(), bank.double()), torch.float32, "first call")
    bank[3].mul_(-2.0)  # in place: the version counter moves
    second = run_as("next", _forward, y, bank, "zeros", (), True, "branch", 1)
    assert_close(second, reference.fixed_branch(y.double(), bank.double()), torch.float32, "after an in-place change")
    bank64 = bank.double()  # rounded to float32 by the operator on every call
    third = run_as("next", _forward, y, bank64, "zeros", (), True, "branch", 1)
    assert_close(third, second, torch.float32, "a float64 bank, run direct")


def test_factored_forward_in_cuda_graph(run_as, factoring):
    """A capture with a bank never seen before runs direct (no copy to the host inside a capture); one seen before
    runs factored from the cache; replays match the reference."""
    factoring("auto")
    gen = torch.Generator().manual_seed(22)
    y = torch.randn(1, 3, 20, 24, generator=gen).cuda()
    for seen in (False, True):
        bank = fb.filters.dct(5).float().cuda()
        # Loads the kernels before the capture; plans `bank` only when it is to be seen.
        run_as("next", _forward, y, bank if seen else bank.clone(), "reflect", (), True, "branch", 1)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = run_as("next", _forward, y, bank, "reflect", (), True, "branch", 1)
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert_close(out, reference.fixed_branch(y.double(), bank.double(), "reflect"), torch.float32, f"seen={seen}")


def test_stopped_nan_never_reaches_the_gradient(run_as):
    """A stopped branch's NaN gradient stays out of dL/dy for any K, the branches past the inline mask included."""
    gen = torch.Generator().manual_seed(23)
    for k, stop in ((4, (0, 2)), (1100, (0, 3, 1023, 1024, 1050, 1100))):
        bank = torch.randn(k, 1, 2, generator=gen, dtype=torch.float64).cuda()
        g = torch.randn(1, (k + 1) * 2, 4, 5, generator=gen, dtype=torch.float64).cuda()
        for b in stop:
            g[:, 2 * b:2 * b + 2] = float("nan")
        grad = run_as("next", backward_op, g, bank, "replicate", stop)
        assert torch.isfinite(grad).all()
        assert_close(grad, backward_op(g.cpu(), bank.cpu(), "replicate", stop), torch.float64, f"K={k}")


@pytest.mark.parametrize("generation", ["verified", "next"])
def test_unknown_generation_is_an_error(generation, monkeypatch):
    y = torch.randn(1, 2, 5, 5, device="cuda")
    bank = torch.randn(1, 3, 3, device="cuda")
    monkeypatch.setenv(CUDA_KERNELS_VARIABLE, generation + "-typo")
    with pytest.raises(ValueError, match="FIXEDBRANCH_CUDA_KERNELS must be 'verified' or 'next'"):
        _ops.fixed_branch(y, bank, "zeros", [], True, "branch", [1, 1])
