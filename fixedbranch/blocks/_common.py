"""What the blocks share: the switch to the published formulation, and the bank a grouped convolution's repeated
weight applies to every channel."""

from __future__ import annotations

import contextlib
import threading

import torch
from torch import nn

_state = threading.local()


@contextlib.contextmanager
def published_formulation():
    """Within this context (in this thread) every block runs the published formulation, never the fused operators.

    The results are the same (to rounding); this is the baseline the benchmarks time the blocks against, and a way
    to rule the fused operators out when a model misbehaves.

    Example:
        >>> from fixedbranch import blocks
        >>> layer = blocks.Harm2d(3, 8, 3, padding=1, use_bn=True)
        >>> with blocks.published_formulation():
        ...     y = layer(torch.randn(1, 3, 8, 8))  # one grouped convolution with the repeated bank, as published
    """
    previous = getattr(_state, "published", False)
    _state.published = True
    try:
        yield
    finally:
        _state.published = previous


def published() -> bool:
    """Whether the blocks must run the published formulation (inside :func:`published_formulation`)."""
    return getattr(_state, "published", False)


def shared_bank(owner: nn.Module, weight: torch.Tensor, channels: int) -> torch.Tensor | None:
    """The (G, S1, S2) filters that ``F.conv2d(x, weight, groups=channels)`` applies to each of x's channels.

    ``weight`` is a published layer's (channels * G, 1, S1, S2) repeated bank: group c of the grouped convolution
    correlates input channel c with ``weight[c*G:(c+1)*G]``, output channel c*G + g, the channel-major order of
    ``fixed_branch(..., identity=False, order="channel")``. Returns None when the groups do not all hold the same
    filters (then no single bank expresses the call), when the weight needs a gradient, or on the meta device.

    The answer is kept on ``owner`` until the weight changes (another tensor, another dtype or device, or an
    in-place write such as ``load_state_dict``, which bumps its version), so the comparison runs once, not per call.
    """
    key = (id(weight), weight.data_ptr(), weight._version, weight.dtype, weight.device, channels)
    cache = owner.__dict__.setdefault("_shared_banks", {})
    hit = cache.get(id(weight))
    if hit is not None and hit[0] == key:
        return hit[1]
    bank = None
    if (
        not weight.requires_grad
        and not weight.is_meta
        and weight.dim() == 4
        and weight.shape[1] == 1
        and channels > 0
        and weight.shape[0] % channels == 0
        and weight.shape[0] > 0
    ):
        groups = weight.detach().reshape(channels, weight.shape[0] // channels, *weight.shape[2:])
        if torch.equal(groups, groups[:1].expand_as(groups)):
            bank = groups[0].clone()
    cache[id(weight)] = (key, bank)
    return bank


def same_padding(kernel_size: int, padding, dilation, stride) -> bool:
    """Whether ``F.conv2d(..., padding, dilation)`` with an odd square kernel pads as fixed_branch's "same" does."""
    if kernel_size % 2 == 0 or dilation not in (1, (1, 1), [1, 1]):
        return False
    half = kernel_size // 2
    if isinstance(padding, str):
        return padding == "same" and stride in (1, (1, 1), [1, 1])
    return padding in (half, (half, half), [half, half])


def has_hooks(*modules: nn.Module) -> bool:
    """Whether any of ``modules`` has forward hooks, which a block must then call rather than fold away."""
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def batch_norm_affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(scale, shift) with ``bn(z) = z * scale + shift`` per channel: a ``BatchNorm2d`` (exactly, no subclass) in
    evaluation mode on its running statistics, without hooks; None for anything else."""
    if type(bn) is not nn.BatchNorm2d or bn.training or bn.running_mean is None or has_hooks(bn):
        return None
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    return scale, shift if bn.bias is None else shift + bn.bias
