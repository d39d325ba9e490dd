"""A pre-defined filter module written twice: with a grouped convolution, as published, and with fixedbranch.

Pre-defined filter networks (Linse, Barth and Martinetz, "Convolutional neural networks do work with pre-defined
filters", 2024; code in the repository Criscraft/PredefinedFilterNetworks, ``PredefinedFilterModule`` and
``PredefinedConvnxn`` in ``models/PFNet.py``) keep every n x n kernel fixed. A module (PFM) filters its C input
channels with a pool of 16 edge filters, then BatchNorm2d, ReLU, a learned 1x1 convolution and a second
BatchNorm2d. With the width factor f equal to the pool size, as in PFNet18's first module (f = 16, on the RGB
input, stride 2), every filter is applied to every channel: the published code repeats the pool and runs one grouped
convolution (groups=C), so filter k of channel c is channel c·16 + k, the channel-major order that
``fb.FixedBranch(bank, identity=False, order="channel", stride=s)`` writes in one fused pass. (For f = 1, PFNet18's
later modules, channel i gets the single filter i mod 16: an ordinary depthwise convolution, not modelled here.)

Run as a script, it checks in float64 that the two modules agree (forward, input gradient, weight gradients, BN
running statistics; 1e-10 relative), that the grouped module's saved state_dict loads unchanged into the fixedbranch
module (strict=True) and gives the same outputs, and times both in float32, the whole module and its filter stage
alone (forward in eval mode, forward+backward in training mode): a module with N=8, 32->32 channels, 56x56, and
PFNet18's first module, 3->64 channels, 224x224, stride 2. ``--quick`` uses small sizes. Exits non-zero if a check
fails.
"""

from __future__ import annotations

import argparse
import io
import math
import sys

import torch
import torch.nn.functional as F
import torch.utils.benchmark as benchmark
from torch import nn

import fixedbranch as fb

TOLERANCE = 1e-10  # float64, relative to the largest magnitude (docs/design.md)
# name: (N, C_in, C_out, stride, H = W)
CASES = {"module": (8, 32, 32, 1, 56), "PFNet18 first module": (8, 3, 64, 2, 224)}
QUICK_CASES = {"module": (2, 8, 8, 1, 16), "PFNet18 first module": (2, 3, 8, 2, 32)}


def edge_filters(size=3, n_angles=4, dtype=torch.float64):
    """PFNet's pool for ``filter_mode="All"``: (4·n_angles, size, size), 16 for the defaults.

    ``get_parameterized_filter`` of ``models/PFNet.py`` on the grid x, y in [-(size-1)/2, (size-1)/2]: with
    a = |φ - atan2(y, x)| and c = r cos(a), an uneven filter 1 - exp(-c²/2σ²) negated where a > π/2
    (σ = 0.3·size) and an even filter 2·exp(-c²/2σ²) (σ = 0.15·size), at φ = 0, 180/n_angles, ... degrees; each
    made zero-mean and divided by its L1 norm; all uneven ones, then all even ones, each as -w then +w.
    """
    g = torch.linspace(-(size - 1) / 2, (size - 1) / 2, size, dtype=torch.float64)
    y, x = torch.meshgrid(g, g, indexing="ij")  # rows are y, columns x, as numpy's meshgrid(x, y)
    r, angle = torch.sqrt(x * x + y * y), torch.atan2(y, x)
    pool = []
    for uneven, sigma in ((True, 0.3 * size), (False, 0.15 * size)):
        for i in range(n_angles):
            a = (math.radians(180 * i / n_angles) - angle).abs()
            bell = torch.exp(-0.5 * (torch.cos(a) * r / sigma) ** 2)
            w = torch.where(a > math.pi / 2, bell - 1, 1 - bell) if uneven else 2 * bell
            w = w - w.mean()
            w = w / w.abs().sum()
            pool += [-w, w]
    return torch.stack(pool).to(dtype)


