"""The CUDA kernels against the CPU kernels, and what only a GPU can show: streams, CUDA graphs, many blocks, int64
indexing, the shared-memory fallbacks. Every test here needs a CUDA device and is skipped without one.

The CPU kernels are checked against the pure-PyTorch reference elsewhere; here the CUDA result must equal the CPU
result on the same inputs (same dtype, same bank rounded to that dtype) within the dtype's tolerance.
"""

import itertools

import pytest
import torch
from torch import nn

import fixedbranch as fb
from fixedbranch import reference

from .common import DTYPES, PADDING_MODES, assert_close

pytestmark = pytest.mark.needs_cuda

_ops = torch.ops.fixedbranch

# Filter sizes: the unrolled 3x3 and 5x5 kernels, the generic one (1x1, even, non-square, 7x7).
FILTER_SIZES = ((1, 1), (2, 2), (3, 3), (5, 3), (5, 5), (7, 7))
LAYOUTS = ("contiguous", "channels_last", "transposed", "expanded_grad")
STOP_SETS = ((), (0,), (1,), (0, 2))


def _layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "transposed":  # H and W swapped in memory: neither NCHW nor channels_last
        return t.transpose(2, 3).contiguous().transpose(2, 3)
    return t.contiguous()


def _grad(shape, dtype, layout: str, gen: torch.Generator) -> torch.Tensor:
    if layout == "expanded_grad":  # zero strides in N and H, as autograd hands out for sums and broadcasts
        return torch.randn(1, shape[1], 1, shape[3], generator=gen).to(dtype).cuda().expand(shape)
    return _layout(torch.randn(shape, generator=gen).to(dtype).cuda(), layout)


def _forward_both(y: torch.Tensor, bank: torch.Tensor, mode: str):
    """The forward op on CUDA and on the CPU copy of the same inputs."""
    bank = bank.to(y.dtype)
    return _ops.fixed_branch(y, bank, mode, []), _ops.fixed_branch(y.cpu(), bank.cpu(), mode, [])


def _backward_both(g: torch.Tensor, bank: torch.Tensor, mode: str, stop):
    bank = bank.to(g.dtype)
    return (_ops._fixed_branch_backward(g, bank, mode, list(stop)),
            _ops._fixed_branch_backward(g.cpu(), bank.cpu(), mode, list(stop)))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("size", FILTER_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("mode", PADDING_MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_matches_cpu(dtype, mode, size, layout):
    index = (DTYPES.index(dtype), PADDING_MODES.index(mode), FILTER_SIZES.index(size), LAYOUTS.index(layout))
    gen = torch.Generator().manual_seed(sum(i * 10**e for e, i in enumerate(index)))
    stop = STOP_SETS[(index[2] + index[3]) % len(STOP_SETS)]
    bank = torch.randn(3, *size, generator=gen, dtype=torch.float64).cuda()
    # 21x35 spans several tiles with overhangs, and is larger than every filter's padding.
    y = _layout(torch.randn(2, 6, 21, 35, generator=gen).to(dtype).cuda(), layout)

    out, expected = _forward_both(y, bank, mode)
    assert out.device.type == "cuda" and out.dtype == dtype
    assert_close(out, expected, dtype, f"forward {dtype} {mode} {size} {layout}")
    assert torch.equal(out[:, :6], y), "branch 0 is an exact copy of y"
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)
    else:
        assert out.is_contiguous()

    g = _grad(out.shape, dtype, layout, gen)
    grad, expected_grad = _backward_both(g, bank, mode, stop)
    assert_close(grad, expected_grad, dtype, f"backward {dtype} {mode} {size} {layout} stop={stop}")
    if layout == "channels_last":
        assert grad.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("mode", PADDING_MODES)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 2, 1, 7), (2, 3, 7, 7), (1, 2, 2, 3), (2, 70, 5, 4)])
