"""Published fixed-filter blocks on fixedbranch: swap one import, keep the checkpoint.

Harmonic networks (Ulicny, Krylov and Dahyot, "Harmonic convolutional networks based on discrete cosine transform",
Pattern Recognition 2022; code in matej-ulicny/harmonic-networks) replace a k x k convolution by ``Harm2d``: every
filter of a bank of L1-normalised DCT filters on every input channel, BatchNorm without affine parameters and a
learned 1x1 convolution (``use_bn=True``, the stem of their ImageNet ResNets), or the bank folded into the weights
(``use_bn=False``, their 3x3 layers: one convolution, run as published).

Pre-defined filter networks (Linse, Barth and Martinetz, "Convolutional neural networks do work with pre-defined
filters", 2024; code in Criscraft/PredefinedFilterNetworks) keep every n x n kernel fixed. A module
(``PredefinedFilterModule``) filters its channels with a pool of 16 edge filters, then BatchNorm, ReLU, a learned 1x1
convolution and BatchNorm. With the width factor f equal to the pool size (PFNet's first module, f = 16 on the RGB
input, stride 2) every filter runs on every channel, which fixedbranch fuses; with f = 1 (the later modules) each
channel gets one filter, an ordinary depthwise convolution, run as published.

A model moves by changing one line::

    from harmonic.modules import Harm2d        ->        from fixedbranch.blocks import Harm2d
    from models.PFNet import PredefinedFilterModule, ParameterizedFilterMode
        ->  from fixedbranch.blocks import PredefinedFilterModule, ParameterizedFilterMode

For each network (both by default, or the one named: ``harmonic`` or ``pfnet``) this script saves a checkpoint, loads
the file into a fresh model (strict=True), checks in float64 that the fused model and the published formulation
(``fixedbranch.blocks.published_formulation()``) agree (output, input and parameter gradients, BatchNorm statistics;
1e-10), and trains it for a few steps. Timings: ``python -m benchmarks blocks``.
"""

from __future__ import annotations

import io
import sys

import torch
from torch import nn

from fixedbranch.blocks import Harm2d, ParameterizedFilterMode, PredefinedFilterModule, published_formulation

TOLERANCE = 1e-10  # float64, relative to the largest magnitude (docs/design.md)


def harmonic_net(classes: int = 10) -> nn.Sequential:
    """A small network in harmonic networks' style: a DCT stem, then DCT 3x3 layers with and without BatchNorm."""
    return nn.Sequential(
        Harm2d(3, 16, 7, stride=2, padding=3, use_bn=True, bias=False),  # fused: the DCT stage in one pass
        nn.BatchNorm2d(16), nn.ReLU(),
        Harm2d(16, 32, 3, padding=1, use_bn=True, bias=False),  # fused
        nn.BatchNorm2d(32), nn.ReLU(),
        Harm2d(32, 32, 3, padding=1, bias=False),  # use_bn=False: one convolution of folded filters
        nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, classes),
    )


def pfnet(classes: int = 10) -> nn.Sequential:
    """A small network in PFNet's style: the first module (every filter on every channel), then f = 1 modules."""
    mode = ParameterizedFilterMode.All  # 4 angles: 8 edge filters, each as -w and +w
    return nn.Sequential(
        PredefinedFilterModule(3, 32, mode, 4, f=16, stride=2, activation_layer=nn.ReLU),  # fused
        nn.ReLU(),
        PredefinedFilterModule(32, 32, mode, 4, f=1, activation_layer=nn.ReLU),  # one filter per channel
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, classes),
    )


def rel_err(actual, expected) -> float:
    """Relative to the largest magnitude, absolute below 1e-3: some quantities vanish in exact arithmetic (the
    running mean after a layer whose input BatchNorm centred, the gradient of a bias that BatchNorm follows)."""
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-3)).item()


def results(model, x):
    """Output, input gradient and every parameter's gradient, and the BatchNorm statistics after the call."""
    x = x.clone().requires_grad_()
    out = model(x)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(out.square().sum(), [x, *params])
    stats = [t for name, t in model.state_dict().items() if "running" in name]
    return [out.detach(), *grads, *[s.clone() for s in stats]]


def check_and_train(network) -> bool:
    """Saves a checkpoint of `network()`, loads it strictly into a fresh one, compares the fused model with the
    published formulation in float64 and trains it a few steps in float32; True when every check passed."""
    torch.manual_seed(0)
    saved = network().double()
    file = io.BytesIO()
    torch.save(saved.state_dict(), file)  # the checkpoint a published model would leave
    file.seek(0)
    model = network().double()
    model.load_state_dict(torch.load(file), strict=True)
    print(f"CHECK checkpoint loaded with strict=True: {len(model.state_dict())} entries OK")

    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    start = {name: t.clone() for name, t in model.state_dict().items()}
    ok = True
    for training in (True, False):
        model.train(training)
        model.load_state_dict(start)
        with published_formulation():
            expected = results(model, x)
        model.load_state_dict(start)  # the same BatchNorm statistics before each call
        actual = results(model, x)
        err = max(rel_err(a, e) for a, e in zip(actual, expected))
        ok &= err <= TOLERANCE
        mode = "training" if training else "evaluation"
        print(f"CHECK fused = published formulation, {mode} mode ({len(actual)} tensors): relative difference "
              f"{err:.1e} {'OK' if err <= TOLERANCE else 'FAILED'}")

    model.float().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    images, labels = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    losses = []
    for _ in range(5):
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    print("training loss: " + " ".join(f"{v:.3f}" for v in losses))
    return ok



NETWORKS = {"harmonic": harmonic_net, "pfnet": pfnet}


def main(names: list[str]) -> int:
    ok = True
    for name in names or NETWORKS:
        print(f"== {name}")
        ok &= check_and_train(NETWORKS[name])
    print("all checks passed" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
