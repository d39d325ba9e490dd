"""The CUDA kernels against the CPU kernels and the reference, and what only a GPU can show: streams, many blocks,
int64 indexing, the shared-memory fallbacks. Every test here needs a CUDA device and is skipped without one (CUDA
graphs are tested in test_compile.py, gradcheck on CUDA in test_autograd.py). Each test runs under both kernel
generations (FIXEDBRANCH_CUDA_KERNELS=verified and next); test_cuda_generations.py compares the two.

The CUDA result must equal the CPU result on the same inputs (same dtype, same bank rounded to that dtype) and the
float64 reference within the dtype's tolerance, with every output option.
"""

import itertools

import pytest
import torch

import fixedbranch as fb
from fixedbranch import reference

from .common import (
    DTYPES,
    GRAD_LAYOUTS,
    INPUT_LAYOUTS,
    ORDERS,
    PADDING_MODES,
    STRIDES,
    assert_close,
    backward_op,
    make_grad,
    pair,
    to_layout,
)

# Every test runs under both kernel generations (the cuda_kernels fixture, tests/conftest.py).
pytestmark = [pytest.mark.needs_cuda, pytest.mark.usefixtures("cuda_kernels")]

_ops = torch.ops.fixedbranch

# Filter sizes: the unrolled 3x3 and 5x5 kernels, the generic one (1x1, even, non-square, 7x7).
FILTER_SIZES = ((1, 1), (2, 2), (3, 3), (5, 3), (5, 5), (7, 7))
STOP_SETS = ((), (0,), (1,), (0, 2))
# identity, order, stride: every combination, taken in turn by the parametrised cases.
OPTIONS = list(itertools.product((True, False), ORDERS, STRIDES))


def _stop_for(stop, identity: bool) -> list[int]:
    """The stop set without branch 0 when the output has no identity."""
    return [k for k in stop if identity or k != 0]


def _forward_both(y: torch.Tensor, bank: torch.Tensor, mode: str, identity=True, order="branch", stride=1):
    """The forward op on CUDA and on the CPU copy of the same inputs (the operator rounds the bank to y's dtype)."""
    args = (mode, [], identity, order, list(pair(stride)))
    return _ops.fixed_branch(y, bank, *args), _ops.fixed_branch(y.cpu(), bank.cpu(), *args)


def _backward_both(g: torch.Tensor, bank: torch.Tensor, mode: str, stop, identity=True, order="branch", stride=1,
                   input_size=None):
    args = (mode, _stop_for(stop, identity), identity, order, stride, input_size)
    return backward_op(g, bank, *args), backward_op(g.cpu(), bank.cpu(), *args)


def _identity_slots(order: str, c: int, branches: int):
    return slice(0, c) if order == "branch" else slice(0, None, branches)


