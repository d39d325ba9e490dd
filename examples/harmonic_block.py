"""A harmonic-network block written twice: with a grouped convolution, as published, and with fixedbranch.

Harmonic networks (Ulicny, Krylov and Dahyot, "Harmonic convolutional networks based on discrete cosine transform",
Pattern Recognition 2022; code in the repository matej-ulicny/harmonic-networks, ``Harm2d(use_bn=True)`` in
``harmonic/modules.py``, the stem of its ImageNet ResNets) replace a k x k convolution by three steps: every filter
of a fixed bank of k² L1-normalised DCT filters on every input channel, a BatchNorm2d without affine parameters,
and a learned 1x1 convolution over the C·k² responses. The published code repeats the bank C times and runs one
grouped convolution (groups=C), so response k of channel c is channel c·k² + k: the channel-major order that
``fb.FixedBranch(bank, identity=False, order="channel", stride=s)`` writes in one fused pass. (The 3x3 layers of
its ResNets use ``use_bn=False``, which folds the bank into the learned weights: one ordinary convolution, not
modelled here; the 3x3 case below is the same block at the sizes of those layers.)

Run as a script, it checks in float64 that the two blocks agree (forward, input gradient, weight gradients, BN
running statistics; 1e-10 relative), that the grouped block's saved state_dict loads unchanged into the fixedbranch
block (strict=True) and gives the same outputs, and times both in float32, the whole block and its DCT stage alone
(forward in eval mode, forward+backward in training mode), on the sizes of the networks: a 3x3 block, N=8, 32->32
channels, 56x56, and the 7x7 stride-2 stem, 3->64 channels, 224x224. ``--quick`` uses small sizes. Exits non-zero
if a check fails.
"""

from __future__ import annotations

import argparse
import io
import sys

import torch
import torch.nn.functional as F
import torch.utils.benchmark as benchmark
from torch import nn

import fixedbranch as fb

TOLERANCE = 1e-10  # float64, relative to the largest magnitude (docs/design.md)
# name: (N, C_in, C_out, kernel_size, stride, H = W)
CASES = {"3x3 block": (8, 32, 32, 3, 1, 56), "7x7/2 stem": (8, 3, 64, 7, 2, 224)}
QUICK_CASES = {"3x3 block": (2, 8, 8, 3, 1, 16), "7x7/2 stem": (2, 3, 8, 7, 2, 32)}


class HarmGrouped(nn.Module):
    """``Harm2d(use_bn=True)`` of harmonic networks in plain PyTorch: repeated DCT bank, grouped conv, BN, 1x1 conv.

    Names and initialisation follow ``Harm2d``: ``dct`` (the repeated bank), ``bn``, ``weight``, ``bias``; ``level``
    and ``dc`` select filters as its ``level`` and ``DC``. ``Harm2d`` keeps ``dct`` as a frozen ``nn.Parameter``; here
    it is a non-persistent buffer, so that the state_dict holds only what training changes (``bn.*``, ``weight``,
    ``bias``): a published checkpoint loads once its ``dct`` entry is dropped. Padding is (k - 1) / 2, what the
    harmonic networks pass, so k is odd.
    """

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, bias=True, level=None, dc=True, dtype=None):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: expected an odd size (padding (k - 1) / 2), got {kernel_size}")
        dtype = dtype or torch.get_default_dtype()
        bank = fb.filters.dct(kernel_size, norm="l1", level=level, dc=dc, dtype=dtype)  # dct_filters(l1_norm=True)
        self.stride, self.padding = stride, kernel_size // 2
        self.set_dct(bank, in_channels)
        mid = in_channels * bank.shape[0]
        self.bn = nn.BatchNorm2d(mid, affine=False, dtype=dtype)
        self.weight = nn.Parameter(torch.empty(out_channels, mid, 1, 1, dtype=dtype))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self.bias = nn.Parameter(torch.zeros(out_channels, dtype=dtype)) if bias else None

    def set_dct(self, bank, in_channels):
        # dct_filters(groups=C, expand_dim=1): (C·K, 1, k, k), filter c·K + k is bank[k].
        self.register_buffer("dct", bank.repeat(in_channels, 1, 1).unsqueeze(1), persistent=False)

    def apply_dct(self, x):
        return F.conv2d(x, self.dct, None, self.stride, self.padding, groups=x.shape[1])

    def forward(self, x):
        return F.conv2d(self.bn(self.apply_dct(x)), self.weight, self.bias)


