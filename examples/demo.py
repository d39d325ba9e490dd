"""Trains a CNN with fixed-filter branches on handwritten digits, with the fused layer and with plain PyTorch.

The network is the one of the "accumulative back-propagation" question: a convolution, a bank of fixed filters
(Sobel x/y, Laplacian, Gaussian) applied to its output and concatenated with it, ReLU, max-pool, three fully
connected layers. It is trained twice from the same initial weights on the same batches: once with
``fb.FixedBranchConv2d`` (one fused autograd node) and once with ``nn.Conv2d`` + ``fb.reference.fixed_branch``
(F.pad, a depthwise conv per filter, torch.cat: ordinary autograd). At every step, plain autograd is also run at
the fused training's current weights on the same batch, so the loss and every parameter gradient of the fused
layer are compared with autograd's at identical inputs. A tensor hook on the layer's output records dL/dout, from
which ``fb.branch_contributions`` gives each branch's share of the accumulated gradient dL/dy.

The two float32 trainings drift apart although every step agrees to round-off: training amplifies differences in
the last bit. Two more trainings show what the drift is: plain PyTorch against itself started one ulp away (no
fixedbranch involved, same drift), and the fused and plain trainings again in float64 (the same code, round-off
2^29 times smaller, drift smaller by about as much).

Usage:
    python examples/demo.py [--epochs N] [--out DIR] [--quick] [--write-docs]

--write-docs also writes the results to docs/demo_results.md, the figures to docs/ and the results into the
README's Demo section (between its demo markers).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import pathlib
import platform
import re
import shutil
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

ROOT = pathlib.Path(__file__).resolve().parents[1]
README_BEGIN, README_END = "<!-- demo:begin -->", "<!-- demo:end -->"
BANK_NAMES = ("sobel_x", "sobel_y", "laplacian4", "gaussian(3, 1.0)")
BRANCH_NAMES = ("identity",) + BANK_NAMES
# float32 has a 24-bit significand: one rounding is 2^-24 relative, and sums of a few hundred terms (a 3x3 conv
# over 16 channels, a 5120-wide linear layer) reorder to ~1e-6 relative. Anything above 1e-4 would be a bug.
AGREEMENT = 1e-4
# Two float64 trainings whose weights end further apart than float32's epsilon would differ by more than
# round-off: an implementation difference does not shrink with the precision, round-off shrinks by 2^29.
FLOAT64_DRIFT_BOUND = float(torch.finfo(torch.float32).eps)
HEADER = "epoch  train loss   |dloss|  rel dgrad  sum-check  s fused    s ref  test acc fused / ref"
DRIFT_HEADER = "epoch  fused vs ref  ref vs ref+1ulp  fused vs ref f64  f64 rel dgrad"
DRIFT_TITLE = "weights apart after each epoch, largest relative difference max|a - b| / max|b| over the parameters:"
SHARES_TITLE = "share of dL/dy sent back by each branch, ||F_k^T g_k|| / sum_j ||F_j^T g_j||, summed over the epoch:"
SHARES_HEADER = "epoch  " + "  ".join(f"{n:>16s}" for n in BRANCH_NAMES)


def make_bank() -> torch.Tensor:
    return fb.filters.bank("sobel_x", "sobel_y", "laplacian4", fb.filters.gaussian(3, 1.0), dtype=torch.float32)


class ReferenceBranchConv2d(nn.Conv2d):
    """nn.Conv2d then fb.reference.fixed_branch: the same layer in plain autograd, with nn.Conv2d's state_dict."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int, *, bank: torch.Tensor):
        super().__init__(in_channels, out_channels, kernel_size, padding=padding)
        self.register_buffer("bank", bank.clone(), persistent=False)
        self.grad_y = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        if y.requires_grad:
            # Plain autograd's own accumulation of dL/dy over the branches: the check on branch_contributions.
            y.register_hook(lambda g: setattr(self, "grad_y", g.detach()))
        return fb.reference.fixed_branch(y, self.bank)


def branch_conv(kind: str, channels: int, bank: torch.Tensor) -> nn.Module:
    if kind == "fused":
        return fb.FixedBranchConv2d(1, channels, 3, padding=1, bank=bank)
    return ReferenceBranchConv2d(1, channels, 3, padding=1, bank=bank)