class PFMGrouped(nn.Module):
    """``PredefinedFilterModule`` with f = 16 in plain PyTorch: repeated pool, grouped conv, BN, ReLU, 1x1, BN.

    Names follow the published module: ``predev_conv`` (the repeated pool), ``norm1``, ``relu``, ``conv1x1``,
    ``norm2``. The published ``PredefinedConvnxn`` keeps the pool and its repeated copy as frozen ``nn.Parameter``s;
    here the copy is a non-persistent buffer, so that the state_dict holds only what training changes: a published
    checkpoint loads once its ``predev_conv.*`` entries are dropped.
    """

    def __init__(self, in_channels, out_channels, stride=1, dtype=None):
        super().__init__()
        dtype = dtype or torch.get_default_dtype()
        pool = edge_filters(dtype=dtype)
        self.stride, self.padding = stride, pool.shape[-1] // 2
        self.set_filters(pool, in_channels)
        mid = in_channels * pool.shape[0]
        self.norm1 = nn.BatchNorm2d(mid, dtype=dtype)
        self.relu = nn.ReLU()
        self.conv1x1 = nn.Conv2d(mid, out_channels, kernel_size=1, bias=False, dtype=dtype)
        nn.init.kaiming_normal_(self.conv1x1.weight, mode="fan_out", nonlinearity="relu")  # PFNet_'s init
        self.norm2 = nn.BatchNorm2d(out_channels, dtype=dtype)

    def set_filters(self, pool, in_channels):
        # weight.repeat((C·f // 16, 1, 1, 1)) with f = 16: (C·16, 1, k, k), filter c·16 + k is pool[k].
        self.register_buffer("predev_conv", pool.repeat(in_channels, 1, 1).unsqueeze(1), persistent=False)

    def filters(self, x):
        return F.conv2d(x, self.predev_conv, None, self.stride, self.padding, groups=x.shape[1])

    def forward(self, x):
        return self.norm2(self.conv1x1(self.relu(self.norm1(self.filters(x)))))


class PFMFixedBranch(PFMGrouped):
    """The same module with the filter stage as one fixedbranch op: the same parameters and state_dict keys."""

    def set_filters(self, pool, in_channels):
        # Channel-major output without the identity is the grouped conv's c·16 + k layout; the pool is not repeated.
        self.predev_conv = fb.FixedBranch(pool, identity=False, order="channel", stride=self.stride)

    def filters(self, x):
        return self.predev_conv(x)


def rel_err(actual, expected):
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def pair(case, dtype=torch.float32, device="cpu", seed=0):
    """The two modules of a case, the fixedbranch one loaded with the grouped one's state_dict, and an input."""
    n, c_in, c_out, stride, size = case
    torch.manual_seed(seed)
    grouped = PFMGrouped(c_in, c_out, stride, dtype=dtype).to(device)
    fused = PFMFixedBranch(c_in, c_out, stride, dtype=dtype).to(device)
    fused.load_state_dict(grouped.state_dict())
    return grouped, fused, torch.randn(n, c_in, size, size, dtype=dtype, device=device)


def check(dtype=torch.float64, device="cpu", cases=None):
    """[(what, relative difference)] of the fixedbranch module against the grouped one, training mode."""
    cases = cases or {"module": (2, 4, 6, 1, 13), "first module": (2, 3, 5, 2, 23)}
    results = []
    for name, case in cases.items():
        grouped, fused, x = pair(case, dtype, device)
        outs, grads = [], []
        for block in (grouped, fused):
            xi = x.clone().requires_grad_()
            out = block(xi)
            g = torch.randn(out.shape, dtype=dtype, device=device, generator=torch.Generator(device).manual_seed(1))
            names = ["input", *dict(block.named_parameters())]
            grads.append(dict(zip(names, torch.autograd.grad(out, [xi, *block.parameters()], g))))
            outs.append(out.detach())
        results.append((f"{name}: forward", rel_err(outs[1], outs[0])))
        results += [(f"{name}: d/d{key}", rel_err(grads[1][key], grads[0][key])) for key in grads[0]]
        stats = [torch.cat([b.norm1.running_mean, b.norm1.running_var, b.norm2.running_mean, b.norm2.running_var])
                 for b in (grouped, fused)]
        results.append((f"{name}: BN running statistics", rel_err(stats[1], stats[0])))
    return results