class HarmFixedBranch(HarmGrouped):
    """The same block with the DCT stage as one fixedbranch op: the same parameters and state_dict keys."""

    def set_dct(self, bank, in_channels):
        # Channel-major output without the identity is the grouped conv's c·K + k layout; the bank is not repeated.
        self.dct = fb.FixedBranch(bank, identity=False, order="channel", stride=self.stride)

    def apply_dct(self, x):
        return self.dct(x)


def rel_err(actual, expected):
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def pair(case, dtype=torch.float32, device="cpu", seed=0):
    """The two blocks of a case, the fixedbranch one loaded with the grouped one's state_dict, and an input."""
    n, c_in, c_out, k, stride, size = case
    torch.manual_seed(seed)
    grouped = HarmGrouped(c_in, c_out, k, stride, dtype=dtype).to(device)
    fused = HarmFixedBranch(c_in, c_out, k, stride, dtype=dtype).to(device)
    fused.load_state_dict(grouped.state_dict())
    return grouped, fused, torch.randn(n, c_in, size, size, dtype=dtype, device=device)


def check(dtype=torch.float64, device="cpu", cases=None):
    """[(what, relative difference)] of the fixedbranch block against the grouped one, training mode."""
    cases = cases or {"3x3 block": (2, 4, 6, 3, 1, 13), "7x7/2 stem": (2, 3, 5, 7, 2, 23)}
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
        stats = [torch.cat([b.bn.running_mean, b.bn.running_var]) for b in (grouped, fused)]
        results.append((f"{name}: BN running statistics", rel_err(stats[1], stats[0])))
    return results


def state_dict_round_trip(dtype=torch.float64, device="cpu", case=(2, 4, 6, 3, 1, 13)):
    """Saves a trained-looking grouped block, loads the file into a new fixedbranch block (strict), compares."""
    grouped, _, x = pair(case, dtype, device)
    with torch.no_grad():
        for p in grouped.parameters():
            p.add_(torch.randn_like(p))
        grouped(x), grouped(x.flip(-1))  # running statistics away from their initial values
    file = io.BytesIO()
    torch.save(grouped.state_dict(), file)
    file.seek(0)
    state = torch.load(file)
    fused = HarmFixedBranch(*case[1:5], dtype=dtype).to(device)
    same_keys = list(state) == list(fused.state_dict())
    fused.load_state_dict(state, strict=True)
    grouped.eval(), fused.eval()
    return same_keys, rel_err(fused(x).detach(), grouped(x).detach())


def _median(fn, threads, min_run_time):
    timer = benchmark.Timer("fn()", globals={"fn": fn}, num_threads=threads)
    return timer.blocked_autorange(min_run_time=min_run_time).median


def _timed_pass(block, stage, forward, x):
    """A closure running the block (or its DCT stage alone) forward in eval mode, or forward+backward in training."""
    run = block.apply_dct if stage else block
    block.train(not forward)
    if forward:
        return torch.no_grad()(lambda: run(x))
    inputs, g = [x, *block.parameters()], torch.randn_like(run(x))
    return lambda: torch.autograd.grad(run(x), inputs, g, allow_unused=True)


def timings(cases=CASES, threads=2, min_run_time=1.0, rounds=3):
    """[(case, what, grouped s, fixedbranch s)] in float32, for the whole block and for its DCT stage alone.

    "forward" runs in eval mode under no_grad; "fwd+bwd" in training mode, with the gradients of the input and of the
    parameters. The two formulations are timed in turn, ``rounds`` times, and the median of the rounds is kept, so
    that a change in the machine's load during the run does not favour either.
    """
    rows = []
    for name, case in cases.items():
        grouped, fused, x = pair(case)
        x.requires_grad_()
        n, c_in, c_out, k, stride, size = case
        label = f"{name}: N={n}, {c_in}->{c_out}, {size}x{size}"
        for stage in (False, True):
            for forward in (True, False):
                samples = {grouped: [], fused: []}
                for _ in range(rounds):
                    for block in samples:
                        samples[block].append(_median(_timed_pass(block, stage, forward, x), threads, min_run_time))
                what = f"{'DCT stage' if stage else 'block'} {'forward' if forward else 'fwd+bwd'}"
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
