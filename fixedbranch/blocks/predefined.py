"""Pre-defined filter networks' ``PredefinedFilterModule``: fixed edge filters, BatchNorm, ReLU, 1x1 conv, BatchNorm."""

from __future__ import annotations

import enum

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ._common import batch_norm_affine, has_hooks, published, same_padding, shared_bank

__all__ = ["ParameterizedFilterMode", "PredefinedConvnxn", "PredefinedFilterModule"]


class ParameterizedFilterMode(enum.Enum):
    """The kinds of pre-defined filters, as published (same names and values)."""

    Even = 0  # even (line) edge filters
    Uneven = 1  # uneven (step) edge filters
    All = 2  # the uneven ones, then the even ones
    Random = 3  # uniform in [-1, 1), drawn from numpy's global generator
    Smooth = 4  # a Gaussian blur (a filter of the skip connections, not of a module)


def as_filter_mode(value) -> ParameterizedFilterMode:
    """``value`` as this package's ParameterizedFilterMode: a member of any enum with the same names, or a name."""
    if isinstance(value, enum.Enum):
        value = value.name
    if not isinstance(value, str):
        raise TypeError(
            "fixedbranch.blocks.PredefinedFilterModule: expected filter_mode to be a ParameterizedFilterMode or "
            f"its name, got {type(value).__name__}"
        )
    try:
        return ParameterizedFilterMode[value]
    except KeyError:
        names = ", ".join(m.name for m in ParameterizedFilterMode)
        raise ValueError(
            f"fixedbranch.blocks.PredefinedFilterModule: expected filter_mode to be one of {names}, got {value!r}"
        ) from None


def edge_filter(k: int, uneven: bool, phi: float):
    """One published edge filter (numpy float64, k x k), in the published arithmetic, operation for operation.

    On the grid x, y in [-(k-1)/2, (k-1)/2] (rows y, columns x): with a = |phi - atan2(y, x)| (phi in radians) and
    c = r cos(a), an uneven filter is 1 - exp(-c²/2σ²) (σ = 0.3k), negated where a > π/2, an even one
    2 exp(-c²/2σ²) (σ = 0.15k); either is made zero-mean and divided by its L1 norm.
    """
    import numpy as np  # the published arithmetic, so that the float32 filters are bit for bit the published ones

    half = 0.5 * (k - 1.0)
    xx, yy = np.meshgrid(np.linspace(-half, half, k), np.linspace(-half, half, k))
    sigma = (0.3 if uneven else 0.15) * k
    a = np.abs(np.deg2rad(phi) - np.arctan2(yy, xx))
    c = np.cos(a) * np.sqrt(xx**2 + yy**2)
    if uneven:
        w = 1 - np.exp(-0.5 * (c / sigma) ** 2)
        w[a > 0.5 * np.pi] = -w[a > 0.5 * np.pi]
    else:
        w = 2.0 * np.exp(-0.5 * (c / sigma) ** 2)
    w = w - w.mean()
    return w / np.abs(w).sum()


def predefined_filters(k: int, mode: ParameterizedFilterMode, n_angles: int) -> torch.Tensor:
    """The published pool, (K, 1, k, k) float32: uneven filters at n_angles orientations in [0°, 180°), then even
    ones (as the mode selects), each as -w then +w; Random: n_angles filters from numpy's global generator."""
    import numpy as np

    angles = np.linspace(0, 180, n_angles, endpoint=False)
    pool = []
    if mode in (ParameterizedFilterMode.Uneven, ParameterizedFilterMode.All):
        pool += [edge_filter(k, True, phi) for phi in angles]
    if mode in (ParameterizedFilterMode.Even, ParameterizedFilterMode.All):
        pool += [edge_filter(k, False, phi) for phi in angles]
    pool = [sign * w for w in pool for sign in (-1, 1)]
    if mode is ParameterizedFilterMode.Random:
        pool += [np.random.rand(k, k) * 2.0 - 1.0 for _ in range(n_angles)]
    if not pool:
        raise ValueError(
            f"fixedbranch.blocks.PredefinedFilterModule: filter_mode {mode.name} with n_angles={n_angles} gives no "
            "filters (a module needs Even, Uneven, All or Random, and n_angles >= 1)"
        )
    return torch.tensor(np.array(pool), dtype=torch.float32).unsqueeze(1)


