"""``nn.Module`` wrappers: :class:`FixedBranch` (branches only), :class:`FixedBranchConv2d` (conv + branches) and
:class:`FixedBranchTranspose` (the adjoint of the branches)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from .arguments import check_bank, check_pair, stop_list
from .plan import BankPlan, bank_plan

__all__ = ["FixedBranch", "FixedBranchConv2d", "FixedBranchTranspose"]


def _bank_summary(bank: torch.Tensor) -> str:
    return f"bank=({bank.shape[0]}, {bank.shape[1]}, {bank.shape[2]})"


def _check_options(owner: str, bank, padding_mode, stop_gradient, identity, order, stride,
                   padding_mode_name: str = "padding_mode", stride_name: str = "stride") -> tuple:
    """The operator's own checks of the branch options, told in the module's names; returns (stop, stride)."""
    check_bank(owner, bank)
    stop = stop_list(owner, stop_gradient)
    stride = check_pair(owner, stride_name, stride)
    torch.ops.fixedbranch._check_options(bank, padding_mode, stop, identity, order, stride, owner, padding_mode_name,
                                         stride_name)
    return tuple(stop), tuple(stride)


# The key of the bank in a module's state_dict metadata.
_BANK_METADATA = "fixedbranch.bank"


def _bank_mismatch(theirs, ours: torch.Tensor) -> str:
    """Why a checkpoint's bank is not the layer's, or "" when it is (equal within the rounding of the less precise
    of the two dtypes: a checkpoint of a .half() model still matches the float32 layer built with its bank)."""
    if not isinstance(theirs, torch.Tensor):
        return f"is a {type(theirs).__name__}, not a tensor"
    if tuple(theirs.shape) != tuple(ours.shape):
        return f"has shape {tuple(theirs.shape)}, the layer's {tuple(ours.shape)}"
    if theirs.is_meta or ours.is_meta:
        return ""
    eps = max(torch.finfo(theirs.dtype).eps if theirs.is_floating_point() else 0.0, torch.finfo(ours.dtype).eps)
    a, b = theirs.detach().double().cpu(), ours.detach().double().cpu()
    if not torch.allclose(a, b, rtol=eps, atol=eps * float(b.abs().max()) if b.numel() else 0.0):
        return f"differs from the layer's by up to {float((a - b).abs().max()):.3g}"
    return ""


class _BankModule:
    """Mixin of the modules that hold a fixed bank: how the operator runs it, and its record in a checkpoint.

    ``plan_for(dtype)`` and ``plan`` tell how the operator runs the bank for an input of a dtype.

    The operator rounds the bank to its input's dtype and plans it in that dtype (``csrc/fixed_branch.cpp``), so the
    plan depends on the input's dtype, not on the dtype the bank is stored in. The module plans the bank for its
    compute dtype at construction and whenever ``.to()``, ``.half()`` and friends move it, so the plan cache is warm
    before the first call."""

    def _compute_dtype(self) -> torch.dtype:
        raise NotImplementedError

    def plan_for(self, dtype: torch.dtype) -> BankPlan | None:
        """The plan the operator runs for an input of ``dtype``: the bank rounded to ``dtype``, planned with that
        dtype's tolerances (see :func:`fixedbranch.bank_plan`); None for a bank on the meta device."""
        # A meta bank has no values to decompose (a model built on "meta" before it is materialised).
        return None if self.bank.is_meta else bank_plan(self.bank.detach().to(dtype))

    @property
    def plan(self) -> BankPlan | None:
        """``plan_for`` the module's compute dtype (see the class's docstring for which dtype that is)."""
        return self.plan_for(self._compute_dtype())

    def _apply(self, fn, recurse=True):
        result = super()._apply(fn, recurse)
        self.plan_for(self._compute_dtype())  # warms the plan cache
        return result

    # A checkpoint records the bank it was trained with, in the state_dict's metadata (state_dict._metadata, where
    # every module records its version), not under a key: the keys stay nn.Conv2d's, so a published nn.Conv2d
    # state_dict loads with strict=True and a FixedBranchConv2d checkpoint loads into an nn.Conv2d. torch.save and
    # torch.load (weights_only too) keep the metadata; loading into a layer with another bank raises.
    def state_dict(self, *args, destination=None, prefix="", keep_vars=False):
        destination = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        metadata = getattr(destination, "_metadata", None)
        if metadata is not None and not self.bank.is_meta:
            metadata.setdefault(prefix[:-1], {})[_BANK_METADATA] = self.bank.detach().cpu().clone()
        return destination

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        if _BANK_METADATA in local_metadata:
            problem = _bank_mismatch(local_metadata[_BANK_METADATA], self.bank)
            if problem:
                error_msgs.append(
                    f"fixedbranch.{type(self).__name__}: the checkpoint's bank {problem}; build the layer with the "
                    "bank the checkpoint was trained with"
                    + (f" (the checkpoint's '{prefix[:-1]}')" if prefix else "")
                )
                return  # weights trained with another bank are not loaded either
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