class BranchedCNN(nn.Module):
    """conv + fixed branches -> ReLU -> max-pool -> flatten -> three fully connected layers."""

    def __init__(self, branch_conv: nn.Module, image_size: int, hidden: tuple[int, int], classes: int = 10):
        super().__init__()
        self.branch_conv = branch_conv
        with torch.no_grad():  # the branch layer's output width, (K+1) x its convolution's channels
            features = branch_conv(torch.zeros(1, 1, image_size, image_size)).shape[1] * (image_size // 2) ** 2
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
    """One training: model, optimiser, and what it measured."""

    def __init__(self, name: str, model: nn.Module, lr: float):
        self.name, self.model = name, model
        self.dtype = next(model.parameters()).dtype
        self.opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        self.step_losses: list[float] = []
        self.epoch_seconds: list[float] = []
        self.test_accuracy: list[float] = []

    def forward_backward(self, xb: torch.Tensor, yb: torch.Tensor) -> float:
        start = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(xb.to(self.dtype)), yb)
        loss.backward()
        elapsed = time.perf_counter() - start
        self.step_losses.append(loss.item())
        return elapsed

    def update(self) -> float:
        start = time.perf_counter()
        self.opt.step()
        return time.perf_counter() - start

    def train_step(self, xb: torch.Tensor, yb: torch.Tensor) -> float:
        return self.forward_backward(xb, yb) + self.update()

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        return (self.model(x.to(self.dtype)).argmax(1) == y).double().mean().item()


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


def probe_gradients(probe: nn.Module, run: Run, xb: torch.Tensor, yb: torch.Tensor) -> tuple[float, float]:
    """Plain autograd at the run's current weights on its last batch: |loss difference|, relative gradient diff.

    Call between the run's forward_backward and its update, so that its gradients belong to these weights."""
    probe.load_state_dict(run.model.state_dict())
    probe.zero_grad(set_to_none=True)
    loss = F.cross_entropy(probe(xb.to(run.dtype)), yb)
    loss.backward()
    return abs(loss.item() - run.step_losses[-1]), relative_grad_difference(run.model, probe)


@torch.no_grad()
def nudge_one_ulp(model: nn.Module) -> nn.Module:
    """Every weight moved to the next representable value towards +inf: a start one rounding away."""
    for p in model.parameters():
        p.copy_(torch.nextafter(p, torch.full_like(p, float("inf"))))
    return model