@pytest.mark.parametrize("layout", INPUT_LAYOUTS)
@pytest.mark.parametrize("size", FILTER_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("mode", PADDING_MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_matches_cpu_and_reference(dtype, mode, size, layout):
    index = (DTYPES.index(dtype), PADDING_MODES.index(mode), FILTER_SIZES.index(size), INPUT_LAYOUTS.index(layout))
    gen = torch.Generator().manual_seed(sum(i * 10**e for e, i in enumerate(index)))
    identity, order, stride = OPTIONS[(index[0] + 3 * index[1] + 5 * index[2] + 7 * index[3]) % len(OPTIONS)]
    stop = _stop_for(STOP_SETS[(index[2] + index[3]) % len(STOP_SETS)], identity)
    grad_layout = GRAD_LAYOUTS[(index[0] + index[2]) % len(GRAD_LAYOUTS)]
    s_h, s_w = pair(stride)
    bank = torch.randn(3, *size, generator=gen, dtype=torch.float64).cuda()
    # 21x35 spans several tiles with overhangs, and is larger than every filter's padding.
    y = to_layout(torch.randn(2, 6, 21, 35, generator=gen, dtype=torch.float64).to(dtype).cuda(), layout)
    what = f"{dtype} {mode} {size} {layout} identity={identity} {order} stride={stride}"

    out, expected = _forward_both(y, bank, mode, identity, order, stride)
    assert out.device.type == "cuda" and out.dtype == dtype
    assert out.shape == (2, 6 * (3 + identity), (21 - 1) // s_h + 1, (35 - 1) // s_w + 1)
    assert_close(out, expected, dtype, f"forward {what}")
    assert_close(out, reference.fixed_branch(y.double(), bank.to(dtype).double(), mode, (), identity, order, stride),
                 dtype, f"forward vs reference {what}")
    if identity:
        assert torch.equal(out[:, _identity_slots(order, 6, 4)], y[:, :, ::s_h, ::s_w]), "the identity is y, sampled"
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)
    elif layout == "contiguous":
        assert out.is_contiguous()

    g = make_grad(out.shape, dtype, "cuda", grad_layout, gen)
    grad, expected_grad = _backward_both(g, bank, mode, stop, identity, order, stride, (21, 35))
    assert_close(grad, expected_grad, dtype, f"backward {what} stop={stop} {grad_layout}")
    y64 = y.detach().double().requires_grad_(True)
    truth = reference.fixed_branch(y64, bank.to(dtype).double(), mode, stop, identity, order, stride)
    (truth_grad,) = torch.autograd.grad(truth, y64, g.double())
    assert_close(grad, truth_grad, dtype, f"backward vs reference {what} stop={stop} {grad_layout}")
    if grad_layout == "channels_last":
        assert grad.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("mode", PADDING_MODES)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 2, 1, 7), (2, 3, 7, 7), (1, 2, 2, 3), (2, 70, 5, 4)])
def test_small_and_odd_images(shape, mode):
    """Images smaller than a tile, than the filter, than the stride, one pixel wide: the padding maps wrap and
    overlap, and a strided output is one pixel."""
    gen = torch.Generator().manual_seed(3)
    size = (3, 2)
    if mode == "reflect":  # the padding must be smaller than the image
        size = (3 if shape[2] > 1 else 1, 2 if shape[3] > 1 else 1)
    bank = torch.randn(2, *size, generator=gen, dtype=torch.float64).cuda()
    for layout, (identity, order, stride) in itertools.product(("contiguous", "channels_last"),
                                                               ((True, "branch", 1), (False, "channel", (3, 2)))):
        y = to_layout(torch.randn(shape, generator=gen, dtype=torch.float64).cuda(), layout)
        out, expected = _forward_both(y, bank, mode, identity, order, stride)
        what = f"{shape} {layout} {identity} {order} {stride}"
        assert_close(out, expected, torch.float64, f"forward {what}")
        g = to_layout(torch.randn(out.shape, generator=gen, dtype=torch.float64).cuda(), layout)
        grad, expected_grad = _backward_both(g, bank, mode, (1,), identity, order, stride, shape[2:])
        assert_close(grad, expected_grad, torch.float64, f"backward {what}")


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_many_blocks(dtype, layout):
    """A feature map as in a real network: thousands of blocks, 128x128 planes, 64 channels."""
    gen = torch.Generator().manual_seed(11)
    bank = fb.filters.bank("sobel_x", "sobel_y", "laplacian4", fb.filters.gaussian(3, 1.0)).cuda()
    y = to_layout(torch.randn(4, 64, 128, 128, generator=gen).to(dtype).cuda(), layout)
    for mode, identity, order, stride in (("zeros", True, "branch", 1), ("reflect", True, "branch", 1),
                                          ("reflect", False, "channel", 2), ("replicate", True, "channel", (1, 2))):
        what = f"{mode} {identity} {order} {stride}"
        out, expected = _forward_both(y, bank, mode, identity, order, stride)
        assert_close(out, expected, dtype, f"forward {what}")
        g = to_layout(torch.randn(out.shape, generator=gen).to(dtype).cuda(), layout)
        grad, expected_grad = _backward_both(g, bank, mode, (), identity, order, stride, (128, 128))
        assert_close(grad, expected_grad, dtype, f"backward {what}")


