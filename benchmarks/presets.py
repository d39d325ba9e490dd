"""What is measured: the standard point, the banks, the sweeps around the point, and the presets' budgets.

A *point* is one problem size: y = (N, C, H, W), a bank of K filters of size S x S, a padding mode, a memory
format and a dtype. The standard point is the one the headline tables report; each sweep varies one of its
parameters and keeps the others.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch

import fixedbranch as fb

# The standard point's bank, and the 3x3 filters that extend it for the K sweep (classic edge/blur filters, then
# the 2-D DCT basis without its constant term): banks of the same kind a predefined-filter network uses.
STANDARD_BANK = ("sobel_x", "sobel_y", "laplacian4", "gaussian(3,1.0)")
_MORE_3X3 = ("scharr_x", "scharr_y", "prewitt_x", "prewitt_y", "laplacian8")


@dataclass(frozen=True)
class Point:
    """One problem size. ``in_channels`` is the layer's conv input (the conv is 3x3, padding 1, C outputs)."""

    n: int = 8
    c: int = 32
    h: int = 96
    w: int = 96
    k: int = 4
    s: int = 3
    padding_mode: str = "zeros"
    memory_format: str = "contiguous"
    dtype: str = "float32"
    in_channels: int = 16

    def bank(self) -> tuple[torch.Tensor, list[str]]:
        """The (K, S, S) bank in float64 and a name for each filter."""
        return make_bank(self.k, self.s)

    def as_dict(self) -> dict:
        return asdict(self)


def make_bank(k: int, s: int) -> tuple[torch.Tensor, list[str]]:
    """K dense-enough filters of size S x S: the standard four (and more classic ones) for 3x3, else
    Gaussian, LoG and Gabor filters at several orientations, so that no size gets a mostly-zero bank."""
    if s == 3:
        specs: list = [fb.filters.sobel_x(), fb.filters.sobel_y(), fb.filters.laplacian4(), fb.filters.gaussian(3, 1.0)]
        names = list(STANDARD_BANK)
        specs += [getattr(fb.filters, name)() for name in _MORE_3X3]
        names += list(_MORE_3X3)
        dct = fb.filters.dct(3)[1:]
        specs += list(dct)
        names += [f"dct3[{i}]" for i in range(1, 9)]
        if k > len(specs):
            raise ValueError(f"make_bank: at most {len(specs)} 3x3 filters, got k={k}")
        return fb.filters.bank(*specs[:k]), names[:k]
    sigma = max(s / 6.0, 0.5)
    specs = [fb.filters.gaussian(s, sigma), fb.filters.log(s, sigma)]
    names = [f"gaussian({s},{sigma:.2f})", f"log({s},{sigma:.2f})"]
    i = 0
    while len(specs) < k:
        theta = math.pi * i / max(k - 2, 1)
        specs.append(fb.filters.gabor(s, s / 4.0, theta, s / 2.0))
        names.append(f"gabor({s},theta={theta:.2f})")
        i += 1
    return fb.filters.bank(*specs[:k]), names[:k]


@dataclass(frozen=True)
class Budget:
    """How long to time one (implementation, metric): a block of ``iters`` calls lasts at least
    ``min_block_s``; blocks are repeated until about ``target_s`` is spent, within [min_reps, max_reps]."""

    min_block_s: float
    target_s: float
    min_reps: int
    max_reps: int


@dataclass(frozen=True)
class Sweep:
    """One parameter of the standard point varied over ``values``; compile baselines only at ``compile_at``.

    ``cuda_values`` replace ``values`` on a GPU, where the standard point is too small to leave the launch-overhead
    regime and larger sizes cost little time.
    """

    param: str
    values: tuple
    compile_at: tuple = ()
    cuda_values: tuple | None = None

    def values_for(self, device_type: str) -> tuple:
        return self.cuda_values if device_type == "cuda" and self.cuda_values else self.values


@dataclass(frozen=True)
class Preset:
    name: str
    standard: Point
    standard_budget: Budget
    sweep_budget: Budget
    sweeps: tuple[Sweep, ...]
    sweep_metrics: tuple[str, ...] = ("forward_backward",)
    memory_formats: tuple[str, ...] = ("contiguous", "channels_last")
    copy_bytes: int = 256 << 20


# Standard point of the headline (docs/design.md): float32, N=8, C=32, 96x96, the 4-filter 3x3 bank, zero padding.
STANDARD = Point()

PRESETS = {
    # A smoke run: every implementation, check and output file on a tiny point, sweeps of two points each.
    "quick": Preset(
        name="quick",
        standard=Point(n=2, c=8, h=32, w=32, in_channels=4),
        standard_budget=Budget(min_block_s=0.002, target_s=0.02, min_reps=3, max_reps=3),
        sweep_budget=Budget(min_block_s=0.002, target_s=0.01, min_reps=3, max_reps=3),
        sweeps=(
            Sweep("k", (1, 2)),
            Sweep("c", (4, 8)),
            Sweep("h", (16, 32)),
            Sweep("s", (3, 5)),
            Sweep("n", (1, 2)),
        ),
        memory_formats=("contiguous",),
        copy_bytes=32 << 20,
    ),
    # The numbers we report. Sized to finish in about 10 minutes on a 2-core CPU: the eager baselines of the
    # biggest points take up to seconds per call, so they get the minimum of repetitions; the sweeps time
    # forward+backward only (and the fused operators alone, forward and backward); torch.compile (tens of
    # seconds per shape to compile forward and backward on 2 cores, more for large filters) runs at the standard
    # point, at K=16 and at 5x5 filters.
    "full": Preset(
        name="full",
        standard=STANDARD,
        standard_budget=Budget(min_block_s=0.02, target_s=1.5, min_reps=5, max_reps=25),
        sweep_budget=Budget(min_block_s=0.02, target_s=0.6, min_reps=3, max_reps=15),
        sweeps=(
            Sweep("k", (1, 2, 4, 8, 16), compile_at=(16,)),
            Sweep("c", (8, 16, 32, 64), cuda_values=(8, 16, 32, 64, 128, 256, 512)),
            Sweep("h", (24, 48, 96, 144), cuda_values=(24, 48, 96, 192, 384, 768)),
            Sweep("s", (3, 5, 7, 9, 11), compile_at=(5,)),
            Sweep("n", (1, 2, 8, 16), cuda_values=(1, 2, 8, 32, 128)),
        ),
    ),
}

SWEEP_LABELS = {"k": "filters K", "c": "channels C", "h": "spatial size H=W", "s": "filter size S", "n": "batch N"}


def sweep_point(base: Point, param: str, value) -> Point:
    """``base`` with one parameter changed (a square image for the spatial sweep)."""
    if param == "h":
        return replace(base, h=value, w=value)
    return replace(base, **{param: value})
