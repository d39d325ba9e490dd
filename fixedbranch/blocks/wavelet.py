"""WTConv's ``WTConv2d``: depthwise convolutions in a multi-level 2-D wavelet domain, added to a depthwise conv."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ._common import published, shared_bank
from ._depthwise import depthwise_conv2d, depthwise_padding

__all__ = ["WTConv2d"]


def wavelet_filters(name: str, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The published (4*channels, 1, L, L) float32 analysis and synthesis banks of wavelet ``name``.

    Filter k of a bank is ``outer(h[k % 2], h[k // 2])`` (rows, columns), with h = (dec_lo, dec_hi) reversed for
    the analysis and (rec_lo, rec_hi) for the synthesis: ``fixedbranch.filters.wavelet(name, synthesis=...)``. The
    published banks round the 1-D coefficients to float32 before multiplying, in float32, so the products are
    formed here the same way: a drop-in starts from the published values bit for bit.
    """
    import pywt  # the coefficients' source, as for fixedbranch.filters.wavelet

    w = pywt.Wavelet(name)

    def bank(lo, hi):
        h = (torch.tensor(lo, dtype=torch.float32), torch.tensor(hi, dtype=torch.float32))
        filters = torch.stack([torch.outer(h[k % 2], h[k // 2]) for k in range(4)])
        return filters.unsqueeze(1).repeat(channels, 1, 1, 1)

    return bank(w.dec_lo[::-1], w.dec_hi[::-1]), bank(w.rec_lo, w.rec_hi)


def scaled_conv(conv: nn.Conv2d, scale: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``scale(conv(x))`` as one convolution, the per-channel scale folded into the filters and the bias.

    Equal up to rounding, and it saves a pass over the convolution's output forward and two backward (the scale's
    gradients with respect to its input and to itself). A depthwise ``conv`` (as published) takes its weight
    gradient from the fused CPU pass (``depthwise_conv2d``).
    """
    s = scale.weight.reshape(-1)
    weight = conv.weight * s[:, None, None, None]
    bias = None if conv.bias is None else conv.bias * s
    padding = depthwise_padding(conv)
    if padding is not None:
        return depthwise_conv2d(x, weight, bias, padding)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


class _ScaleModule(nn.Module):
    """A learned per-channel scale, ``weight * x``, as published (``weight`` of shape ``dims``, no bias)."""

    def __init__(self, dims, init_scale=1.0, init_bias=0):
        super().__init__()
        self.dims = dims
        self.weight = nn.Parameter(torch.ones(*dims) * init_scale)
        self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.mul(self.weight, x)


class WTConv2d(nn.Module):
    """Drop-in for WTConv's ``WTConv2d`` (``wtconv/wtconv2d.py``): same arguments, submodules, parameters and init.

    ``wt_levels`` levels of a 2-D discrete wavelet transform (``wt_type``, a PyWavelets name): each level splits
    the previous level's low band into four bands (LL, LH, HL, HH per channel, channel c*4 + b) at half the size,
    filters them with a depthwise ``kernel_size`` convolution (``wavelet_convs``) and a learned scale
    (``wavelet_scale``); the inverse transforms, from the coarsest level up, add each level's result to the next
    finer low band. The sum is added to ``base_scale(base_conv(x))``, a depthwise convolution, and subsampled by
    ``stride``. Odd sizes are padded at the bottom and right with zeros before a level's transform and the
    inverse is cropped back, as published. ``wt_filter`` and ``iwt_filter`` are the repeated analysis and
    synthesis banks, frozen ``nn.Parameter``s as published; ``in_channels`` must equal ``out_channels``.

    Fused: each level's transform is one ``fixed_branch(x, analysis, identity=False, order="channel", stride=2)``
    and each inverse one ``fixed_branch_transpose(z, synthesis, ..., output_size=...)``, the banks read from
    ``wt_filter`` and ``iwt_filter``. Their "same" padding at stride 2 is WTConv's ``L // 2 - 1`` on both sides for
    an even size, and on an odd size the extra bottom/right zero is WTConv's padding to an even size, so neither
    a pad nor a crop is needed; each learned scale is folded into its depthwise convolution's filters (equal up to
    rounding), and on the CPU those convolutions take their weight gradient from one fused pass (float32 and
    float64, inputs of 2^15 elements or more; ATen's computes it far below the machine's rate). Filters that differ
    between channels or require grad run the published formulation.

    Example:
        >>> from fixedbranch.blocks import WTConv2d
        >>> layer = WTConv2d(8, 8, wt_levels=2)
        >>> layer(torch.randn(2, 8, 15, 16)).shape
        torch.Size([2, 8, 15, 16])
    """

    def __init__(self, in_channels, out_channels, kernel_size=5, stride=1, bias=True, wt_levels=1, wt_type="db1"):
        super().__init__()
        if in_channels != out_channels:
            raise ValueError(
                "fixedbranch.blocks.WTConv2d: expected in_channels == out_channels (the layer is depthwise), got "
                f"{in_channels} and {out_channels}"
            )
        self.in_channels = in_channels
        self.wt_levels = wt_levels
        self.stride = stride
        self.dilation = 1
        analysis, synthesis = wavelet_filters(wt_type, in_channels)
        self.wt_filter = nn.Parameter(analysis, requires_grad=False)
        self.iwt_filter = nn.Parameter(synthesis, requires_grad=False)
        self.base_conv = nn.Conv2d(in_channels, in_channels, kernel_size, padding="same", stride=1, dilation=1,
                                   groups=in_channels, bias=bias)
        self.base_scale = _ScaleModule([1, in_channels, 1, 1])
        c4 = in_channels * 4
        self.wavelet_convs = nn.ModuleList(
            [nn.Conv2d(c4, c4, kernel_size, padding="same", stride=1, dilation=1, groups=c4, bias=False)
             for _ in range(wt_levels)]
        )
        self.wavelet_scale = nn.ModuleList([_ScaleModule([1, c4, 1, 1], init_scale=0.1) for _ in range(wt_levels)])
        self.do_stride = nn.AvgPool2d(kernel_size=1, stride=stride) if stride > 1 else None

    def _banks(self, channels: int):
        """The (4, L, L) analysis and synthesis banks when the fused operators can run them, else None."""
        if self.wt_filter.shape[-1] % 2 or self.wt_filter.shape[-2] % 2 or self.iwt_filter.shape[-2:] != \
                self.wt_filter.shape[-2:]:
            return None
        analysis, synthesis = shared_bank(self, self.wt_filter, channels), shared_bank(self, self.iwt_filter, channels)
        if analysis is None or synthesis is None or analysis.shape[0] != 4 or synthesis.shape[0] != 4:
            return None
        return analysis, synthesis

    @property
    def fused(self) -> bool:
        """Whether the transforms and inverses run as the fused operators."""
        return self._banks(self.in_channels) is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        banks = None if published() else self._banks(x.shape[1])
        if banks is None:
            detail = self._wavelet_path_published(x)
            x = self.base_scale(self.base_conv(x))
        else:
            detail = self._wavelet_path_fused(x, *banks)
            x = scaled_conv(self.base_conv, self.base_scale, x)
        if detail is not None:
            x = x + detail
        if self.do_stride is not None:
            x = self.do_stride(x)
        return x

    def _wavelet_path_fused(self, x, analysis, synthesis):
        sizes, filtered, low = [], [], x
        for conv, scale in zip(self.wavelet_convs, self.wavelet_scale):
            sizes.append(low.shape[-2:])
            bands = ops.fixed_branch(low, analysis, identity=False, order="channel", stride=2)
            low = bands[:, ::4]  # the unfiltered LL bands feed the next level
            filtered.append(scaled_conv(conv, scale, bands))
        coarser = None
        for bands, size in zip(reversed(filtered), reversed(sizes)):
            if coarser is not None:
                bands[:, ::4] += coarser  # in place: the convolution's backward does not read its output
            coarser = ops.fixed_branch_transpose(bands, synthesis, identity=False, order="channel", stride=2,
                                                 output_size=tuple(size))
        return coarser

    def _wavelet_path_published(self, x):
        """The published formulation: grouped conv2d and conv_transpose2d with the repeated banks."""
        n, c = x.shape[:2]
        pad = (self.wt_filter.shape[2] // 2 - 1, self.wt_filter.shape[3] // 2 - 1)
        ipad = (self.iwt_filter.shape[2] // 2 - 1, self.iwt_filter.shape[3] // 2 - 1)
        sizes, filtered, low = [], [], x
        for conv, scale in zip(self.wavelet_convs, self.wavelet_scale):
            h, w = low.shape[-2:]
            sizes.append((h, w))
            if h % 2 or w % 2:
                low = F.pad(low, (0, w % 2, 0, h % 2))
            bands = F.conv2d(low, self.wt_filter, stride=2, groups=c, padding=pad)
            bands = bands.reshape(n, c * 4, *bands.shape[-2:])
            low = bands.view(n, c, 4, *bands.shape[-2:])[:, :, 0]
            filtered.append(scale(conv(bands)))
        coarser = None
        for bands, (h, w) in zip(reversed(filtered), reversed(sizes)):
            bands = bands.view(n, c, 4, *bands.shape[-2:])
            if coarser is not None:
                bands = torch.cat([(bands[:, :, 0] + coarser).unsqueeze(2), bands[:, :, 1:]], 2)
            bands = bands.reshape(n, c * 4, *bands.shape[-2:])
            coarser = F.conv_transpose2d(bands, self.iwt_filter, stride=2, groups=c, padding=ipad)[:, :, :h, :w]
        return coarser

    def extra_repr(self) -> str:
        k = self.base_conv.kernel_size[0]
        return (f"{self.in_channels}, {self.in_channels}, kernel_size={k}, stride={self.stride}, "
                f"wt_levels={self.wt_levels}, wt_filter={tuple(self.wt_filter.shape[-2:])}")
