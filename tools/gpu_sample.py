"""A small run that reaches every CUDA kernel of both generations, for compute-sanitizer (tools/gpu_check).

Every dtype, both memory formats and a strided view, the unrolled filter sizes (3x3, 5x5) and the generic ones
(2x2, 5x3, 7x7), every padding mode (so the border bands of the backward), identity / order / stride, stop sets
(past the 1024-branch inline mask too), the factored kernel (a DCT bank by the cost model, a Sobel bank forced),
and the verified generation's fallbacks (a filter too large for a shared-memory tile, a bank too large to copy into
shared memory). Sizes are tiny: under memcheck every launch is slow.

    python tools/gpu_sample.py              # on the GPU, both generations
    python tools/gpu_sample.py --device cpu # the same calls on the CPU: checks the script itself
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

import torch

import fixedbranch as fb

GENERATIONS = ("verified", "next")
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
SIZES = ((3, 3), (5, 5), (2, 2), (5, 3), (7, 7))
MODES = ("zeros", "reflect", "replicate", "circular")
LAYOUTS = ("contiguous", "channels_last", "sliced")
# (identity, order, stride)
OPTIONS = ((True, "branch", (1, 1)), (False, "channel", (2, 2)), (True, "channel", (2, 1)), (False, "branch", (1, 3)))


def layout(t: torch.Tensor, name: str) -> torch.Tensor:
    if name == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if name == "sliced":
        wide = torch.zeros(*t.shape[:3], 2 * t.shape[3], dtype=t.dtype, device=t.device)
        wide[..., ::2] = t
        return wide[..., ::2]
    return t.contiguous()


def pass_through(y, bank, mode, stop, identity, order, stride):
    ops = torch.ops.fixedbranch
    out = ops.fixed_branch(y, bank, mode, list(stop), identity, order, list(stride))
    g = layout(torch.randn(out.shape, dtype=out.dtype, device=out.device), "channels_last"
               if y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous() else "contiguous")
    grad = ops._fixed_branch_backward(g, bank, mode, list(stop), identity, order, list(stride), list(y.shape[2:]))
    return out, grad


def run(device: str) -> int:
    gen = torch.Generator().manual_seed(0)
    calls = 0
    cases = list(itertools.product(DTYPES, LAYOUTS, SIZES))
    for e, (dtype, lay, size) in enumerate(cases):
        mode = MODES[e % len(MODES)]
        identity, order, stride = OPTIONS[e % len(OPTIONS)]
        stop = (0, 2) if identity else (1,)
        bank = torch.randn(3, *size, generator=gen, dtype=torch.float64).to(dtype).to(device)
        # 8 channels x 40 columns: whole 16-byte vectors in both layouts; 19 rows: partial tiles.
        y = layout(torch.randn(2, 8, 19, 40, generator=gen).to(dtype).to(device), lay)
        pass_through(y, bank, mode, stop, identity, order, stride)
        calls += 2
    # Factored banks: a DCT basis by the cost model, an edge bank forced, every layout, with options.
    previous = torch.ops.fixedbranch._set_factoring("auto")
    try:
        for policy, bank64 in (("auto", fb.filters.dct(5)), ("always", fb.filters.bank("sobel_x", "laplacian4"))):
            torch.ops.fixedbranch._set_factoring(policy)
            for e, (dtype, lay) in enumerate(itertools.product((torch.float32, torch.bfloat16), LAYOUTS)):
                bank = bank64.to(dtype).to(device)
                y = layout(torch.randn(2, 8, 19, 40, generator=gen).to(dtype).to(device), lay)
                identity, order, stride = OPTIONS[e % len(OPTIONS)]
                pass_through(y, bank, MODES[e % len(MODES)], (), identity, order, stride)
                calls += 2
    finally:
        torch.ops.fixedbranch._set_factoring(previous)
    # The verified generation's fallbacks, and the next generation's generic paths on the same inputs.
    for size, k, dtype, hw, mode in (((77, 77), 2, torch.float64, (78, 78), "zeros"),
                                     ((15, 15), 12, torch.float32, (24, 30), "replicate")):
        bank = torch.randn(k, *size, generator=gen, dtype=torch.float64).to(dtype).to(device)
        y = torch.randn(1, 3, *hw, generator=gen).to(dtype).to(device)
        pass_through(y, bank, mode, (0, 1), True, "branch", (1, 1))
        calls += 2
    # More branches than the inline stop mask holds.
    bank = torch.randn(1100, 1, 2, generator=gen, dtype=torch.float64).to(device)
    g = torch.randn(1, 1101 * 2, 4, 5, generator=gen, dtype=torch.float64).to(device)
    torch.ops.fixedbranch._fixed_branch_backward(g, bank, "replicate", [0, 3, 1024, 1100], True, "branch", [1, 1],
                                                 [4, 5])
    calls += 1
    if device != "cpu":
        torch.cuda.synchronize()
    return calls


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    args = p.parse_args(argv)
    generations = GENERATIONS if args.device != "cpu" else ("(cpu)",)
    for generation in generations:
        os.environ["FIXEDBRANCH_CUDA_KERNELS"] = generation if args.device != "cpu" else "verified"
        calls = run(args.device)
        print(f"gpu_sample: {generation}: {calls} operator calls on {args.device}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