def _options_repr(module) -> str:
    """The branch options that differ from their defaults."""
    parts = [f"stop_gradient={module.stop_gradient}"] if module.stop_gradient else []
    if module.plan is not None and "factored" in module.plan.cpu_paths:
        parts.append(f"factored={module.plan.columns} column passes")
    if not module.identity:
        parts.append("identity=False")
    if module.order != "branch":
        parts.append(f"order={module.order!r}")
    name = "filter_stride" if hasattr(module, "filter_stride") else "stride"
    if getattr(module, name) != (1, 1):
        parts.append(f"{name}={getattr(module, name)}")
    return "".join(", " + p for p in parts)


class FixedBranch(_BankModule, nn.Module):
    """Fixed-filter branches: ``cat([y, F_1*y, ..., F_K*y], 1)``, see :func:`fixedbranch.fixed_branch`.

    Has no parameters. The bank is a (non-persistent) buffer: it follows ``.to()``, ``.half()`` and devices,
    and is set by the constructor rather than by ``load_state_dict``; the state_dict records it in its metadata,
    and loading a checkpoint made with another bank raises.

    Args:
        bank: (K, S1, S2) fixed filters, e.g. ``fixedbranch.filters.bank("sobel_x", "sobel_y")``.
        padding_mode: "zeros", "reflect", "replicate" or "circular".
        stop_gradient: branch indices (0 = identity) that send no gradient back.
        identity: whether y itself is part of the output.
        order: "branch" (``out[:, b*C + c]``) or "channel" (``out[:, c*B + b]``).
        stride: an int or a pair; the branches are sampled every stride-th pixel.

    Shape:
        - Input: (N, C, H, W)
        - Output: (N, B*C, H', W'), B = K+1 (K with identity=False), H' = (H-1)//sH + 1

    Example:
        >>> import fixedbranch as fb
        >>> layer = fb.FixedBranch(fb.filters.bank("sobel_x", "sobel_y", "laplacian4"))
        >>> layer(torch.randn(2, 8, 32, 32)).shape
        torch.Size([2, 32, 32, 32])
    """

    def __init__(
        self,
        bank: torch.Tensor,
        padding_mode: str = "zeros",
        stop_gradient: Iterable[int] = (),
        identity: bool = True,
        order: str = "branch",
        stride=1,
    ):
        super().__init__()
        self.stop_gradient, self.stride = _check_options(
            "fixedbranch.FixedBranch", bank, padding_mode, stop_gradient, identity, order, stride
        )
        self.padding_mode, self.identity, self.order = padding_mode, identity, order
        self.register_buffer("bank", bank.detach().clone(), persistent=False)
        self.plan_for(self._compute_dtype())  # warms the plan cache

    @property
    def num_branches(self) -> int:
        """B: the branches in the output, the identity (unless identity=False) and one per filter."""
        return self.bank.shape[0] + int(self.identity)

    def _compute_dtype(self) -> torch.dtype:
        # No parameters to tell the input's dtype: the default dtype's (plan_for(dtype) gives any other).
        return torch.get_default_dtype()

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return ops.fixed_branch(y, self.bank, self.padding_mode, self.stop_gradient, self.identity, self.order,
                                self.stride)

    def extra_repr(self) -> str:
        return f"{_bank_summary(self.bank)}, padding_mode={self.padding_mode!r}" + _options_repr(self)


