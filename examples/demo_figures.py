"""The demo's figures: loss and drift of the trainings, the branches' gradient shares, the bank on a photograph."""

from __future__ import annotations

import pathlib
import textwrap

import matplotlib

matplotlib.use("Agg")  # files only: the demo must run on machines without a display
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_sample_image

import fixedbranch as fb

FLOAT32_EPS = float(torch.finfo(torch.float32).eps)
FLOAT64_EPS = float(torch.finfo(torch.float64).eps)
COLORS = ("#444444", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd")


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width))


def _epoch_ticks(ax, steps: int, steps_per_epoch: int) -> None:
    epochs = steps // steps_per_epoch
    ax.set_xticks(np.arange(0, epochs + 1) * steps_per_epoch, [str(e) for e in range(epochs + 1)])
    ax.set_xlabel("epoch")
    ax.set_xlim(0, steps * 1.015)  # room for the markers drawn at the last step


def loss_curves(runs, history: dict, steps_per_epoch: int, path: pathlib.Path, verdict: str) -> pathlib.Path:
    """Left: training loss per step of both runs. Right: per-step differences and how far trainings drift apart."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 6.0), layout="constrained")
    steps = np.arange(1, len(runs[0].step_losses) + 1)
    for run, style in zip(runs, ({"lw": 2.4, "alpha": 0.55}, {"lw": 1.0, "ls": "--", "color": "black"})):
        acc = run.test_accuracy[-1]
        left.plot(steps, run.step_losses, label=f"{run.name} (test accuracy {acc:.1%})", **style)
    left.set_ylabel("training cross-entropy (batch)")
    left.set_title("Training loss of the two trainings")
    left.legend()
    _epoch_ticks(left, len(steps), steps_per_epoch)
    left.grid(alpha=0.3, which="both")

    floor = FLOAT64_EPS / 8  # exact agreement (0) is drawn at the floor instead of vanishing from a log axis
    loss_note = " (exactly 0: drawn at the bottom)" if not any(history["loss_diff"]) else ""
    epoch_ends = np.arange(1, len(history["drift"]) + 1) * steps_per_epoch
    epoch_starts = epoch_ends - steps_per_epoch + 1
    per_step = (("grad_diff", "float32 gradients, fused vs autograd at the same weights"),
                ("loss_diff", "float32 |loss difference| at the same weights" + loss_note),
                ("sum_check", "float32 |sum of branch shares - dL/dy|, relative"))
    for key, label in per_step:
        right.semilogy(steps, np.maximum(history[key], floor), ".", ms=3, label=label)
    right.semilogy(epoch_starts, np.maximum(history["grad_diff64"], floor), "x", color="#8c564b", ms=6,
                   label="float64 gradients, fused vs autograd at the same weights")
    drifts = (("drift", "D-", "#7f7f7f", "weights apart: fused vs reference, float32"),
              ("drift_nudged", "s--", "#17becf", "weights apart: reference vs itself started 1 ulp away, float32"),
              ("drift64", "^-", "#bcbd22", "weights apart: fused vs reference, float64"))
    for key, marker, color, label in drifts:
        right.semilogy(epoch_ends, np.maximum(history[key], floor), marker, color=color, ms=5, label=label)
    for eps, name in ((FLOAT32_EPS, "float32"), (FLOAT64_EPS, "float64")):
        right.axhline(eps, color="k", lw=1, ls=":")
        right.text(0.99, eps * 0.7, f"{name} epsilon {eps:.1e}", transform=right.get_yaxis_transform(),
                   fontsize=8, ha="right", va="top")
    right.set_ylim(floor / 2, 10)
    right.set_title("Fused vs plain PyTorch, relative differences (log scale)\n" + _wrap(verdict, 80), fontsize=10)
    fig.legend(*right.get_legend_handles_labels(), loc="outside lower right", fontsize=8, ncol=2)
    _epoch_ticks(right, len(steps), steps_per_epoch)
    right.grid(alpha=0.3, which="both")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def branch_shares(per_step, per_epoch, names, steps_per_epoch: int, path: pathlib.Path) -> pathlib.Path:
    """Each branch's fraction of the gradient norm it sends back to the conv output, over training."""
    fig, ax = plt.subplots(figsize=(9, 4.6), constrained_layout=True)
    per_step = np.asarray(per_step)
    steps = np.arange(1, len(per_step) + 1)
    epoch_ends = np.arange(1, len(per_epoch) + 1) * steps_per_epoch
    for k, name in enumerate(names):
        ax.plot(steps, per_step[:, k], color=COLORS[k], lw=0.8, alpha=0.35)
        ax.plot(epoch_ends, np.asarray(per_epoch)[:, k], "o-", color=COLORS[k], lw=2, label=name)
    ax.set_ylabel(r"$\|F_k^\top g_k\| \;/\; \sum_j \|F_j^\top g_j\|$")
    ax.set_ylim(0, None)
    ax.set_title("Share of dL/dy sent back by each branch (thin: per batch, dots: epoch totals)")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
    _epoch_ticks(ax, len(steps), steps_per_epoch)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def grayscale_photo(small: bool) -> torch.Tensor:
    """scikit-learn's bundled china.jpg as a (1, 1, H, W) float32 image in [0, 1], cropped to the pagoda."""
    rgb = load_sample_image("china.jpg")[20:260, 60:420].astype(np.float32) / 255.0
    gray = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601 luma
    image = torch.from_numpy(np.ascontiguousarray(gray))[None, None]
    return image[..., ::4, ::4].contiguous() if small else image


def filter_bank_on_photo(bank: torch.Tensor, names, path: pathlib.Path, small: bool = False) -> pathlib.Path:
    """Top row: each branch's filter (identity first). Bottom row: its response to a photograph."""
    image = grayscale_photo(small)
    out = fb.fixed_branch(image, bank, padding_mode="reflect")[0].numpy()  # (K+1, H, W), branch 0 = the photo
    delta = np.zeros(bank.shape[1:])
    delta[(bank.shape[1] - 1) // 2, (bank.shape[2] - 1) // 2] = 1.0  # the identity branch as a filter
    kernels = [delta] + [f.numpy() for f in bank]
    columns = len(names)
    fig, axes = plt.subplots(2, columns, figsize=(3.3 * columns, 5.6), height_ratios=(1, 1.55),
                             constrained_layout=True)
    for k in range(columns):
        kernel = kernels[k]
        vmax = np.abs(kernel).max()
        ax = axes[0, k]
        ax.imshow(kernel, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        for (i, j), v in np.ndenumerate(kernel):
            dark = abs(v) > 0.6 * vmax
            ax.text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=10, color="white" if dark else "black")
        ax.set_title(names[k] if k else "identity (branch 0)", fontsize=11)
        ax.set_xticks([])
        ax.set_yticks([])

        response, ax = out[k], axes[1, k]
        if np.all(kernel >= 0):  # smoothing filters: an image like the input
            ax.imshow(response, cmap="gray")
        else:  # derivative filters: signed response, zero in the middle of the colour map
            vmax = np.percentile(np.abs(response), 98)
            ax.imshow(response, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        ax.set_title("photograph" if k == 0 else f"{names[k]} response", fontsize=11)
        ax.axis("off")
    fig.suptitle("The bank's branches applied to a photograph with fb.fixed_branch (reflect padding; red > 0 > blue)",
                 fontsize=13)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
