"""The CPU kernels' choices that depend on the last-level cache: outputs that outgrow it are stored past it (streaming
stores), as is a direct bank's dL/dy when it and the gradient together do; inputs and gradients that come from memory
are prefetched (past their tasks', planes' and tensors' last rows: the stride-2 pair kernels and the factored
backward's transposed row sums; and the next task's identity rows).
On small tensors those paths run only when the kernels believe the cache small, so a subprocess sets
FIXEDBRANCH_CPU_CACHE_BYTES (read once per process) to 4 KiB and checks, against the reference, outputs and
gradients whose rows start on and off the vector alignment that streaming needs, direct and factored banks, strided
planes and tiles, every padding mode, both layouts, both channel orders and both real dtypes. Also the cache sizes
the kernels plan for, as listed and as counted on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHECK = r"""
import itertools
import torch
import fixedbranch as fb
from fixedbranch import reference
from tests.common import ORDERS, PADDING_MODES, assert_close, backward_op, to_layout

banks = {
    "3x3 direct": fb.filters.bank(fb.filters.sobel_x(), fb.filters.sobel_y(), fb.filters.laplacian4(),
                                  fb.filters.gaussian(3, 1.0)),
    "DCT 5x5 factored": fb.filters.dct(5),
    "Haar 2x2": fb.filters.wavelet("db1"),  # at stride 2 on an even NCHW map: the tile kernels
}
gen = torch.Generator().manual_seed(0)
checked = 0
# (C, H, W): rows of whole vectors (W 96: streamed in NCHW) and rows that start off the alignment (W 37); 32
# channels (channels_last pixels of whole vectors: streamed) and one (a channels_last output stored as NCHW rows
# whose pixels lie K+1 values apart: never streamed). Strides 1 and 2.
for (name, bank), (c, h, w), stride, mode, dtype, layout, identity, order in itertools.product(
        banks.items(), [(3, 20, 96), (3, 9, 37), (32, 5, 12), (1, 7, 40)], [1, 2], PADDING_MODES,
        [torch.float32, torch.float64], ["contiguous", "channels_last"], [True, False], ORDERS):
    if (mode != "zeros" or layout != "contiguous") and dtype == torch.float64 and not identity:
        continue  # every mode and layout once per dtype is enough; the identity's store is the one that differs
    if order != "branch" and (mode != "zeros" or stride != 1):
        continue  # the order changes only where slots are stored
    y = to_layout(torch.randn(2, c, h, w, generator=gen, dtype=dtype), layout)
    what = f"{name} {c}x{h}x{w} stride {stride} {mode} {dtype} {layout} identity={identity} order={order}"
    out = fb.fixed_branch(y, bank, mode, identity=identity, order=order, stride=stride)
    expected = reference.fixed_branch(y.double(), bank.double(), mode, identity=identity, order=order, stride=stride)
    assert_close(out, expected, dtype, what + " forward")
    g = to_layout(torch.randn(out.shape, generator=gen, dtype=dtype), layout)
    y64 = y.double().requires_grad_()
    (expected_grad,) = torch.autograd.grad(
        reference.fixed_branch(y64, bank.double(), mode, identity=identity, order=order, stride=stride), y64,
        g.double())
    got = backward_op(g, bank.to(dtype), mode, identity=identity, order=order, stride=stride, input_size=(h, w))
    assert_close(got, expected_grad, dtype, what + " backward")
    checked += 1
print("checked", checked)
"""


def test_large_operand_paths_match_reference():
    env = dict(os.environ, FIXEDBRANCH_CPU_CACHE_BYTES="4096")
    done = subprocess.run([sys.executable, "-c", CHECK], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split()[-1] == "684", done.stdout


SIZES = "from fixedbranch import _C; print(_C.cpu_cache_bytes, _C.cpu_owned_cache_bytes)"


def _cache_sizes(set_bytes: str | None) -> list[int]:
    """The listed and the counted-on cache of a fresh process, FIXEDBRANCH_CPU_CACHE_BYTES set to `set_bytes`."""
    env = {k: v for k, v in os.environ.items() if k != "FIXEDBRANCH_CPU_CACHE_BYTES"}
    if set_bytes is not None:
        env["FIXEDBRANCH_CPU_CACHE_BYTES"] = set_bytes
    done = subprocess.run([sys.executable, "-c", SIZES], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return [int(v) for v in done.stdout.split()]


def test_cache_the_kernels_count_on():
    # As listed, at most 16 MiB per CPU (a virtual machine may list its host's whole cache); set, taken as is.
    listed, owned = _cache_sizes(None)
    assert listed > 0
    assert owned == min(listed, 16 * 2**20 * os.cpu_count())
    assert _cache_sizes("4096") == [4096, 4096]
    assert _cache_sizes(str(2**40)) == [2**40, 2**40]
    assert _cache_sizes("-5")[0] == listed  # not a positive integer: ignored
