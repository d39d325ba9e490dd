"""Trains a CNN with fixed-filter branches on handwritten digits, with the fused layer and with plain PyTorch.

The network is the one of the "accumulative back-propagation" question: a convolution, a bank of fixed filters
(Sobel x/y, Laplacian, Gaussian) applied to its output and concatenated with it, ReLU, max-pool, three fully
connected layers. It is trained twice from the same initial weights on the same batches: once with
``fb.FixedBranchConv2d`` (one fused autograd node) and once with ``nn.Conv2d`` + ``fb.reference.fixed_branch``
(F.pad, a depthwise conv per filter, torch.cat: ordinary autograd). At every step, plain autograd is also run at
the fused training's current weights on the same batch, so the loss and every parameter gradient of the fused
layer are compared with autograd's at identical inputs. A tensor hook on the layer's output records dL/dout, from
which ``fb.branch_contributions`` gives each branch's share of the accumulated gradient dL/dy.

Usage:
    python examples/demo.py [--epochs N] [--out DIR] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import pathlib
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from tqdm import tqdm

import fixedbranch as fb

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import demo_figures  # noqa: E402  (a sibling file, importable however the demo is started)

BANK_NAMES = ("sobel_x", "sobel_y", "laplacian4", "gaussian(3, 1.0)")
BRANCH_NAMES = ("identity",) + BANK_NAMES
# float32 has a 24-bit significand: one rounding is 2^-24 relative, and sums of a few hundred terms (a 3x3 conv
# over 16 channels, a 5120-wide linear layer) reorder to ~1e-6 relative. Anything above 1e-4 would be a bug.
AGREEMENT = 1e-4
HEADER = "epoch  train loss   |dloss|  rel dgrad  sum-check  runs apart  s fused    s ref  test acc fused / ref"


def make_bank() -> torch.Tensor:
    return fb.filters.bank("sobel_x", "sobel_y", "laplacian4", fb.filters.gaussian(3, 1.0), dtype=torch.float32)


class ReferenceBranchConv2d(nn.Conv2d):
    """nn.Conv2d then fb.reference.fixed_branch: the same layer in plain autograd, with nn.Conv2d's state_dict."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bank: torch.Tensor, padding: int):
        super().__init__(in_channels, out_channels, kernel_size, padding=padding)
        self.register_buffer("bank", bank.clone(), persistent=False)
        self.grad_y = None

    @property
    def num_branches(self) -> int:
        return self.bank.shape[0] + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        if y.requires_grad:
            # Plain autograd's own accumulation of dL/dy over the branches: the check on branch_contributions.
            y.register_hook(lambda g: setattr(self, "grad_y", g.detach()))
        return fb.reference.fixed_branch(y, self.bank)


class BranchedCNN(nn.Module):
    """conv + fixed branches -> ReLU -> max-pool -> flatten -> three fully connected layers."""

    def __init__(self, branch_conv: nn.Module, image_size: int, hidden: tuple[int, int], classes: int = 10):
        super().__init__()
        self.branch_conv = branch_conv
        features = branch_conv.out_channels * branch_conv.num_branches * (image_size // 2) ** 2
        self.fc1 = nn.Linear(features, hidden[0])
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.fc3 = nn.Linear(hidden[1], classes)
        self.grad_out = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch_conv(x)
        if out.requires_grad:
            # dL/dout of the branch layer (all K+1 slices): what branch_contributions splits per branch.
            out.register_hook(lambda g: setattr(self, "grad_out", g.detach()))
        h = F.max_pool2d(F.relu(out), 2).flatten(1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(h)))))


def load_data(image_size: int, limit: int | None, seed: int):
    """sklearn's 8x8 digits (shipped with the package), upsampled, standardised, stratified 75/25 split."""
    digits = load_digits()
    images, labels = digits.images.astype(np.float32) / 16.0, digits.target
    if limit is not None:
        images, _, labels, _ = train_test_split(images, labels, train_size=limit, stratify=labels, random_state=seed)
    x_tr, x_te, y_tr, y_te = train_test_split(images, labels, test_size=0.25, stratify=labels, random_state=seed)
    x_tr, x_te = (F.interpolate(torch.from_numpy(a)[:, None], size=image_size, mode="bilinear") for a in (x_tr, x_te))
    mean, std = x_tr.mean(), x_tr.std()
    return (x_tr - mean) / std, torch.from_numpy(y_tr), (x_te - mean) / std, torch.from_numpy(y_te)


