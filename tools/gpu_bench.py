"""The branch operators on a GPU against the device's copy bandwidth, per kernel generation: the numbers the GPU
targets are stated in (docs/design.md section 7; forward >= 85% and backward >= 75% of the copy in float32,
bfloat16 and float16 at >= 100 MiB outputs).

Each row times the raw operators (no autograd) with CUDA events, the median of several repetitions after a warm-up,
on N=32, C=64, 128x128 with a K=4 bank (3x3: Sobel x/y, Laplacian, Gaussian; a full-rank random 5x5 bank) and on
N=4 with the 64 filters of the 8x8 DCT basis (factored under the next kernels), and divides the bytes each pass must move (forward: read y, write B maps; backward:
read B gradient maps, write dL/dy) by the time of a device-to-device copy of as many bytes measured in the same run.
Writes a JSON file and prints a table.

    python tools/gpu_bench.py --out DIR            # both generations, float32 and bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

import fixedbranch as fb

GENERATIONS = ("verified", "next")
N, C, H, W = 32, 64, 128, 128


def timed(fn, reps: int = 20, warmup: int = 3) -> float:
    """Median milliseconds of fn() with CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def copy_ms(nbytes: int, dtype: torch.dtype) -> float:
    """A device-to-device copy moving nbytes (read + write), the yardstick of the same run."""
    n = nbytes // 2 // torch.empty((), dtype=dtype).element_size()
    src = torch.randn(n, device="cuda").to(dtype)
    dst = torch.empty_like(src)
    return timed(lambda: dst.copy_(src))


def banks() -> dict:
    gen = torch.Generator().manual_seed(0)
    return {
        "3x3 edges": fb.filters.bank("sobel_x", "sobel_y", "laplacian4", fb.filters.gaussian(3, 1.0)),
        "5x5 random": torch.randn(4, 5, 5, generator=gen, dtype=torch.float64),
        "8x8 dct (64)": fb.filters.dct(8),
    }


def rows(dtypes):
    ops = torch.ops.fixedbranch
    gen = torch.Generator(device="cuda").manual_seed(0)
    for dtype in dtypes:
        for bank_name, bank64 in banks().items():
            bank = bank64.to(device="cuda", dtype=dtype)
            cases = [("contiguous", "zeros", True, "branch", 1), ("channels_last", "zeros", True, "branch", 1)]
            if bank_name == "3x3 edges":
                cases += [("contiguous", "reflect", True, "branch", 1), ("contiguous", "zeros", False, "channel", 1),
                          ("contiguous", "zeros", True, "branch", 2), ("channels_last", "zeros", True, "channel", 1)]
            for layout, mode, identity, order, stride in cases:
                fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
                n = 4 if bank.shape[0] > 4 else N  # 65 output maps: keep the output near 1 GiB
                y = torch.randn(n, C, H, W, device="cuda", generator=gen).to(dtype).contiguous(memory_format=fmt)
                args = (mode, [], identity, order, [stride, stride])
                out = ops.fixed_branch(y, bank, *args)
                g = torch.randn(out.shape, device="cuda", generator=gen).to(dtype).contiguous(memory_format=fmt)
                nbytes = (y.numel() + out.numel()) * y.element_size()
                copy = copy_ms(nbytes, dtype)
                row = {"dtype": str(dtype).replace("torch.", ""), "bank": bank_name, "layout": layout, "mode": mode,
                       "identity": identity, "order": order, "stride": stride, "MiB": nbytes / 2**20,
                       "copy_ms": copy}
                for generation in GENERATIONS:
                    os.environ["FIXEDBRANCH_CUDA_KERNELS"] = generation
                    fwd = timed(lambda: ops.fixed_branch(y, bank, *args))
                    bwd = timed(lambda: ops._fixed_branch_backward(g, bank, *args, [H, W]))
                    row[generation] = {"fwd_ms": fwd, "bwd_ms": bwd, "fwd_pct": 100 * copy / fwd,
                                       "bwd_pct": 100 * copy / bwd}
                os.environ["FIXEDBRANCH_CUDA_KERNELS"] = "verified"
                yield row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("."))
    p.add_argument("--dtypes", default="float32,bfloat16")
    args = p.parse_args(argv)
    torch.backends.cudnn.allow_tf32 = False
    dtypes = [getattr(torch, name) for name in args.dtypes.split(",")]
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "N": N, "C": C, "H": H, "W": W,
               "rows": []}
    header = (f"{'dtype':<9} {'bank':<13} {'layout':<13} {'mode':<8} {'opt':<12} {'MiB':>5} {'copy ms':>8} | "
              + " | ".join(f"{g + ' fwd':>12} {'%':>4} {g + ' bwd':>12} {'%':>4}" for g in GENERATIONS))
    lines = [f"{results['device']}, torch {results['torch']}: N={N} (4 for the DCT bank) C={C} {H}x{W}; % of the copy "
             "of the same bytes", header]
    print(lines[0], flush=True)
    print(header, flush=True)
    for row in rows(dtypes):
        results["rows"].append(row)
        opt = f"{'id' if row['identity'] else 'noid'},{row['order'][:2]},s{row['stride']}"
        line = (f"{row['dtype']:<9} {row['bank']:<13} {row['layout']:<13} {row['mode']:<8} {opt:<12} "
                f"{row['MiB']:>5.0f} {row['copy_ms']:>8.3f} | "
                + " | ".join(f"{row[g]['fwd_ms']:>12.3f} {row[g]['fwd_pct']:>4.0f} {row[g]['bwd_ms']:>12.3f} "
                             f"{row[g]['bwd_pct']:>4.0f}" for g in GENERATIONS))
        lines.append(line)
        print(line, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_bench.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "gpu_bench.md").write_text("```\n" + "\n".join(lines) + "\n```\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