def machine() -> str:
    """The CPU, its vector extensions, the threads and what fixedbranch was built for: what the numbers depend on."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    isa = [name for name in ("avx512f", "avx2") if name in flags]
    cpu = model + (f" ({', '.join(isa)})" if isa else "")
    built, threads = getattr(fb._C, "cpu_isa", "unknown"), torch.get_num_threads()
    return (f"{cpu}, {os.cpu_count()} CPUs; torch {torch.__version__}, {threads} thread{'s' * (threads != 1)}; "
            f"fixedbranch {fb.__version__}, CPU kernels built for {built}")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default 12; 2 with --quick)")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("demo_output"),
                        help="folder for the PNGs and results.md")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of a few seconds")
    parser.add_argument("--write-docs", action="store_true",
                        help="also write docs/demo_results.md, the figures in docs/ and the README's Demo block")
    parser.add_argument("--lr", type=float, default=0.005, help="SGD learning rate (momentum 0.9)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.epochs is None:
        args.epochs = 2 if args.quick else 12
    return args


def shown_epochs(epochs: int) -> list[int]:
    """The rows the results file keeps: first, middle, last."""
    return sorted({1, (epochs + 1) // 2, epochs})


def results_markdown(lines: dict, epochs: int, command: str) -> str:
    """The README's Demo block: the demo's own lines at the shown epochs, and the machine that printed them."""
    keep = shown_epochs(epochs)
    body = []
    tables = (("fused vs plain autograd at the same weights and batch, per epoch:", HEADER, lines["train"]),
              (DRIFT_TITLE, DRIFT_HEADER, lines["drift"]), (SHARES_TITLE, SHARES_HEADER, lines["shares"]))
    for title, header, rows in tables:
        body += [title, header] + [rows[e - 1] for e in keep] + [""]
    day = datetime.date.today().isoformat()
    return (f"Printed by `{command}` on {day}: {lines['machine']}. "
            f"Epochs {', '.join(map(str, keep))} of {epochs}; the summary:\n\n"
            "```\n" + "\n".join(body) + "\n" + "\n".join(lines["summary"]) + "\n```\n")


def write_readme_block(readme: pathlib.Path, block: str) -> None:
    text = readme.read_text()
    pattern = re.compile(re.escape(README_BEGIN) + r"\n.*?" + re.escape(README_END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{readme}: no {README_BEGIN} ... {README_END} block to fill")
    readme.write_text(pattern.sub(lambda _: f"{README_BEGIN}\n{block}{README_END}", text))


def main(argv=None) -> int:
    args = parse_args(argv)
    wall_start = time.perf_counter()
    size, channels, hidden, limit, batch = (8, 4, (32, 16), 300, 50) if args.quick else (16, 16, (128, 64), None, 32)

    x_tr, y_tr, x_te, y_te = load_data(size, limit, args.seed)
    bank = make_bank()
    torch.manual_seed(args.seed)
    fused = BranchedCNN(branch_conv("fused", channels, bank), size, hidden)
    reference = BranchedCNN(branch_conv("reference", channels, bank), size, hidden)
    reference.load_state_dict(fused.state_dict())  # same keys: the bank is a non-persistent buffer in both
    runs = [Run("fused", fused, args.lr), Run("reference", reference, args.lr)]
    # What the drift is: plain PyTorch against itself from a start one ulp away, and both trainings in float64.
    nudged = Run("reference + 1 ulp", nudge_one_ulp(copy.deepcopy(reference)), args.lr)
    runs64 = [Run(r.name + " float64", copy.deepcopy(r.model).double(), args.lr) for r in runs]
    probe = copy.deepcopy(reference)  # evaluates plain autograd at the fused run's weights, step by step
    probe64 = copy.deepcopy(reference).double()

    machine_line = machine()
    print(f"{machine_line}")
    print(f"digits: {len(x_tr)} train / {len(x_te)} test images, {size}x{size}; bank = {', '.join(BANK_NAMES)}")
    print(f"network: {fused.branch_conv} -> ReLU -> max-pool 2 -> Linear x3 {hidden}")
    print("two trainings from the same initial weights on the same batches: fused (FixedBranchConv2d) and reference "
          "(nn.Conv2d + fb.reference.fixed_branch)\n")
    print("  |dloss|, rel dgrad: largest difference per epoch between the fused layer and plain autograd at the same")
    print("                      weights and batch (loss: absolute; gradients: relative to the largest entry)")
    print("  sum-check:          largest |sum of branch_contributions - autograd's dL/dy|, relative")
    print("  s fused, s ref:     seconds per epoch of each training (forward + backward + optimiser step)\n")
    print(HEADER)

    steps_per_epoch = -(-len(x_tr) // batch)
    shuffle = torch.Generator().manual_seed(args.seed)
    shares_per_step, shares_per_epoch = [], []
    history = {"loss_diff": [], "grad_diff": [], "sum_check": [], "drift": [], "drift_nudged": [], "drift64": [],
               "grad_diff64": []}
    lines = {"machine": machine_line, "train": [], "drift": [], "shares": [], "summary": []}
    # A bar for a terminal only: redirected to a file or a pipe, its redraws would fill the log.
    bar = tqdm(total=args.epochs * steps_per_epoch, unit="step", dynamic_ncols=True, file=sys.stdout,
               disable=not sys.stdout.isatty())
    for epoch in range(1, args.epochs + 1):
        seconds = [0.0, 0.0]
        norm_sum = torch.zeros(len(BRANCH_NAMES), dtype=torch.float64)
        order = torch.randperm(len(x_tr), generator=shuffle)
        for i in range(steps_per_epoch):
            idx = order[i * batch : (i + 1) * batch]
            xb, yb = x_tr[idx], y_tr[idx]
            seconds[0] += runs[0].forward_backward(xb, yb)
            # Plain autograd at the fused run's current weights: the two gradients differ only by summation order.
            loss_diff, grad_diff = probe_gradients(probe, runs[0], xb, yb)
            history["loss_diff"].append(loss_diff)
            history["grad_diff"].append(grad_diff)

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
            seconds[1] += runs[1].train_step(xb, yb)
            nudged.train_step(xb, yb)
            runs64[0].forward_backward(xb, yb)
            if i == 0:  # once per epoch: the float64 gradients' agreement at identical weights
                history["grad_diff64"].append(probe_gradients(probe64, runs64[0], xb, yb)[1])
            runs64[0].update()
            runs64[1].train_step(xb, yb)
            bar.update()
            bar.set_postfix(epoch=epoch, loss=f"{runs[0].step_losses[-1]:.3f}")

        for r, run in enumerate(runs):
            run.epoch_seconds.append(seconds[r])
            run.test_accuracy.append(run.accuracy(x_te, y_te))
        shares_per_epoch.append((norm_sum / norm_sum.sum()).tolist())
        history["drift"].append(relative_weight_difference(fused, reference))
        history["drift_nudged"].append(relative_weight_difference(nudged.model, reference))
        history["drift64"].append(relative_weight_difference(runs64[0].model, runs64[1].model))
        recent = slice(-steps_per_epoch, None)
        lines["train"].append(
            f"{epoch:5d}  {np.mean(runs[0].step_losses[recent]):10.4f}  {max(history['loss_diff'][recent]):8.1e}  "
            f"{max(history['grad_diff'][recent]):9.1e}  {max(history['sum_check'][recent]):9.1e}  "
            f"{seconds[0]:7.2f}  {seconds[1]:7.2f}  "
            f"{runs[0].test_accuracy[-1]:14.2%} / {runs[1].test_accuracy[-1]:.2%}"
        )
        lines["drift"].append(
            f"{epoch:5d}  {history['drift'][-1]:12.1e}  {history['drift_nudged'][-1]:15.1e}  "
            f"{history['drift64'][-1]:16.1e}  {history['grad_diff64'][-1]:13.1e}"
        )
        lines["shares"].append(f"{epoch:5d}  " + "  ".join(f"{s:16.1%}" for s in shares_per_epoch[-1]))
        bar.write(lines["train"][-1])
    bar.close()

    print("\n" + DRIFT_TITLE)
    print("  fused vs ref:     the two float32 trainings above")
    print("  ref vs ref+1ulp:  plain PyTorch against itself, started with every weight one ulp higher (float32)")
    print("  fused vs ref f64: the two trainings again in float64; f64 rel dgrad: their gradients' largest")
    print("                    relative difference at identical weights (first batch of the epoch)")
    print(DRIFT_HEADER)
    print("\n".join(lines["drift"]))

    print("\n" + SHARES_TITLE)
    print(SHARES_HEADER)
    print("\n".join(lines["shares"]))
    print("(dL/dy is the sum of these K+1 terms; the convolution's weights receive the gradient of that sum)")

    worst = max(max(history["loss_diff"]), max(history["grad_diff"]), max(history["sum_check"]))
    agree = worst < AGREEMENT
    drift64 = max(history["drift64"])
    roundoff = agree and drift64 < FLOAT64_DRIFT_BOUND
    if roundoff:
        verdict = (f"float32 round-off amplified by training: the steps agree to round-off, and in float64 the same "
                   f"two trainings stay {drift64:.0e} apart")
    elif agree:
        verdict = (f"NOT explained by round-off: in float64 the two trainings drift {drift64:.1e} apart, more than "
                   f"float32's epsilon")
    else:
        verdict = "NOT explained by round-off: the fused and plain gradients disagree at the same weights"
    # The median: one epoch slowed by another process on the machine should not move the comparison.
    fused_s, ref_s = np.median(runs[0].epoch_seconds), np.median(runs[1].epoch_seconds)
    epochs = f"{args.epochs} epoch{'s' * (args.epochs != 1)}"
    lines["summary"] = [
        f"agreement: largest loss difference {max(history['loss_diff']):.1e}, largest relative gradient difference "
        f"{max(history['grad_diff']):.1e} over {len(history['grad_diff'])} steps (float32 round-off is ~1e-6 "
        f"relative): {'AGREE' if agree else 'DISAGREE'}",
        f"branch shares sum to dL/dy: largest relative error {max(history['sum_check']):.1e}",
        f"weights apart after {epochs}: fused vs reference {history['drift'][-1]:.1e}, reference vs itself started "
        f"1 ulp away {history['drift_nudged'][-1]:.1e}; in float64 fused vs reference {history['drift64'][-1]:.1e} "
        f"(gradients {max(history['grad_diff64']):.1e} apart at identical weights)",
        f"the drift is {verdict}",
        f"median time per epoch (forward + backward + step): fused {fused_s:.2f} s, reference {ref_s:.2f} s "
        f"({ref_s / fused_s:.2f}x)",
        f"test accuracy after {epochs}: fused {runs[0].test_accuracy[-1]:.2%}, "
        f"reference {runs[1].test_accuracy[-1]:.2%}",
    ]
    print("\nsummary")
    print("\n".join("  " + line for line in lines["summary"]))

    args.out.mkdir(parents=True, exist_ok=True)
    figures = [
        demo_figures.loss_curves(runs, history, steps_per_epoch, args.out / "loss_curves.png", verdict),
        demo_figures.branch_shares(shares_per_step, shares_per_epoch, BRANCH_NAMES, steps_per_epoch,
                                   args.out / "branch_shares.png"),
        demo_figures.filter_bank_on_photo(bank, BRANCH_NAMES, args.out / "filter_bank_photo.png",
                                          small=args.quick),
    ]
    results = results_markdown(lines, args.epochs, " ".join(["python examples/demo.py", *(argv or sys.argv[1:])]))
    (args.out / "results.md").write_text(results)
    print(f"  figures and results: {', '.join(str(f) for f in figures)}, {args.out / 'results.md'}")
    if args.write_docs:
        for figure in figures:
            shutil.copyfile(figure, ROOT / "docs" / figure.name)
        (ROOT / "docs" / "demo_results.md").write_text(results)
        write_readme_block(ROOT / "README.md", results)
        print("  written to docs/ and README.md's Demo section too")
    print(f"  wall time {time.perf_counter() - wall_start:.1f} s")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