class PredefinedConvnxn(nn.Module):
    """The published filter stage: the pool ``weight`` (K, 1, k, k) and its repetition ``internal_weight``.

    ``internal_weight`` ((n_channels_out // K) * K, 1, k, k) is what the grouped convolution (groups =
    n_channels_in) applies: output channel j is input channel j // (out / in) correlated with filter j mod K. Both
    are frozen ``nn.Parameter``s as published; with ``requires_grad=True`` the published stage copies ``weight`` into
    ``internal_weight`` before each training-mode call, and the convolution reads ``internal_weight``, which
    requires no grad: ``weight`` never receives a gradient there either. That formulation is kept exactly.

    Fused: when the filters are fixed, the kernel is odd and every input channel gets the same sequence of filters
    (n_channels_out = K * n_channels_in, every filter on every channel, or a multiple), as one
    ``fixed_branch(x, bank, identity=False, order="channel", stride=stride)`` with the bank read from
    ``internal_weight``.
    """

    def __init__(self, n_channels_in, n_channels_out, stride=1, k=3,
                 filter_mode=ParameterizedFilterMode.All, n_angles=4, requires_grad=False):
        super().__init__()
        if n_channels_out < n_channels_in:
            raise ValueError(
                "fixedbranch.blocks.PredefinedFilterModule: expected n_channels_in * f >= n_channels_in (f >= 1), "
                f"got {n_channels_out} < {n_channels_in}"
            )
        self.n_channels_in, self.n_channels_out, self.stride = n_channels_in, n_channels_out, stride
        self.padding = k // 2
        w = predefined_filters(k, filter_mode, n_angles)
        self.n_kernels = w.shape[0]
        self.weight = nn.Parameter(w, requires_grad)
        self.filter_requires_grad = requires_grad
        self.internal_weight = nn.Parameter(w.repeat(n_channels_out // self.n_kernels, 1, 1, 1), False)

    def _bank(self) -> torch.Tensor | None:
        """The bank every channel gets, when the fused operator can run the stage; None otherwise."""
        if self.filter_requires_grad or not same_padding(self.weight.shape[-1], self.padding, 1, self.stride):
            return None
        return shared_bank(self, self.internal_weight, self.n_channels_in)

    @property
    def fused(self) -> bool:
        """Whether the filter stage runs as one fused operator."""
        return self._bank() is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.filter_requires_grad and self.training:
            # As published: the pool may have been changed in place (by hand; it receives no gradient).
            self.internal_weight.data = self.weight.data.repeat(self.n_channels_out // self.n_kernels, 1, 1, 1)
        bank = None if published() else self._bank()
        if bank is not None and x.shape[1] == self.n_channels_in:
            return ops.fixed_branch(x, bank, identity=False, order="channel", stride=self.stride)
        return F.conv2d(x, self.internal_weight, None, self.stride, groups=self.n_channels_in, padding=self.padding)

    def extra_repr(self) -> str:
        return (f"{self.n_channels_in}, {self.n_channels_out}, filters={self.n_kernels}, k={self.weight.shape[-1]}, "
                f"stride={self.stride}, requires_grad={self.filter_requires_grad}")


class PredefinedFilterModule(nn.Module):
    """Drop-in for pre-defined filter networks' ``PredefinedFilterModule`` (``models/PFNet.py``).

    ``predev_conv`` (the fixed filters on f * n_channels_in channels, :class:`PredefinedConvnxn`), ``norm1``,
    ``relu``, ``conv1x1`` (``conv(mid, n_channels_out, kernel_size=1, stride=1, bias=False)``), ``norm2``: the
    published submodules, parameters, state_dict keys and init (the same seeds draw the same values, numpy's for
    ``Random`` filters, torch's for the 1x1 convolution).

    ``filter_mode`` is a :class:`ParameterizedFilterMode`, a member of any enum with the same member names (the
    published one), or a name ("Even", "Uneven", "All", "Random"). ``activation_layer=None`` means ``nn.ReLU``
    (the published module needs one); ``norm_layer=None`` means ``nn.BatchNorm2d``, as published.

    Fused where every filter runs on every channel (``f`` = the number of filters, as in PFNet's first module) and
    the filters are fixed; ``f = 1`` (one filter per channel, a depthwise convolution), other widths, even ``k``
    and ``predefined_filters_require_grad=True`` run the published formulation. In evaluation mode ``norm2`` (a
    BatchNorm2d on its running statistics) is folded into ``conv1x1``'s weights, as inference engines do, unless
    either carries hooks.

    Example:
        >>> from fixedbranch.blocks import PredefinedFilterModule
        >>> pfm = PredefinedFilterModule(3, 64, "All", 4, f=16, stride=2)
        >>> pfm(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 64, 16, 16])
        >>> pfm.predev_conv.weight.shape  # 4 angles, uneven and even, each as -w and +w
        torch.Size([16, 1, 3, 3])
    """

    def __init__(self, n_channels_in, n_channels_out, filter_mode, n_angles, conv=nn.Conv2d, f=1, k=3, stride=1,
                 norm_layer=None, activation_layer=None, predefined_filters_require_grad=False):
        super().__init__()
        self.predev_conv = PredefinedConvnxn(n_channels_in, n_channels_in * f, stride=stride, k=k,
                                             filter_mode=as_filter_mode(filter_mode), n_angles=n_angles,
                                             requires_grad=predefined_filters_require_grad)
        n_channels_mid = self.predev_conv.n_channels_out
        norm_layer = nn.BatchNorm2d if norm_layer is None else norm_layer
        self.norm1 = norm_layer(n_channels_mid)
        self.relu = (nn.ReLU if activation_layer is None else activation_layer)()
        self.conv1x1 = conv(n_channels_mid, n_channels_out, kernel_size=1, stride=1, bias=False)
        self.norm2 = norm_layer(n_channels_out)

    @property
    def fused(self) -> bool:
        """Whether the filter stage runs as one fused operator."""
        return self.predev_conv.fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.relu(self.norm1(self.predev_conv(x)))
        folded = None if published() else self._folded_output_stage()
        if folded is not None:
            conv = self.conv1x1
            return F.conv2d(z, *folded, conv.stride, conv.padding, conv.dilation, conv.groups)
        return self.norm2(self.conv1x1(z))

    def _folded_output_stage(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """In evaluation mode, the (weight, bias) of ``conv1x1`` with ``norm2`` folded in: BatchNorm on its running
        statistics is a per-channel affine map of the convolution's output. None where the submodules are not a
        plain nn.Conv2d (zero padding) and nn.BatchNorm2d, or carry hooks."""
        affine = batch_norm_affine(self.norm2)
        conv = self.conv1x1
        if affine is None or type(conv) is not nn.Conv2d or conv.padding_mode != "zeros" or has_hooks(conv):
            return None
        scale, shift = affine
        bias = shift if conv.bias is None else conv.bias * scale + shift
        return conv.weight * scale.view(-1, 1, 1, 1), bias
