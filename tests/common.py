"""Helpers shared by the tests: devices, dtype tolerances and comparison against the reference."""

import pytest
import torch

# DESIGN.md's tolerances, relative to the largest magnitude of the expected tensor.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def cpu_and_cuda():
    """Device parameters: "cpu" always, "cuda" marked needs_cuda (skipped, visibly, without a GPU)."""
    return ("cpu", pytest.param("cuda", marks=pytest.mark.needs_cuda))


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str = "") -> None:
    """max |actual - expected| <= tol * max(|expected|, 1e-30), computed in float64."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    err = (a - e).abs().max().item() if a.numel() else 0.0
    scale = max(e.abs().max().item() if e.numel() else 0.0, 1e-30)
    assert err <= TOLERANCE[dtype] * scale, f"{what}: max error {err:.3e} > {TOLERANCE[dtype]:.0e} x {scale:.3e}"