class FixedBranchTranspose(_BankModule, nn.Module):
    """The adjoint of :class:`FixedBranch` with the same options, see :func:`fixedbranch.fixed_branch_transpose`:
    a synthesis bank (with a wavelet synthesis bank and stride 2, the inverse wavelet transform).

    Has no parameters. The bank is a (non-persistent) buffer, as in :class:`FixedBranch`.

    Args:
        bank: (K, S1, S2) fixed filters, e.g. ``fixedbranch.filters.wavelet("db2", synthesis=True)``.
        padding_mode: "zeros", "reflect", "replicate" or "circular" (of the forward operator this is the adjoint of).
        identity: whether the input holds the identity branch.
        order: "branch" (``z[:, b*C + c]``) or "channel" (``z[:, c*B + b]``).
        stride: an int or a pair: the forward's stride.

    Shape:
        - Input: (N, B*C, H', W'), B = K+1 (K with identity=False); ``forward(z, output_size)`` takes (H, W),
          required with a stride > 1
        - Output: (N, C, H, W)

    Example:
        >>> import fixedbranch as fb
        >>> inverse = fb.FixedBranchTranspose(fb.filters.wavelet("db2", synthesis=True), "circular",
        ...                                   identity=False, order="channel", stride=2)
        >>> inverse(torch.randn(2, 32, 16, 16), output_size=(32, 32)).shape
        torch.Size([2, 8, 32, 32])
    """

    def __init__(
        self,
        bank: torch.Tensor,
        padding_mode: str = "zeros",
        identity: bool = True,
        order: str = "branch",
        stride=1,
    ):
        super().__init__()
        _, self.stride = _check_options(
            "fixedbranch.FixedBranchTranspose", bank, padding_mode, (), identity, order, stride
        )
        self.padding_mode, self.identity, self.order = padding_mode, identity, order
        self.register_buffer("bank", bank.detach().clone(), persistent=False)
        self.stop_gradient = ()  # (the options' summary reads it)
        self.plan_for(self._compute_dtype())  # warms the plan cache

    @property
    def num_branches(self) -> int:
        """B: the branches in the input, the identity (unless identity=False) and one per filter."""
        return self.bank.shape[0] + int(self.identity)

    def _compute_dtype(self) -> torch.dtype:
        return torch.get_default_dtype()  # as FixedBranch: no parameters to tell the input's dtype

    def forward(self, z: torch.Tensor, output_size=None) -> torch.Tensor:
        return ops.fixed_branch_transpose(z, self.bank, self.padding_mode, self.identity, self.order, self.stride,
                                          output_size)

    def extra_repr(self) -> str:
        return f"{_bank_summary(self.bank)}, padding_mode={self.padding_mode!r}" + _options_repr(self)


