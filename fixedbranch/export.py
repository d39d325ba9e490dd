"""Exporting models that use fixedbranch: ``torch.export`` keeps the fused operators, ONNX gets standard ops.

``torch.export.export(model, (x,))`` records ``torch.ops.fixedbranch.*`` as they are (their fake kernels give the
shapes), so the exported program runs the fused kernels, in Python or through AOTInductor.

ONNX has no such operators. While ``torch.onnx.export`` traces a model (``torch.onnx.is_in_onnx_export()``),
:func:`fixedbranch.fixed_branch`, :func:`fixedbranch.fixed_branch_conv2d` and
:func:`fixedbranch.fixed_branch_transpose` emit the functions of the same names in this module instead: the same
computation in standard operators, which the exporter lowers to ONNX ``Pad`` (mode constant / reflect / edge /
wrap), ``Conv`` (with ``strides`` for a strided layer), ``Slice`` (the strided identity), ``Reshape``, ``Transpose``
and ``Concat`` (the channel order), with batch, height and width free to be dynamic. The transpose becomes one
``ConvTranspose`` (the identity as a centred unit filter beside the bank's) followed by the adjoint of the padding
(``Slice``, ``Pad`` and ``Add``). So a plain ``torch.onnx.export(model, (x,))`` works, with the default (dynamo)
exporter at
its default opset (``wrap`` padding, for "circular", needs opset >= 19)::

    onnx_program = torch.onnx.export(model, (x,), dynamic_shapes=({0: "batch", 2: "height", 3: "width"},))
    onnx_program.save("model.onnx")

An :class:`torch.export.ExportedProgram` made earlier still holds the fused operators; lower them first with
:func:`decompositions` (which writes circular padding as slices and a ``Concat``, valid at any opset)::

    ep = torch.export.export(model, (x,)).run_decompositions(fixedbranch.export.decompositions())
    torch.onnx.export(ep).save("model.onnx")

The same table lowers the operators for any other consumer of core ATen graphs.

Why not a global registration: an entry in ``torch._decomp.decomposition_table`` would reach the ONNX exporter
without any call here, but FakeTensor consults that table before the operators' registered fake kernels whenever
shapes are symbolic, so ``torch.compile`` with dynamic shapes would trace the decomposition's strides instead of
the kernels' (channels_last outputs among them).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from .reference import PAD_MODE, pad_adjoint, pair, same_padding

__all__ = ["decompositions", "exporting_to_onnx", "fixed_branch", "fixed_branch_conv2d", "fixed_branch_transpose"]


def exporting_to_onnx() -> bool:
    """True while ``torch.onnx.export`` traces a model (the dynamo exporter or the TorchScript one)."""
    # The two cheap checks come first (0.1 us together): is_in_onnx_export costs microseconds per eager call.
    return (torch.compiler.is_exporting() or torch.jit.is_tracing()) and torch.onnx.is_in_onnx_export()


def fixed_branch(
    y: torch.Tensor,
    bank: torch.Tensor,
    padding_mode: str = "zeros",
    stop_gradient: Iterable[int] = (),
    identity: bool = True,
    order: str = "branch",
    stride=1,
) -> torch.Tensor:
    """The branches in standard operators: one pad, one (strided) convolution, reshapes and one concatenation.

    The channels are folded into the batch, so a single (K, 1, S1, S2) convolution applies every filter to every
    channel with no channel count baked into the graph; a transpose then puts the result in branch-major order, or a
    reshape in channel-major order. The strided identity is a slice.

    Args:
        y: (N, C, H, W).
        bank: (K, S1, S2), converted to y's dtype.
        padding_mode: "zeros", "reflect", "replicate" or "circular".
        stop_gradient: branch indices (0 = identity) whose gradient does not reach y.
        identity: whether branch 0 (y itself) is part of the output.
        order: "branch" (``out[:, b*C + c]``) or "channel" (``out[:, c*B + b]``).
        stride: an int or a pair: the branches are sampled every stride-th pixel.

    Returns:
        (N, B*C, H', W'), equal to :func:`fixedbranch.reference.fixed_branch` up to rounding.
    """
    return _fixed_branch(y, bank, padding_mode, stop_gradient, identity, order, stride, _pad)


def fixed_branch_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    bank: torch.Tensor,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    padding_mode: str = "zeros",
    stop_gradient: Iterable[int] = (),
    identity: bool = True,
    order: str = "branch",
    filter_stride=1,
) -> torch.Tensor:
    """:func:`fixed_branch` of ``F.conv2d(x, weight, bias, stride, padding, dilation, groups)``, sampled every
    ``filter_stride``-th pixel."""
    y = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    return fixed_branch(y, bank, padding_mode, stop_gradient, identity, order, filter_stride)


def fixed_branch_transpose(
    z: torch.Tensor,
    bank: torch.Tensor,
    padding_mode: str = "zeros",
    identity: bool = True,
    order: str = "branch",
    stride=1,
    output_size=None,
) -> torch.Tensor:
    """The transpose in standard operators: one transposed convolution and the adjoint of the padding.

    The channels are folded into the batch, so one (B, 1, S1, S2) ``ConvTranspose`` sums every branch of a channel
    with no channel count baked into the graph; the identity branch is the adjoint of a centred unit filter, which
    samples exactly ``y[:, :, ::sH, ::sW]``, so it joins the bank as filter 0.

    Returns:
        (N, C, H, W), equal to :func:`fixedbranch.reference.fixed_branch_transpose` up to rounding.
    """
    return _fixed_branch_transpose(z, bank, padding_mode, identity, order, stride, output_size)


def _pad(y: torch.Tensor, pads: tuple[int, int, int, int], padding_mode: str) -> torch.Tensor:
    return F.pad(y, pads, mode=PAD_MODE[padding_mode])


def _pad_functional(y: torch.Tensor, pads: tuple[int, int, int, int], padding_mode: str) -> torch.Tensor:
    # A decomposition runs below functionalization, and circular F.pad is built from in-place copies there; the
    # same wrap-around as slices and a concatenation is functional. The other modes are functional ATen ops.
    if padding_mode != "circular":
        return _pad(y, pads, padding_mode)
    left, right, top, bottom = pads
    y = torch.cat([y[:, :, y.shape[2] - top :], y, y[:, :, :bottom]], dim=2)
    return torch.cat([y[:, :, :, y.shape[3] - left :], y, y[:, :, :, :right]], dim=3)


def _fixed_branch(y, bank, padding_mode, stop_gradient, identity, order, stride, pad) -> torch.Tensor:
    stop = set(stop_gradient)
    stride = pair(stride)
    n, c = y.shape[0], y.shape[1]
    k, s1, s2 = bank.shape
    bank = bank.detach().to(y.dtype)
    pads = same_padding((s1, s2))
    present = set(range(0 if identity else 1, k + 1))

    def identity_of(src):  # y[:, :, ::sH, ::sW]; a Slice in ONNX, nothing at stride 1
        return src if stride == (1, 1) else src[:, :, :: stride[0], :: stride[1]]

    if stop and stop != present:
        # A partial stop set needs a detach per branch: one convolution per filter, as the reference does it.
        parts = [identity_of(y.detach() if 0 in stop else y)] if identity else []
        for i in range(k):
            padded = pad(y.detach() if i + 1 in stop else y, pads, padding_mode)
            parts.append(F.conv2d(padded, bank[i].expand(c, 1, s1, s2), stride=stride, groups=c))
        # (N, C, H', W') each: branch-major is their concatenation, channel-major their interleaving.
        return torch.cat(parts, dim=1) if order == "branch" else torch.stack(parts, dim=2).flatten(1, 2)
    src = y.detach() if stop else y
    padded = pad(src, pads, padding_mode)
    planes = padded.reshape(n * c, 1, padded.shape[2], padded.shape[3])
    filtered = F.conv2d(planes, bank.unsqueeze(1), stride=stride)  # (N*C, K, H', W')
    h, w = filtered.shape[2], filtered.shape[3]
    filtered = filtered.reshape(n, c, k, h, w)
    if order == "branch":
        branches = filtered.transpose(1, 2).reshape(n, k * c, h, w)
        return torch.cat([identity_of(src), branches], dim=1) if identity else branches
    # Channel-major: channel c*B + b is branch b of channel c, which is (N, C, B, H', W') read row by row.
    if identity:
        filtered = torch.cat([identity_of(src).unsqueeze(2), filtered], dim=2)
    return filtered.reshape(n, c * (k + int(identity)), h, w)


def _fixed_branch_transpose(z, bank, padding_mode, identity, order, stride, output_size) -> torch.Tensor:
    sh, sw = pair(stride)
    n, bc, zh, zw = z.shape
    k, s1, s2 = bank.shape
    bank = bank.detach().to(z.dtype)
    pads = same_padding((s1, s2))
    left, right, top, bottom = pads
    if identity:
        unit = F.pad(bank.new_ones(1, 1, 1), (left, right, top, bottom))  # 1 at the "same" centre (top, left)
        bank = torch.cat([unit, bank])
    branches = bank.shape[0]
    c = bc // branches
    h, w = (zh, zw) if output_size is None else output_size
    if order == "branch":
        planes = z.reshape(n, branches, c, zh, zw).transpose(1, 2).reshape(n * c, branches, zh, zw)
    else:
        planes = z.reshape(n * c, branches, zh, zw)
    padded = F.conv_transpose2d(planes, bank.unsqueeze(1), stride=(sh, sw))  # (N*C, 1, (H'-1)*sH + S1, ...)
    # The last rows and columns of the padded image that no stride-th output reaches get no gradient.
    padded = F.pad(padded, (0, w + left + right - padded.shape[3], 0, h + top + bottom - padded.shape[2]))
    return pad_adjoint(padded, pads, padding_mode).reshape(n, c, h, w)


# The decompositions take the operators' schemas with their defaults: torch.export records a call without the
# arguments that equal a default.


def _fixed_branch_op(y, bank, padding_mode="zeros", stop_gradient=(), identity=True, order="branch", stride=1):
    return _fixed_branch(y, bank, padding_mode, stop_gradient, identity, order, stride, _pad_functional)


def _fixed_branch_conv2d_op(x, weight, bias, bank, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros",
                            stop_gradient=(), identity=True, order="branch", filter_stride=1):
    y = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    return _fixed_branch(y, bank, padding_mode, stop_gradient, identity, order, filter_stride, _pad_functional)


def _fixed_branch_transpose_op(z, bank, padding_mode="zeros", identity=True, order="branch", stride=1,
                               output_size=None):
    return _fixed_branch_transpose(z, bank, padding_mode, identity, order, stride, output_size)


def decompositions() -> dict:
    """Decompositions of the fixedbranch operators, for :meth:`torch.export.ExportedProgram.run_decompositions`.

    Only the three public operators are in the table, so everything else in the program stays as it is (the ONNX
    exporter then lowers it as usual). For a core-ATen program, add them to the defaults:
    ``table = torch.export.default_decompositions(); table.update(fixedbranch.export.decompositions())``.

    Example:
        >>> import fixedbranch as fb
        >>> layer = fb.FixedBranchConv2d(3, 4, 3, bank=fb.filters.bank("sobel_x"), padding=1)
        >>> ep = torch.export.export(layer, (torch.randn(1, 3, 8, 8),))
        >>> lowered = ep.run_decompositions(fb.export.decompositions())
        >>> [str(n.target) for n in lowered.graph.nodes if "fixedbranch" in str(n.target)]
        []
        >>> "aten.pad.default" in {str(n.target) for n in lowered.graph.nodes}
        True
    """
    return {
        torch.ops.fixedbranch.fixed_branch.default: _fixed_branch_op,
        torch.ops.fixedbranch.fixed_branch_conv2d.default: _fixed_branch_conv2d_op,
        torch.ops.fixedbranch.fixed_branch_transpose.default: _fixed_branch_transpose_op,
    }
