"""``nn.Module`` wrappers: :class:`FixedBranch` (branches only) and :class:`FixedBranchConv2d` (conv + branches)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from . import ops

__all__ = ["FixedBranch", "FixedBranchConv2d"]


def _bank_summary(bank: torch.Tensor) -> str:
    return f"bank=({bank.shape[0]}, {bank.shape[1]}, {bank.shape[2]})"


class FixedBranch(nn.Module):
    """Fixed-filter branches: ``cat([y, F_1*y, ..., F_K*y], 1)``, see :func:`fixedbranch.fixed_branch`.

    Has no parameters. The bank is a (non-persistent) buffer: it follows ``.to()``, ``.half()`` and devices,
    and is set by the constructor rather than by ``load_state_dict``.

    Args:
        bank: (K, S1, S2) fixed filters, e.g. ``fixedbranch.filters.bank("sobel_x", "sobel_y")``.
        padding_mode: "zeros", "reflect", "replicate" or "circular".
        stop_gradient: branch indices (0 = identity) that send no gradient back.

    Shape:
        - Input: (N, C, H, W)
        - Output: (N, (K+1)*C, H, W)

    Example:
        >>> import fixedbranch as fb
        >>> layer = fb.FixedBranch(fb.filters.bank("sobel_x", "sobel_y", "laplacian4"))
        >>> layer(torch.randn(2, 8, 32, 32)).shape
        torch.Size([2, 32, 32, 32])
    """

    def __init__(self, bank: torch.Tensor, padding_mode: str = "zeros", stop_gradient: Iterable[int] = ()):
        super().__init__()
        ops._check_bank("FixedBranch", bank)
        ops._check_padding_mode("FixedBranch", padding_mode)
        self.padding_mode = padding_mode
        self.stop_gradient = tuple(ops._normalize_stop("FixedBranch", stop_gradient, bank.shape[0]))
        self.register_buffer("bank", bank.detach().clone(), persistent=False)

    @property
    def num_branches(self) -> int:
        """K+1: the identity and one branch per filter."""
        return self.bank.shape[0] + 1

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return ops.fixed_branch(y, self.bank, self.padding_mode, self.stop_gradient)

    def extra_repr(self) -> str:
        s = f"{_bank_summary(self.bank)}, padding_mode={self.padding_mode!r}"
        return s + (f", stop_gradient={self.stop_gradient}" if self.stop_gradient else "")


class FixedBranchConv2d(nn.Conv2d):
    """Drop-in for ``nn.Conv2d`` followed by fixed-filter branches, fused into one autograd node.

    Parameters (``weight``, ``bias``), their initialisation and ``state_dict`` keys are exactly ``nn.Conv2d``'s;
    the bank is a non-persistent buffer. The output has ``out_channels * (K+1)`` channels: the conv output first,
    then each filter applied to it. Backward saves only the input and the weight.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode, device,
            dtype: as ``nn.Conv2d`` (``padding_mode`` is the convolution's own).
        bank: (K, S1, S2) fixed filters.
        filter_padding_mode: border handling of the fixed filters: "zeros", "reflect", "replicate", "circular".
        stop_gradient: branch indices (0 = identity) that send no gradient back.

    Shape:
        - Input: (N, C_in, H, W)
        - Output: (N, C_out*(K+1), H_out, W_out), H_out and W_out as ``nn.Conv2d``

    Example:
        >>> import fixedbranch as fb
        >>> layer = fb.FixedBranchConv2d(3, 16, 3, fb.filters.bank("sobel_x", "sobel_y"), padding=1)
        >>> layer(torch.randn(4, 3, 28, 28)).shape
        torch.Size([4, 48, 28, 28])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        bank: torch.Tensor,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        filter_padding_mode: str = "zeros",
        stop_gradient: Iterable[int] = (),
        device=None,
        dtype=None,
    ):
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode,
            device=device, dtype=dtype,
        )
        ops._check_bank("FixedBranchConv2d", bank)
        ops._check_padding_mode("FixedBranchConv2d", filter_padding_mode, "filter_padding_mode")
        self.filter_padding_mode = filter_padding_mode
        self.stop_gradient = tuple(ops._normalize_stop("FixedBranchConv2d", stop_gradient, bank.shape[0]))
        bank = bank.detach().to(device=self.weight.device, dtype=self.weight.dtype).clone()
        self.register_buffer("bank", bank, persistent=False)

    @classmethod
    def from_conv2d(
        cls,
        conv: nn.Conv2d,
        bank: torch.Tensor,
        filter_padding_mode: str = "zeros",
        stop_gradient: Iterable[int] = (),
    ) -> FixedBranchConv2d:
        """Wraps a (trained) ``nn.Conv2d``: same hyper-parameters, a copy of its weight and bias."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"FixedBranchConv2d.from_conv2d: expected conv to be an nn.Conv2d, got {type(conv).__name__}")
        layer = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, bank, conv.stride, conv.padding, conv.dilation,
            conv.groups, conv.bias is not None, conv.padding_mode, filter_padding_mode, stop_gradient,
            device=conv.weight.device, dtype=conv.weight.dtype,
        )
        layer.load_state_dict(conv.state_dict())
        return layer

    @property
    def num_branches(self) -> int:
        """K+1: the identity and one branch per filter."""
        return self.bank.shape[0] + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padding = self.padding
        if self.padding_mode != "zeros" or isinstance(padding, str):
            # Non-zero conv padding (and "same" with an even kernel) is an explicit F.pad, as nn.Conv2d does it.
            if isinstance(padding, str) and padding == "valid":
                padding = (0, 0)
            else:
                mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
                x = F.pad(x, self._reversed_padding_repeated_twice, mode=mode)
                padding = (0, 0)
        return ops.fixed_branch_conv2d(
            x, self.weight, self.bias, self.bank, self.stride, padding, self.dilation, self.groups,
            self.filter_padding_mode, self.stop_gradient,
        )

    def extra_repr(self) -> str:
        s = super().extra_repr() + f", {_bank_summary(self.bank)}, filter_padding_mode={self.filter_padding_mode!r}"
        return s + (f", stop_gradient={self.stop_gradient}" if self.stop_gradient else "")