def test_small_and_odd_images(shape, mode):
    """Images smaller than a tile, than the filter, one pixel wide: the padding maps wrap and overlap."""
    gen = torch.Generator().manual_seed(3)
    size = (3, 2)
    if mode == "reflect":  # the padding must be smaller than the image
        size = (3 if shape[2] > 1 else 1, 2 if shape[3] > 1 else 1)
    bank = torch.randn(2, *size, generator=gen, dtype=torch.float64).cuda()
    for layout in ("contiguous", "channels_last"):
        y = _layout(torch.randn(shape, generator=gen, dtype=torch.float64).cuda(), layout)
        out, expected = _forward_both(y, bank, mode)
        assert_close(out, expected, torch.float64, f"forward {shape} {layout}")
        g = _layout(torch.randn(out.shape, generator=gen, dtype=torch.float64).cuda(), layout)
        grad, expected_grad = _backward_both(g, bank, mode, (1,))
        assert_close(grad, expected_grad, torch.float64, f"backward {shape} {layout}")


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_many_blocks(dtype, layout):
    """A feature map as in a real network: thousands of blocks, 128x128 planes, 64 channels."""
    gen = torch.Generator().manual_seed(11)
    bank = fb.filters.bank("sobel_x", "sobel_y", "laplacian4", fb.filters.gaussian(3, 1.0)).cuda()
    y = _layout(torch.randn(4, 64, 128, 128, generator=gen).to(dtype).cuda(), layout)
    for mode in ("zeros", "reflect"):
        out, expected = _forward_both(y, bank, mode)
        assert_close(out, expected, dtype, f"forward {mode}")
        grad, expected_grad = _backward_both(_layout(torch.randn_like(out), layout), bank, mode, ())
        assert_close(grad, expected_grad, dtype, f"backward {mode}")


@pytest.mark.parametrize(
    "dtype, size, c, layout",
    [
        (torch.float64, (77, 77), 2, "contiguous"),  # no tile fits in shared memory: the direct kernels
        (torch.float64, (7, 7), 40, "channels_last"),  # the tile shrinks to fewer channels
        (torch.float32, (15, 15), 3, "contiguous"),  # a bank too large to copy into shared memory
    ],
)
@pytest.mark.parametrize("mode", ["zeros", "replicate"])
def test_shared_memory_fallbacks(dtype, size, c, layout, mode):
    gen = torch.Generator().manual_seed(5)
    k = 12 if size == (15, 15) else 2
    bank = torch.randn(k, *size, generator=gen, dtype=torch.float64).cuda()
    y = _layout(torch.randn(2, c, 19, 30, generator=gen).to(dtype).cuda(), layout)
    out, expected = _forward_both(y, bank, mode)
    assert_close(out, expected, dtype, "forward")
    grad, expected_grad = _backward_both(_layout(torch.randn_like(out), layout), bank, mode, (0,))
    assert_close(grad, expected_grad, dtype, "backward")


def test_stop_sets_and_all_stopped():
    gen = torch.Generator().manual_seed(2)
    bank = torch.randn(4, 3, 3, generator=gen, dtype=torch.float64).cuda()
    g = torch.randn(2, 15, 9, 11, generator=gen, dtype=torch.float64).cuda()
    for r in range(6):
        for stop in itertools.combinations(range(5), r):
            grad, expected = _backward_both(g, bank, "reflect", stop)
            assert_close(grad, expected, torch.float64, f"stop={stop}")
    assert torch.count_nonzero(_ops._fixed_branch_backward(g, bank, "circular", [0, 1, 2, 3, 4])) == 0


def test_large_bank_stop_beyond_bitmask():
    """Banks of more than a thousand filters: stopped branches past the kernels' bitmask still stop."""
    gen = torch.Generator().manual_seed(9)
    bank = torch.randn(1100, 1, 2, generator=gen, dtype=torch.float64).cuda()
    g = torch.randn(1, 1101 * 2, 4, 5, generator=gen, dtype=torch.float64).cuda()
    stop = (0, 3, 1023, 1024, 1050, 1100)
    grad, expected = _backward_both(g, bank, "replicate", stop)
    assert_close(grad, expected, torch.float64, "backward")


def test_non_default_stream_and_determinism():
    gen = torch.Generator().manual_seed(4)
    bank = fb.filters.bank("sobel_x", "laplacian8", fb.filters.gaussian(5, 1.0)).cuda()
    y = torch.randn(8, 16, 64, 96, generator=gen).cuda()
    g = torch.randn(8, 64, 64, 96, generator=gen).cuda()
    out = _ops.fixed_branch(y, bank.float(), "reflect", [])
    grad = _ops._fixed_branch_backward(g, bank.float(), "reflect", [])
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out_s = _ops.fixed_branch(y, bank.float(), "reflect", [])
        grad_s = _ops._fixed_branch_backward(g, bank.float(), "reflect", [])
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    assert torch.equal(out, out_s)
    assert torch.equal(grad, grad_s)
    assert torch.equal(grad, _ops._fixed_branch_backward(g, bank.float(), "reflect", []))


