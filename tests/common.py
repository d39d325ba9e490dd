"""Facts and helpers shared by the tests: devices, dtypes and their tolerances, the option values, layouts,
gradients, the raw backward operator, and comparison against the reference."""

import contextlib

import pytest
import torch

from fixedbranch import reference
from fixedbranch.reference import pair  # noqa: F401  (the tests import it from here)

# docs/design.md's tolerances, relative to the largest magnitude of the expected tensor.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
DTYPES = tuple(TOLERANCE)
HALF_DTYPES = (torch.float16, torch.bfloat16)
PADDING_MODES = reference.PADDING_MODES
ORDERS = reference.ORDERS
# Branch strides: none, square, and non-square pairs in both directions.
STRIDES = (1, 2, 3, (2, 1), (1, 3))

# Memory layouts of an input: NCHW, NHWC, H and W swapped in memory (neither), every other column of a wider tensor.
INPUT_LAYOUTS = ("contiguous", "channels_last", "transposed", "sliced")
# Layouts of an incoming gradient: the input layouts, and zero strides as autograd hands out for sums and broadcasts.
GRAD_LAYOUTS = ("contiguous", "channels_last", "transposed", "sliced", "expanded")


# The CUDA kernel generations (FIXEDBRANCH_CUDA_KERNELS): every CUDA test runs under each, so that one GPU run
# verifies both. The tests/conftest.py fixture `cuda_kernels` and the marker of the same name select one.
CUDA_KERNELS = ("verified", "next")
# The environment variable the CUDA operators read on every call to choose their kernel generation.
CUDA_KERNELS_VARIABLE = "FIXEDBRANCH_CUDA_KERNELS"


def cpu_and_cuda():
    """Device parameters: "cpu" always, "cuda" under each kernel generation, marked needs_cuda (skipped, visibly,
    without a GPU): ids cpu, cuda (the verified kernels) and cuda-next."""
    return ("cpu",) + tuple(
        pytest.param("cuda", marks=[pytest.mark.needs_cuda, pytest.mark.cuda_kernels(kernels)],
                     id="cuda" if kernels == "verified" else f"cuda-{kernels}")
        for kernels in CUDA_KERNELS
    )


def to_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as t in another memory layout (one of INPUT_LAYOUTS)."""
    if layout == "channels_last":
        # Strides (H*W*C, 1, W*C, C) whatever C is: for C = 1, .contiguous(memory_format=torch.channels_last) would
        # keep NCHW strides (both formats fit), but a convolution's channels_last output of one channel has these.
        n, c, h, w = t.shape
        return torch.empty_strided(t.shape, (h * w * c, 1, w * c, c), dtype=t.dtype, device=t.device).copy_(t)
    if layout == "transposed":  # H and W swapped in memory: neither NCHW nor channels_last
        return t.transpose(2, 3).contiguous().transpose(2, 3)
    if layout == "sliced":  # every other column of a wider tensor: stride_w = 2
        wide = torch.zeros(*t.shape[:3], 2 * t.shape[3], dtype=t.dtype, device=t.device)
        wide[..., ::2] = t
        return wide[..., ::2]
    assert layout == "contiguous", layout
    return t.contiguous()


def make_grad(shape, dtype: torch.dtype, device, layout: str, gen: torch.Generator) -> torch.Tensor:
    """A random gradient of the given shape in one of GRAD_LAYOUTS (drawn in float64 on the CPU, then converted, so
    that every device and dtype sees the same values)."""
    if layout == "expanded":  # zero strides in N and H
        return torch.randn(1, shape[1], 1, shape[3], generator=gen, dtype=torch.float64).to(dtype).to(device).expand(
            shape
        )
    return to_layout(torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype).to(device), layout)


def backward_op(grad_output, bank, padding_mode="zeros", stop_gradient=(), identity=True, order="branch", stride=1,
                input_size=None):
    """``torch.ops.fixedbranch._fixed_branch_backward`` with the public functions' defaults: dL/dy from dL/dout.

    ``input_size`` is y's (H, W); by default the gradient's own, which is y's when the stride is 1.
    """
    if input_size is None:
        input_size = grad_output.shape[2:]
    return torch.ops.fixedbranch._fixed_branch_backward(
        grad_output, bank, padding_mode, list(stop_gradient), identity, order, list(pair(stride)), list(input_size)
    )


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str = "") -> None:
    """max |actual - expected| <= tol * max(|expected|, 1e-30), computed in float64."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    err = (a - e).abs().max().item() if a.numel() else 0.0
    scale = max(e.abs().max().item() if e.numel() else 0.0, 1e-30)
    assert err <= TOLERANCE[dtype] * scale, f"{what}: max error {err:.3e} > {TOLERANCE[dtype]:.0e} x {scale:.3e}"


@contextlib.contextmanager
def factoring(policy: str):
    """The CPU kernels' factoring policy ("auto", "never", "always") for the duration of the block."""
    previous = torch.ops.fixedbranch._set_factoring(policy)
    try:
        yield
    finally:
        torch.ops.fixedbranch._set_factoring(previous)


def separable_bank(k: int, s1: int, s2: int, gen: torch.Generator) -> torch.Tensor:
    """k filters of rank 1 or 2 over two shared columns: what a bank plan factors (DCT bases, Gaussians, LoGs)."""
    columns = torch.randn(2, s1, generator=gen, dtype=torch.float64)
    rows = torch.randn(k, 2, s2, generator=gen, dtype=torch.float64)
    rank = torch.randint(1, 3, (k, 1, 1), generator=gen)
    second = (rank == 2).double() * torch.einsum("a,kb->kab", columns[1], rows[:, 1])
    return torch.einsum("a,kb->kab", columns[0], rows[:, 0]) + second
