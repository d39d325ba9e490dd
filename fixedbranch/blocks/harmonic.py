"""Harmonic networks' ``Harm2d``: a DCT bank on every input channel, then BatchNorm and a 1x1 convolution."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ._common import batch_norm_affine, published, same_padding, shared_bank

__all__ = ["Harm2d"]


def dct_bank(kernel_size: int, level: int | None = None, dc: bool = True) -> torch.Tensor:
    """The published (K, k, k) float32 bank: L1-normalised 2-D DCT-II filters, u + v < level, without (0, 0) if not dc.

    Mathematically ``fixedbranch.filters.dct(k, norm="l1", level=level, dc=dc)``, whose values are the exact ones
    rounded once. The published bank rounds each cosine product to float32 and then normalises in float32, so its
    values differ from those in the last bit (up to 2e-9 for k <= 11); a drop-in must start from the published
    values, so they are built here in that arithmetic: the products in double precision, stored as float32, each
    filter divided by its float32 L1 norm (numpy's sum, as published).
    """
    import numpy as np  # the published bank's arithmetic (numpy's float32 sum); the rest of the package needs no numpy

    filters = []
    for u in range(kernel_size):
        for v in range(kernel_size):
            if (not dc and u == v == 0) or (level is not None and u + v >= level):
                continue
            rows = [math.cos(math.pi * (i + 0.5) * u / kernel_size) for i in range(kernel_size)]
            cols = [math.cos(math.pi * (j + 0.5) * v / kernel_size) for j in range(kernel_size)]
            f = np.array([[r * c for c in cols] for r in rows], dtype=np.float32)
            filters.append(f / np.sum(np.abs(f)))
    return torch.from_numpy(np.stack(filters).astype(np.float32).reshape(-1, kernel_size, kernel_size))


class Harm2d(nn.Module):
    """Drop-in for harmonic networks' ``Harm2d`` (``harmonic/modules.py``): same arguments, parameters and init.

    ``use_bn=True``: every filter of a bank of L1-normalised DCT filters (``level`` and ``DC`` select them) on every
    input channel, channel c's responses at c*K ... c*K + K-1, then ``bn`` (BatchNorm2d without affine parameters)
    and ``weight``, a learned 1x1 convolution with ``groups``. ``use_bn=False``: the bank folded into the weights,
    one ``kernel_size`` convolution.

    Parameters as published: ``dct``, the frozen repeated bank (an ``nn.Parameter`` with ``requires_grad=False``,
    float32, (ni*K, 1, k, k) with ``use_bn`` and (1, K, k, k) without), ``weight`` ((no, ni/groups*K, 1, 1) or
    (no, ni/groups, K, 1, 1), Kaiming-normal, fan-out), ``bias`` (zeros); ``bn`` with ``use_bn``. A published
    checkpoint loads with ``strict=True``.

    Fused: with ``use_bn=True``, an odd ``kernel_size``, ``padding = kernel_size // 2`` (or ``"same"``) and
    ``dilation = 1``, the DCT stage runs as one ``fixed_branch(x, bank, identity=False, order="channel",
    stride=stride)`` with the bank read from ``dct`` (so a loaded checkpoint's filters are the ones applied). Other
    paddings, dilations and ``use_bn=False`` (already a single convolution) run the published formulation. In
    evaluation mode (``bn`` on its running statistics) the bank, ``bn`` and ``weight`` are one linear map, run as one
    ``kernel_size`` convolution whose filters and bias fold them together (for every padding and dilation), as
    ``use_bn=False`` does.

    Example:
        >>> from fixedbranch.blocks import Harm2d
        >>> layer = Harm2d(16, 32, 3, padding=1, use_bn=True)
        >>> layer(torch.randn(2, 16, 8, 8)).shape
        torch.Size([2, 32, 8, 8])
        >>> sorted(layer.state_dict())
        ['bias', 'bn.num_batches_tracked', 'bn.running_mean', 'bn.running_var', 'dct', 'weight']
    """

    def __init__(self, ni, no, kernel_size, stride=1, padding=0, bias=True, dilation=1, use_bn=False, level=None,
                 DC=True, groups=1):  # noqa: N803  (the published argument name)
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.groups = groups
        bank = dct_bank(kernel_size, level, DC)
        dct = bank.repeat(ni, 1, 1).unsqueeze(1) if use_bn else bank.unsqueeze(0)
        self.dct = nn.Parameter(dct, requires_grad=False)
        nf = self.dct_filters = bank.shape[0]
        # The published order of construction, so that the same seed draws the same weights.
        if use_bn:
            self.bn = nn.BatchNorm2d(ni * nf, affine=False)
            weight = torch.empty(no, ni // groups * nf, 1, 1)
        else:
            weight = torch.empty(no, ni // groups, nf, 1, 1)
        self.weight = nn.Parameter(nn.init.kaiming_normal_(weight, mode="fan_out", nonlinearity="relu"))
        self.bias = nn.Parameter(torch.zeros(no)) if bias else None

    @property
    def fused(self) -> bool:
        """Whether the DCT stage runs as one fused operator (for inputs with ``ni`` channels)."""
        return hasattr(self, "bn") and same_padding(self.kernel_size, self.padding, self.dilation, self.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, "bn"):
            # One convolution whose filters are the learned combinations of the DCT filters.
            filters = torch.sum(self.weight * self.dct, dim=2)
            return F.conv2d(x, filters, self.bias, self.stride, self.padding, self.dilation, self.groups)
        affine = None if published() else batch_norm_affine(self.bn)
        if affine is not None:
            filters, bias = self._folded(*affine)
            return F.conv2d(x, filters, bias, self.stride, self.padding, self.dilation, self.groups)
        bank = shared_bank(self, self.dct, x.shape[1]) if self.fused and not published() else None
        if bank is not None:
            x = ops.fixed_branch(x, bank, identity=False, order="channel", stride=self.stride)
        else:
            x = F.conv2d(x, self.dct, None, self.stride, self.padding, self.dilation, groups=x.shape[1])
        return F.conv2d(self.bn(x), self.weight, self.bias, padding=0, groups=self.groups)

    def _folded(self, scale: torch.Tensor, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The filters and bias of the one convolution equal to the DCT bank, ``bn`` and the 1x1 convolution, given
        bn(z)_c = z_c * scale_c + shift_c: weight[o, c] * scale_c folds into the DCT filter of channel c, and
        weight[o, c] * shift_c into the bias."""
        out, groups = self.weight.shape[0], self.groups
        ni_g = self.weight.shape[1] // self.dct_filters

        def by_output(v: torch.Tensor) -> torch.Tensor:  # (ni*K,) to (out, ni/groups*K): output o's input channels
            return v.view(groups, 1, -1).expand(-1, out // groups, -1).flatten(0, 1)

        weight = self.weight.flatten(1)
        bank = self.dct.view(groups, ni_g, self.dct_filters, -1)  # (groups, ni/groups, K, k*k)
        filters = torch.einsum("goik,gikp->goip", (weight * by_output(scale)).view(groups, out // groups, ni_g, -1),
                               bank).reshape(out, ni_g, self.kernel_size, self.kernel_size)
        shifted = (weight * by_output(shift)).sum(1)
        return filters, shifted if self.bias is None else self.bias + shifted

    def extra_repr(self) -> str:
        parts = [f"kernel_size={self.kernel_size}", f"stride={self.stride}", f"padding={self.padding}"]
        if self.dilation != 1:
            parts.append(f"dilation={self.dilation}")
        if self.groups != 1:
            parts.append(f"groups={self.groups}")
        return ", ".join(parts + [f"use_bn={hasattr(self, 'bn')}", f"fused={self.fused}"])