def test_int64_indexing():
    """An output of more than 2**31 elements takes the int64 kernels; its last image must equal the result of the
    same image alone (int32 kernels)."""
    free, _ = torch.cuda.mem_get_info()
    if free < 24 * 2**30:
        pytest.skip("needs 24 GiB of free GPU memory")
    gen = torch.Generator(device="cuda").manual_seed(8)
    bank = torch.randn(15, 3, 3, generator=gen, device="cuda").half()
    y = torch.randn(9, 16, 1024, 1024, generator=gen, device="cuda", dtype=torch.half)
    out = _ops.fixed_branch(y, bank, "reflect", [])
    assert out.numel() > 2**31
    assert_close(out[-1:], _ops.fixed_branch(y[-1:], bank, "reflect", []), torch.half, "forward")
    del out
    g = torch.randn(9, 16 * 16, 1024, 1024, generator=gen, device="cuda", dtype=torch.half)
    grad = _ops._fixed_branch_backward(g, bank, "reflect", [2])
    assert_close(grad[-1:], _ops._fixed_branch_backward(g[-1:], bank, "reflect", [2]), torch.half, "backward")


@pytest.mark.parametrize("mode", PADDING_MODES)
def test_gradcheck_and_gradgradcheck(mode):
    gen = torch.Generator().manual_seed(6)
    for size in ((3, 3), (2, 3)):
        bank = torch.randn(2, *size, generator=gen, dtype=torch.float64).cuda()
        y = torch.randn(1, 2, 5, 6, generator=gen, dtype=torch.float64).cuda().requires_grad_()
        fn = lambda t: fb.fixed_branch(t, bank, mode)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (y,))
        assert torch.autograd.gradgradcheck(fn, (y,))
        # With a stop set the backward op is still linear, and its own backward is its exact adjoint.
        g = torch.randn(1, 6, 5, 6, generator=gen, dtype=torch.float64).cuda().requires_grad_()
        assert torch.autograd.gradcheck(lambda t: _ops._fixed_branch_backward(t, bank, mode, [1]), (g,))


def test_compile_reduce_overhead_matches_eager():
    """CUDA graphs replay the recorded launches: any kernel on the wrong stream or any host sync shows here."""
    torch.manual_seed(0)
    bank = fb.filters.bank("sobel_x", "sobel_y", "laplacian4")
    model = nn.Sequential(
        fb.FixedBranchConv2d(3, 8, 3, bank, padding=1, filter_padding_mode="reflect", stop_gradient=(1,)),
        nn.ReLU(),
        fb.FixedBranch(fb.filters.bank(fb.filters.gaussian(5, 1.0)), "circular"),
    ).cuda()
    compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    for step in range(4):  # warm-up, recording, then replays
        x = torch.randn(2, 3, 16, 20, device="cuda", requires_grad=True)
        out = compiled(x)
        expected = model(x)
        assert_close(out, expected, torch.float32, f"forward, step {step}")
        g = torch.randn_like(out)
        got = torch.autograd.grad(out, [x, model[0].weight], g)
        want = torch.autograd.grad(expected, [x, model[0].weight], g)
        for a, e in zip(got, want):
            assert_close(a, e, torch.float32, f"backward, step {step}")


def test_matches_reference_on_cuda():
    """The public function on CUDA against the reference on CUDA, float64."""
    gen = torch.Generator().manual_seed(12)
    bank = fb.filters.bank("scharr_x", fb.filters.log(5, 1.0), fb.filters.gabor(7, 2.0, 0.5, 4.0)).cuda()
    y = torch.randn(2, 5, 23, 31, generator=gen, dtype=torch.float64).cuda().requires_grad_()
    for mode in PADDING_MODES:
        out = fb.fixed_branch(y, bank, mode, (2,))
        expected = reference.fixed_branch(y, bank, mode, (2,))
        assert_close(out, expected, torch.float64, mode)
        g = torch.randn_like(out)
        assert_close(torch.autograd.grad(out, y, g)[0], torch.autograd.grad(expected, y, g)[0], torch.float64, mode)


def test_device_mismatch_is_an_error():
    y = torch.randn(1, 2, 5, 5, device="cuda")
    with pytest.raises(RuntimeError, match="bank on the same device"):
        _ops.fixed_branch(y, torch.randn(1, 3, 3), "zeros", [])