@pytest.mark.parametrize(
    "dtype, size, c, layout",
    [
        (torch.float64, (77, 77), 2, "contiguous"),  # no tile fits in shared memory: the direct kernels
        (torch.float64, (7, 7), 40, "channels_last"),  # the tile shrinks to fewer channels
        (torch.float32, (15, 15), 3, "contiguous"),  # a bank too large to copy into shared memory
    ],
)
@pytest.mark.parametrize("mode", ["zeros", "replicate"])
@pytest.mark.parametrize("identity,order,stride", [(True, "branch", 1), (False, "channel", (2, 3))])
def test_shared_memory_fallbacks(identity, order, stride, dtype, size, c, layout, mode):
    gen = torch.Generator().manual_seed(5)
    k = 12 if size == (15, 15) else 2
    bank = torch.randn(k, *size, generator=gen, dtype=torch.float64).cuda()
    y = to_layout(torch.randn(2, c, 19, 30, generator=gen).to(dtype).cuda(), layout)
    out, expected = _forward_both(y, bank, mode, identity, order, stride)
    assert_close(out, expected, dtype, "forward")
    g = to_layout(torch.randn(out.shape, generator=gen).to(dtype).cuda(), layout)
    grad, expected_grad = _backward_both(g, bank, mode, (0, 1), identity, order, stride, (19, 30))
    assert_close(grad, expected_grad, dtype, "backward")


@pytest.mark.parametrize("identity,order,stride", [(True, "branch", 1), (True, "channel", 2), (False, "branch", (1, 2)),
                                                   (False, "channel", 1)])
def test_stop_sets_and_all_stopped(identity, order, stride):
    gen = torch.Generator().manual_seed(2)
    bank = torch.randn(4, 3, 3, generator=gen, dtype=torch.float64).cuda()
    branches = range(0 if identity else 1, 5)
    s_h, s_w = pair(stride)
    g = torch.randn(2, 3 * len(branches), (9 - 1) // s_h + 1, (11 - 1) // s_w + 1, generator=gen,
                    dtype=torch.float64).cuda()
    for r in range(len(branches) + 1):
        for stop in itertools.combinations(branches, r):
            grad, expected = _backward_both(g, bank, "reflect", stop, identity, order, stride, (9, 11))
            assert_close(grad, expected, torch.float64, f"stop={stop}")
    all_stopped = backward_op(g, bank, "circular", list(branches), identity, order, stride, (9, 11))
    assert all_stopped.shape == (2, 3, 9, 11) and torch.count_nonzero(all_stopped) == 0


def test_large_bank_stop_beyond_bitmask():
    """Banks of more than a thousand filters: stopped branches past the kernels' bitmask still stop."""
    gen = torch.Generator().manual_seed(9)
    bank = torch.randn(1100, 1, 2, generator=gen, dtype=torch.float64).cuda()
    g = torch.randn(1, 1101 * 2, 4, 5, generator=gen, dtype=torch.float64).cuda()
    stop = (0, 3, 1023, 1024, 1050, 1100)
    grad, expected = _backward_both(g, bank, "replicate", stop)
    assert_close(grad, expected, torch.float64, "backward")
    grad, expected = _backward_both(g[:, 2:], bank, "replicate", stop, False, "channel")
    assert_close(grad, expected, torch.float64, "backward, channel order without the identity")


def test_non_default_stream_and_determinism():
    gen = torch.Generator().manual_seed(4)
    bank = fb.filters.bank("sobel_x", "laplacian8", fb.filters.gaussian(5, 1.0)).cuda().float()
    y = torch.randn(8, 16, 64, 96, generator=gen).cuda()
    for identity, order, stride in ((True, "branch", 1), (False, "channel", (2, 1))):
        args = ("reflect", [], identity, order, list(pair(stride)))
        out = _ops.fixed_branch(y, bank, *args)
        g = torch.randn(out.shape, generator=gen).cuda()
        grad = backward_op(g, bank, *args, (64, 96))
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            out_s = _ops.fixed_branch(y, bank, *args)
            grad_s = backward_op(g, bank, *args, (64, 96))
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        assert torch.equal(out, out_s)
        assert torch.equal(grad, grad_s)
        assert torch.equal(grad, backward_op(g, bank, *args, (64, 96)))