class FixedBranchConv2d(_BankModule, nn.Conv2d):
    """Drop-in for ``nn.Conv2d`` followed by fixed-filter branches, fused into one autograd node.

    **The output has** ``out_channels_total`` **channels**, ``num_branches * out_channels``: ``out_channels`` keeps
    ``nn.Conv2d``'s meaning (the convolution's own output, what its weight and a published checkpoint hold), so the
    next layer takes ``layer.out_channels_total``, e.g. ``nn.BatchNorm2d(layer.out_channels_total)``.

    The positional arguments are ``nn.Conv2d``'s, in its order; the bank and the branch options are keyword-only.
    Parameters (``weight``, ``bias``), their initialisation and their ``state_dict`` keys are exactly
    ``nn.Conv2d``'s, so a published ``nn.Conv2d`` state_dict loads with ``strict=True``. The state_dict also records
    the bank (in its metadata, not under a key), and loading a checkpoint whose bank differs from the layer's
    raises an error. Backward saves only the input and the weight.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode, device,
            dtype: as ``nn.Conv2d`` (``padding_mode`` is the convolution's own).
        bank: keyword-only, (K, S1, S2) fixed filters, e.g. ``fixedbranch.filters.bank("sobel_x", "sobel_y")``.
        filter_padding_mode: border handling of the fixed filters: "zeros", "reflect", "replicate", "circular".
        stop_gradient: branch indices (0 = identity) that send no gradient back.
        identity: whether the conv output itself is part of the output.
        order: "branch" (``out[:, b*C + c]``) or "channel" (``out[:, c*B + b]``).
        filter_stride: the branches' stride (``stride`` is the convolution's).

    Shape:
        - Input: (N, in_channels, H, W)
        - Output: (N, out_channels_total, H', W'), ``out_channels_total = num_branches * out_channels``,
          num_branches = K+1 (K with identity=False); H', W' are ``nn.Conv2d``'s sampled every filter_stride-th pixel

    Example:
        >>> import fixedbranch as fb
        >>> layer = fb.FixedBranchConv2d(3, 16, 3, padding=1, bank=fb.filters.bank("sobel_x", "sobel_y"))
        >>> layer.out_channels, layer.num_branches, layer.out_channels_total
        (16, 3, 48)
        >>> layer(torch.randn(4, 3, 28, 28)).shape
        torch.Size([4, 48, 28, 28])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
        *,
        bank: torch.Tensor,
        filter_padding_mode: str = "zeros",
        stop_gradient: Iterable[int] = (),
        identity: bool = True,
        order: str = "branch",
        filter_stride=1,
    ):
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode,
            device=device, dtype=dtype,
        )
        self.stop_gradient, self.filter_stride = _check_options(
            "fixedbranch.FixedBranchConv2d", bank, filter_padding_mode, stop_gradient, identity, order, filter_stride,
            padding_mode_name="filter_padding_mode", stride_name="filter_stride",
        )
        self.filter_padding_mode, self.identity, self.order = filter_padding_mode, identity, order
        bank = bank.detach().to(device=self.weight.device, dtype=self.weight.dtype).clone()
        self.register_buffer("bank", bank, persistent=False)
        self.plan_for(self._compute_dtype())  # warms the plan cache

    @classmethod
    def from_conv2d(
        cls,
        conv: nn.Conv2d,
        *,
        bank: torch.Tensor,
        filter_padding_mode: str = "zeros",
        stop_gradient: Iterable[int] = (),
        identity: bool = True,
        order: str = "branch",
        filter_stride=1,
    ) -> FixedBranchConv2d:
        """Wraps a (trained) ``nn.Conv2d``: same hyper-parameters, a copy of its weight and bias."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(
                "fixedbranch.FixedBranchConv2d.from_conv2d: expected conv to be an nn.Conv2d, got "
                f"{type(conv).__name__}"
            )
        layer = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
            conv.groups, conv.bias is not None, conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype,
            bank=bank, filter_padding_mode=filter_padding_mode, stop_gradient=stop_gradient, identity=identity,
            order=order, filter_stride=filter_stride,
        )
        layer.load_state_dict(conv.state_dict())
        return layer

    @property
    def out_channels_total(self) -> int:
        """The output's channel count, ``num_branches * out_channels``: what the next layer takes.
        (``out_channels`` is the convolution's, as ``nn.Conv2d``'s.)"""
        return self.num_branches * self.out_channels

    @property
    def num_branches(self) -> int:
        """B: the branches in the output, the identity (unless identity=False) and one per filter."""
        return self.bank.shape[0] + int(self.identity)

    def _compute_dtype(self) -> torch.dtype:
        return self.weight.dtype  # x must have the weight's dtype

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
            self.filter_padding_mode, self.stop_gradient, self.identity, self.order, self.filter_stride,
        )

    def extra_repr(self) -> str:
        # The output width beside nn.Conv2d's own fields, so that out_channels cannot be mistaken for it.
        s = super().extra_repr() + f", {_bank_summary(self.bank)}, out_channels_total={self.out_channels_total}"
        if self.filter_padding_mode != "zeros":
            s += f", filter_padding_mode={self.filter_padding_mode!r}"
        return s + _options_repr(self)