def state_dict_round_trip(dtype=torch.float64, device="cpu", case=(2, 4, 6, 1, 13)):
    """Saves a trained-looking grouped module, loads the file into a new fixedbranch module (strict), compares."""
    grouped, _, x = pair(case, dtype, device)
    with torch.no_grad():
        for p in grouped.parameters():
            p.add_(torch.randn_like(p))
        grouped(x), grouped(x.flip(-1))  # running statistics away from their initial values
    file = io.BytesIO()
    torch.save(grouped.state_dict(), file)
    file.seek(0)
    state = torch.load(file)
    fused = PFMFixedBranch(*case[1:4], dtype=dtype).to(device)
    same_keys = list(state) == list(fused.state_dict())
    fused.load_state_dict(state, strict=True)
    grouped.eval(), fused.eval()
    return same_keys, rel_err(fused(x).detach(), grouped(x).detach())


def _median(fn, threads, min_run_time):
    timer = benchmark.Timer("fn()", globals={"fn": fn}, num_threads=threads)
    return timer.blocked_autorange(min_run_time=min_run_time).median


def _timed_pass(block, stage, forward, x):
    """A closure running the block (or its filter stage alone) forward in eval mode, or forward+backward in training."""
    run = block.filters if stage else block
    block.train(not forward)
    if forward:
        return torch.no_grad()(lambda: run(x))
    inputs, g = [x, *block.parameters()], torch.randn_like(run(x))
    return lambda: torch.autograd.grad(run(x), inputs, g, allow_unused=True)


def timings(cases=CASES, threads=2, min_run_time=1.0, rounds=3):
    """[(case, what, grouped s, fixedbranch s)] in float32, for the whole block and for its filter stage alone.

    "forward" runs in eval mode under no_grad; "fwd+bwd" in training mode, with the gradients of the input and of the
    parameters. The two formulations are timed in turn, ``rounds`` times, and the median of the rounds is kept, so
    that a change in the machine's load during the run does not favour either.
    """
    rows = []
    for name, case in cases.items():
        grouped, fused, x = pair(case)
        x.requires_grad_()
        n, c_in, c_out, stride, size = case
        label = f"{name}: N={n}, {c_in}->{c_out}, {size}x{size}" + (f", stride {stride}" if stride > 1 else "")
        for stage in (False, True):
            for forward in (True, False):
                samples = {grouped: [], fused: []}
                for _ in range(rounds):
                    for block in samples:
                        samples[block].append(_median(_timed_pass(block, stage, forward, x), threads, min_run_time))
                what = f"{'filter stage' if stage else 'block'} {'forward' if forward else 'fwd+bwd'}"
                rows.append((label, what, *(sorted(t)[len(t) // 2] for t in samples.values())))
    return rows


def print_table(rows):
    print(f"{'':<22}{'grouped':>12}{'fixedbranch':>13}{'speed-up':>10}")
    for i, (label, what, t_grouped, t_fused) in enumerate(rows):
        if i == 0 or label != rows[i - 1][0]:
            print(label)
        print(f"  {what:<20}{t_grouped * 1e3:>9.2f} ms{t_fused * 1e3:>10.2f} ms{t_grouped / t_fused:>9.2f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and short timings")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    results = check()
    same_keys, err = state_dict_round_trip()
    ok = True
    for what, value in results + [("state_dict loaded unchanged (strict=True): outputs", err)]:
        passed = value <= TOLERANCE
        ok &= passed
        print(f"CHECK {what}: relative difference {value:.1e} {'OK' if passed else 'FAILED'}")
    ok &= same_keys
    print(f"CHECK state_dict keys identical: {'OK' if same_keys else 'FAILED'}")
    rounds = 1 if args.quick else 3
    print(f"\nfloat32, {args.threads} threads, median of {rounds} interleaved round(s)")
    rows = timings(QUICK_CASES, args.threads, 0.05, 1) if args.quick else timings(threads=args.threads)
    print_table(rows)
    print("all checks passed" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