class Run:
    """One of the two trainings: model, optimiser, and what it measured."""

    def __init__(self, name: str, model: nn.Module, lr: float):
        self.name, self.model = name, model
        self.opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        self.step_losses: list[float] = []
        self.epoch_seconds: list[float] = []
        self.test_accuracy: list[float] = []

    def forward_backward(self, xb: torch.Tensor, yb: torch.Tensor) -> float:
        start = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(xb), yb)
        loss.backward()
        elapsed = time.perf_counter() - start
        self.step_losses.append(loss.item())
        return elapsed

    def update(self) -> float:
        start = time.perf_counter()
        self.opt.step()
        return time.perf_counter() - start

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        return (self.model(x).argmax(1) == y).double().mean().item()


def relative_grad_difference(a: nn.Module, b: nn.Module) -> float:
    """max over parameters of max|grad_a - grad_b| / max|grad_b|."""
    worst = 0.0
    for pa, pb in zip(a.parameters(), b.parameters()):
        worst = max(worst, ((pa.grad - pb.grad).abs().max() / pb.grad.abs().max().clamp_min(1e-30)).item())
    return worst


def relative_weight_difference(a: nn.Module, b: nn.Module) -> float:
    """max over parameters of max|a - b| / max|b|: how far apart two trainings have drifted."""
    worst = 0.0
    for pa, pb in zip(a.parameters(), b.parameters()):
        worst = max(worst, ((pa - pb).abs().max() / pb.abs().max()).item())
    return worst


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default 12; 2 with --quick)")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("demo_output"), help="folder for the PNGs")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of a few seconds")
    # At 0.005 the two float32 trainings stay ~1e-5 apart for the whole run; at 0.02 training amplifies the
    # round-off until the runs differ in the first digit by epoch 3 (same accuracy, different weights).
    parser.add_argument("--lr", type=float, default=0.005, help="SGD learning rate (momentum 0.9)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.epochs is None:
        args.epochs = 2 if args.quick else 12
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    wall_start = time.perf_counter()
    size, channels, hidden, limit, batch = (8, 4, (32, 16), 300, 50) if args.quick else (16, 16, (128, 64), None, 32)

    x_tr, y_tr, x_te, y_te = load_data(size, limit, args.seed)
    bank = make_bank()
    torch.manual_seed(args.seed)
    fused = BranchedCNN(fb.FixedBranchConv2d(1, channels, 3, bank=bank, padding=1), size, hidden)
    reference = BranchedCNN(ReferenceBranchConv2d(1, channels, 3, bank, padding=1), size, hidden)
    reference.load_state_dict(fused.state_dict())  # same keys: the bank is a non-persistent buffer in both
    runs = [Run("fused", fused, args.lr), Run("reference", reference, args.lr)]
    probe = copy.deepcopy(reference)  # evaluates plain autograd at the fused run's weights, step by step

    print(f"fixedbranch {fb.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"digits: {len(x_tr)} train / {len(x_te)} test images, {size}x{size}; bank = {', '.join(BANK_NAMES)}")
    print(f"network: {fused.branch_conv} -> ReLU -> max-pool 2 -> Linear x3 {hidden}")
    print("two trainings from the same initial weights on the same batches: fused (FixedBranchConv2d) and reference "
          "(nn.Conv2d + fb.reference.fixed_branch)\n")
    print("  |dloss|, rel dgrad: largest difference per epoch between the fused layer and plain autograd at the same")
    print("                      weights and batch (loss: absolute; gradients: relative to the largest entry)")
    print("  sum-check:          largest |sum of branch_contributions - autograd's dL/dy|, relative")
    print("  runs apart:         largest relative weight difference between the two trainings (round-off, amplified)")
    print("  s fused, s ref:     seconds per epoch of each training (forward + backward + optimiser step)\n")
    print(HEADER)

    steps_per_epoch = -(-len(x_tr) // batch)
    shuffle = torch.Generator().manual_seed(args.seed)
    shares_per_step, shares_per_epoch = [], []
    history = {"loss_diff": [], "grad_diff": [], "sum_check": [], "drift": []}
    bar = tqdm(total=args.epochs * steps_per_epoch, unit="step", dynamic_ncols=True, file=sys.stdout)
    for epoch in range(1, args.epochs + 1):
        seconds = [0.0, 0.0]
        norm_sum = torch.zeros(len(BRANCH_NAMES), dtype=torch.float64)
        order = torch.randperm(len(x_tr), generator=shuffle)
        for i in range(steps_per_epoch):
            idx = order[i * batch : (i + 1) * batch]
            xb, yb = x_tr[idx], y_tr[idx]
            seconds[0] += runs[0].forward_backward(xb, yb)
            # Plain autograd at the fused run's current weights: the two gradients differ only by summation order.
            probe.load_state_dict(fused.state_dict())
            probe.zero_grad(set_to_none=True)
            probe_loss = F.cross_entropy(probe(xb), yb)
            probe_loss.backward()
            history["loss_diff"].append(abs(probe_loss.item() - runs[0].step_losses[-1]))
            history["grad_diff"].append(relative_grad_difference(fused, probe))

            # Each branch's share F_k^T g_k of dL/dy, from the fused run's dL/dout; its norm summed over the epoch.
            shares = fb.branch_contributions(fused.grad_out, bank)
            norms = shares.flatten(1).norm(dim=1).double()
            norm_sum += norms
            shares_per_step.append((norms / norms.sum()).tolist())
            # The shares sum to dL/dy: checked against plain autograd's own accumulation over the branches.
            total = fb.branch_contributions(probe.grad_out, bank).sum(0)
            grad_y = probe.branch_conv.grad_y
            history["sum_check"].append(((total - grad_y).abs().max() / grad_y.abs().max()).item())

            seconds[0] += runs[0].update()
            seconds[1] += runs[1].forward_backward(xb, yb) + runs[1].update()
            bar.update()
            bar.set_postfix(epoch=epoch, loss=f"{runs[0].step_losses[-1]:.3f}")

        for r, run in enumerate(runs):
            run.epoch_seconds.append(seconds[r])
            run.test_accuracy.append(run.accuracy(x_te, y_te))
        shares_per_epoch.append((norm_sum / norm_sum.sum()).tolist())
        history["drift"].append(relative_weight_difference(fused, reference))
        recent = slice(-steps_per_epoch, None)
        bar.write(
            f"{epoch:5d}  {np.mean(runs[0].step_losses[recent]):10.4f}  {max(history['loss_diff'][recent]):8.1e}  "
            f"{max(history['grad_diff'][recent]):9.1e}  {max(history['sum_check'][recent]):9.1e}  "
            f"{history['drift'][-1]:10.1e}  {seconds[0]:7.2f}  {seconds[1]:7.2f}  "
            f"{runs[0].test_accuracy[-1]:14.2%} / {runs[1].test_accuracy[-1]:.2%}"
        )
    bar.close()

    print("\nshare of dL/dy sent back by each branch, ||F_k^T g_k|| / sum_j ||F_j^T g_j||, summed over the epoch:")
    print("epoch  " + "  ".join(f"{n:>16s}" for n in BRANCH_NAMES))
    for epoch, row in enumerate(shares_per_epoch, 1):
        print(f"{epoch:5d}  " + "  ".join(f"{s:16.1%}" for s in row))
    print("(dL/dy is the sum of these K+1 terms; the convolution's weights receive the gradient of that sum)")

    args.out.mkdir(parents=True, exist_ok=True)
    figures = [
        demo_figures.loss_curves(runs, history, steps_per_epoch, args.out / "loss_curves.png"),
        demo_figures.branch_shares(shares_per_step, shares_per_epoch, BRANCH_NAMES, steps_per_epoch,
                                   args.out / "branch_shares.png"),
        demo_figures.filter_bank_on_photo(bank, BRANCH_NAMES, args.out / "filter_bank_photo.png",
                                          small=args.quick),
    ]

    worst = max(max(history["loss_diff"]), max(history["grad_diff"]), max(history["sum_check"]))
    agree = worst < AGREEMENT
    # The median: one epoch slowed by another process on the machine should not move the comparison.
    fused_s, ref_s = np.median(runs[0].epoch_seconds), np.median(runs[1].epoch_seconds)
    print("\nsummary")
    print(f"  agreement: largest loss difference {max(history['loss_diff']):.1e}, largest relative gradient "
          f"difference {max(history['grad_diff']):.1e} over {len(history['grad_diff'])} steps "
          f"(float32 round-off is ~1e-6 relative): {'AGREE' if agree else 'DISAGREE'}")
    print(f"  branch shares sum to dL/dy: largest relative error {max(history['sum_check']):.1e}")
    print(f"  the two trainings' weights ended {history['drift'][-1]:.1e} apart (relative)")
    print(f"  median time per epoch (forward + backward + step): fused {fused_s:.2f} s, reference {ref_s:.2f} s "
          f"({ref_s / fused_s:.2f}x)")
    epochs = f"{args.epochs} epoch{'s' * (args.epochs != 1)}"
    print(f"  test accuracy after {epochs}: fused {runs[0].test_accuracy[-1]:.2%}, "
          f"reference {runs[1].test_accuracy[-1]:.2%}")
    print(f"  figures: {', '.join(str(f) for f in figures)}")
    print(f"  wall time {time.perf_counter() - wall_start:.1f} s")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