def test_int64_indexing():
    """An output of more than 2**31 elements takes the int64 kernels; its last image must equal the result of the
    same image alone (int32 kernels), in both channel orders."""
    free, _ = torch.cuda.mem_get_info()
    if free < 24 * 2**30:
        pytest.skip("needs 24 GiB of free GPU memory")
    gen = torch.Generator(device="cuda").manual_seed(8)
    bank = torch.randn(15, 3, 3, generator=gen, device="cuda").half()
    y = torch.randn(9, 16, 1024, 1024, generator=gen, device="cuda", dtype=torch.half)
    for order in ORDERS:
        out = _ops.fixed_branch(y, bank, "reflect", [], True, order, [1, 1])
        assert out.numel() > 2**31
        last = _ops.fixed_branch(y[-1:], bank, "reflect", [], True, order, [1, 1])
        assert_close(out[-1:], last, torch.half, f"forward {order}")
        del out, last
    g = torch.randn(9, 16 * 16, 1024, 1024, generator=gen, device="cuda", dtype=torch.half)
    for order in ORDERS:
        grad = backward_op(g, bank, "reflect", [2], True, order)
        assert_close(grad[-1:], backward_op(g[-1:], bank, "reflect", [2], True, order), torch.half, f"backward {order}")
        del grad


def test_matches_reference_on_cuda():
    """The public function on CUDA against the reference on CUDA, float64, with every option."""
    gen = torch.Generator().manual_seed(12)
    bank = fb.filters.bank("scharr_x", fb.filters.log(5, 1.0), fb.filters.gabor(7, 2.0, 0.5, 4.0)).cuda()
    y = torch.randn(2, 5, 23, 31, generator=gen, dtype=torch.float64).cuda().requires_grad_()
    for mode, (identity, order, stride) in itertools.product(PADDING_MODES, OPTIONS[::3]):
        opts = dict(identity=identity, order=order, stride=stride)
        out = fb.fixed_branch(y, bank, mode, (2,), **opts)
        expected = reference.fixed_branch(y, bank, mode, (2,), **opts)
        what = f"{mode} {opts}"
        assert_close(out, expected, torch.float64, what)
        g = torch.randn_like(out)
        assert_close(torch.autograd.grad(out, y, g)[0], torch.autograd.grad(expected, y, g)[0], torch.float64, what)
        shares = fb.branch_contributions(g, bank, mode, **opts, input_size=(23, 31))
        assert_close(shares, reference.branch_contributions(g, bank, mode, **opts, input_size=(23, 31)),
                     torch.float64, f"shares {what}")


def test_conv2d_matches_reference_on_cuda():
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(2, 3, 20, 17, generator=gen, dtype=torch.float64).cuda().requires_grad_()
    w = torch.randn(4, 3, 3, 3, generator=gen, dtype=torch.float64).cuda().requires_grad_()
    b = torch.randn(4, generator=gen, dtype=torch.float64).cuda().requires_grad_()
    # A Gaussian, so that the bias gradient (the sum of dL/dy) is not zero without the identity.
    bank = fb.filters.bank("sobel_x", fb.filters.gaussian(3, 1.0)).cuda()
    for identity, order, stride in OPTIONS[::2]:
        args = (2, 1, 1, 1, "reflect", (1,), identity, order, stride)
        out = fb.fixed_branch_conv2d(x, w, b, bank, *args)
        expected = reference.fixed_branch_conv2d(x, w, b, bank, *args)
        assert_close(out, expected, torch.float64, f"{args}")
        g = torch.randn_like(out)
        for a, e in zip(torch.autograd.grad(out, (x, w, b), g), torch.autograd.grad(expected, (x, w, b), g)):
            assert_close(a, e, torch.float64, f"gradient {args}")


def test_device_mismatch_is_an_error():
    y = torch.randn(1, 2, 5, 5, device="cuda")
    with pytest.raises(ValueError, match="bank on the same device"):
        _ops.fixed_branch(y, torch.randn(1, 3, 3), "zeros", [], True, "branch", [1, 1])
    with pytest.raises(ValueError, match="bank on the same device"):
        fb.fixed_branch(y, torch.randn(1, 3, 3))
