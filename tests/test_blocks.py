"""fixedbranch.blocks against the published blocks' formulation, restated here from the papers' definitions.

Each published block is written below as plain PyTorch (grouped convolutions with repeated banks, as published),
with the published parameter names and shapes. A drop-in must load its state_dict with strict=True (and give its
own back) and then agree in float64, in training and in evaluation mode: the output, the input gradient, every
parameter's gradient and the BatchNorm running statistics. Cases cover the fused calls and those that run the
published formulation (other paddings, dilation, one filter per channel, trainable filters, ...).
"""

import enum
import importlib.util
import math
import pathlib
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fixedbranch as fb
from fixedbranch import blocks, ops
from fixedbranch.blocks import _depthwise

from .common import assert_close, cpu_and_cuda

F64 = torch.float64

# ----------------------------------------------------------------------------------------------------------------
# The published formulations, restated.


class PublishedHarm2d(nn.Module):
    """Harmonic block: the K L1-normalised DCT filters, repeated per input channel, as a frozen ``dct`` parameter;
    with ``use_bn`` a grouped convolution (one group per channel), BN without affine parameters and a grouped 1x1
    convolution ``weight``; without, a single convolution whose filters are sum_k weight[..., k] * dct[k]."""

    def __init__(self, ni, no, kernel_size, stride=1, padding=0, bias=True, dilation=1, use_bn=False, level=None,
                 DC=True, groups=1):  # noqa: N803
        super().__init__()
        bank = fb.filters.dct(kernel_size, norm="l1", level=level, dc=DC, dtype=torch.float32)
        k = bank.shape[0]
        self.conv_args = dict(stride=stride, padding=padding, dilation=dilation)
        self.groups = groups
        self.dct = nn.Parameter(bank.repeat(ni, 1, 1)[:, None] if use_bn else bank[None], requires_grad=False)
        if use_bn:
            self.bn = nn.BatchNorm2d(ni * k, affine=False)
        shape = (no, ni // groups * k, 1, 1) if use_bn else (no, ni // groups, k, 1, 1)
        self.weight = nn.Parameter(torch.randn(shape))
        self.bias = nn.Parameter(torch.randn(no)) if bias else None

    def forward(self, x):
        if hasattr(self, "bn"):
            y = self.bn(F.conv2d(x, self.dct, groups=x.shape[1], **self.conv_args))
            return F.conv2d(y, self.weight, self.bias, groups=self.groups)
        filters = (self.weight * self.dct).sum(2)
        return F.conv2d(x, filters, self.bias, groups=self.groups, **self.conv_args)


def edge_filters(k, mode, n_angles):
    """Pre-defined filter networks' pool in torch, float64: on the centred grid (rows y, columns x), with
    a = |phi - atan2(y, x)| and c = r cos(a), uneven filters 1 - exp(-c²/2σ²) (σ = 0.3k) negated where a > π/2,
    even ones 2 exp(-c²/2σ²) (σ = 0.15k), each zero-mean and of L1 norm 1, at phi = 180° i / n_angles; the uneven
    ones, then the even ones (as the mode selects), each as -w then w."""
    g = torch.linspace(-(k - 1) / 2, (k - 1) / 2, k, dtype=F64)
    y, x = torch.meshgrid(g, g, indexing="ij")
    r, angle = torch.sqrt(x * x + y * y), torch.atan2(y, x)
    pool = []
    for uneven, sigma in ((True, 0.3 * k), (False, 0.15 * k)):
        if mode not in ("All", "Uneven" if uneven else "Even"):
            continue
        for i in range(n_angles):
            a = (math.radians(180 * i / n_angles) - angle).abs()
            bell = torch.exp(-0.5 * (torch.cos(a) * r / sigma) ** 2)
            w = torch.where(a > math.pi / 2, bell - 1, 1 - bell) if uneven else 2 * bell
            w = w - w.mean()
            pool += [-w / w.abs().sum(), w / w.abs().sum()]
    return torch.stack(pool)


class PublishedPredefinedConv(nn.Module):
    """The filter stage: the pool ``weight`` (K, 1, k, k) and ``internal_weight``, the pool repeated
    (cin * f) // K times, which a grouped convolution (groups = cin) applies: channel j gets filter j mod K."""

    def __init__(self, cin, f, pool, stride, requires_grad):
        super().__init__()
        self.cin, self.stride, self.padding, self.trainable = cin, stride, pool.shape[-1] // 2, requires_grad
        self.repeats = cin * f // pool.shape[0]
        self.weight = nn.Parameter(pool[:, None].float(), requires_grad)
        self.internal_weight = nn.Parameter(self.weight.detach().repeat(self.repeats, 1, 1, 1), False)

    def forward(self, x):
        if self.trainable and self.training:  # the pool, copied into the convolution's filters, gets no gradient
            self.internal_weight.data = self.weight.data.repeat(self.repeats, 1, 1, 1)
        return F.conv2d(x, self.internal_weight, None, self.stride, self.padding, groups=self.cin)


class PublishedPFM(nn.Module):
    """Pre-defined filter module: filter stage, BN, ReLU, 1x1 convolution without bias, BN."""

    def __init__(self, cin, cout, pool, f, stride=1, requires_grad=False):
        super().__init__()
        self.predev_conv = PublishedPredefinedConv(cin, f, pool, stride, requires_grad)
        self.norm1 = nn.BatchNorm2d(cin * f)
        self.relu = nn.ReLU()
        self.conv1x1 = nn.Conv2d(cin * f, cout, kernel_size=1, bias=False)
        self.norm2 = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.norm2(self.conv1x1(self.relu(self.norm1(self.predev_conv(x)))))


# ----------------------------------------------------------------------------------------------------------------
# Comparison helpers.


def randomise(module, seed=0):
    """Moves every trainable parameter and the BN statistics away from their initial values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point() and (name.endswith("running_var") or name.endswith("running_mean")):
                t.copy_(torch.rand(t.shape, generator=gen, dtype=F64) + 0.5)
        for p in module.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=F64))


def run(module, x, gen_seed=1):
    """Output, input gradient and each trainable parameter's gradient (by name) for a fixed random output gradient."""
    x = x.clone().requires_grad_()
    out = module(x)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(gen_seed), dtype=F64).to(out)
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(out, [x] + [p for _, p in named], g, allow_unused=True)
    return {"output": out.detach(), "input gradient": grads[0], **{f"d/d{n}": v for (n, _), v in zip(named, grads[1:])}}


def assert_same_block(published, block, x):
    """Strict state_dict both ways, then the same results in training and evaluation mode."""
    assert list(block.state_dict()) == list(published.state_dict())
    assert [n for n, p in block.named_parameters() if p.requires_grad] == [
        n for n, p in published.named_parameters() if p.requires_grad
    ]
    block.load_state_dict(published.state_dict(), strict=True)
    published.load_state_dict(block.state_dict(), strict=True)
    for training in (True, False):
        published.train(training), block.train(training)
        expected, actual = run(published, x), run(block, x)
        assert list(actual) == list(expected)
        for what in expected:
            if expected[what] is None:
                assert actual[what] is None, what
            else:
                assert_close(actual[what], expected[what], F64, f"{'train' if training else 'eval'}: {what}")
        for (name, a), (_, e) in zip(block.state_dict().items(), published.state_dict().items()):
            if e.is_floating_point():
                assert_close(a, e, F64, f"after a {'training' if training else 'evaluation'} call: {name}")
            else:
                assert torch.equal(a, e), name


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts the calls of fixedbranch.fixed_branch (the blocks call it through fixedbranch.ops)."""
    calls = []
    original = ops.fixed_branch

    def counted(*args, **kwargs):
        calls.append(args[1].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(ops, "fixed_branch", counted)
    return calls


# ----------------------------------------------------------------------------------------------------------------
# Harm2d.

# (ni, no, kernel_size, keyword arguments, fused): harmonic networks' stem and 3x3 layers, then the other options.
HARM_CASES = [
    (3, 5, 7, dict(stride=2, padding=3, use_bn=True), True),
    (4, 6, 3, dict(padding=1, use_bn=True), True),
    (4, 6, 3, dict(stride=(2, 1), padding=(1, 1), use_bn=True, level=2), True),
    (4, 6, 5, dict(padding=2, use_bn=True, level=3, DC=False, groups=2, bias=False), True),
    (4, 6, 3, dict(padding="same", use_bn=True), True),
    (4, 6, 1, dict(use_bn=True), True),
    (4, 6, 3, dict(padding=0, use_bn=True), False),  # "valid" padding
    (4, 6, 3, dict(padding=(1, 0), use_bn=True), False),
    (4, 6, 3, dict(padding=2, dilation=2, use_bn=True), False),
    (4, 6, 4, dict(padding=2, use_bn=True), False),  # an even kernel padded on both sides
    (4, 6, 3, dict(padding=1), False),  # use_bn=False: one convolution of folded filters
    (4, 6, 5, dict(stride=2, padding=2, level=4, DC=False, groups=2, bias=False), False),
]


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("ni, no, k, kwargs, fused", HARM_CASES)
def test_harm2d_matches_published_formulation(ni, no, k, kwargs, fused, device, fused_calls):
    published = PublishedHarm2d(ni, no, k, **kwargs).to(device, F64)
    randomise(published)
    block = blocks.Harm2d(ni, no, k, **kwargs).to(device, F64)
    assert block.fused == fused
    assert_same_block(published, block, torch.randn(2, ni, 11, 13, dtype=F64, device=device))
    # Training mode only: evaluation mode folds the block into one convolution; the published formulation never calls
    # the operator.
    assert len(fused_calls) == (1 if fused else 0)


def test_evaluation_folds_skip_submodules_with_hooks():
    """A hook on a submodule that evaluation mode would fold away keeps that submodule called, with the same result."""
    x = torch.randn(2, 4, 9, 9, dtype=F64)
    for block, submodule in ((blocks.Harm2d(4, 6, 3, padding=1, use_bn=True), "bn"),
                             (blocks.PredefinedFilterModule(4, 6, "All", 4, f=16), "norm2")):
        block = block.double()
        randomise(block)
        block.eval()
        folded = block(x)
        with blocks.published_formulation():
            expected = block(x)
        calls = []
        handle = getattr(block, submodule).register_forward_hook(lambda *args: calls.append(1))
        hooked = block(x)
        handle.remove()
        assert calls == [1], submodule
        assert_close(folded, expected, F64, f"{submodule} folded")
        assert_close(hooked, expected, F64, f"{submodule} hooked")


def test_pfm_evaluation_fold_keeps_a_replaced_convolution_geometry():
    """A conv1x1 replaced by another nn.Conv2d (3x3, padded, with a bias) folds with its own geometry."""
    block = blocks.PredefinedFilterModule(4, 6, "All", 4, f=16).double()
    block.conv1x1 = nn.Conv2d(block.conv1x1.in_channels, 6, 3, padding=1, bias=True).double()
    randomise(block)
    block.eval()
    x = torch.randn(2, 4, 9, 9, dtype=F64)
    with blocks.published_formulation():
        expected = block(x)
    assert_close(block(x), expected, F64, "replaced conv1x1 folded")


def test_harm2d_initial_values_are_published():
    torch.manual_seed(0)
    block = blocks.Harm2d(4, 6, 3, padding=1, use_bn=True, level=2, DC=False)
    torch.manual_seed(0)
    weight = nn.init.kaiming_normal_(torch.empty(6, 4 * 2, 1, 1), mode="fan_out", nonlinearity="relu")
    bank = fb.filters.dct(3, norm="l1", level=2, dc=False)
    assert block.dct.dtype == torch.float32 and not block.dct.requires_grad and block.dct.shape == (8, 1, 3, 3)
    # The published bank is rounded to float32 twice (product, then normalisation): equal up to that rounding.
    assert_close(block.dct[:, 0], bank.repeat(4, 1, 1), torch.float32)
    assert torch.equal(block.weight, weight) and torch.equal(block.bias, torch.zeros(6))
    assert isinstance(block.dct, nn.Parameter) and not block.bn.affine
    folded = blocks.Harm2d(4, 6, 3, groups=2)
    assert folded.dct.shape == (1, 9, 3, 3) and folded.weight.shape == (6, 2, 9, 1, 1) and not hasattr(folded, "bn")


def test_harm2d_fused_stage_reads_the_loaded_bank(fused_calls):
    """A checkpoint's filters are the ones applied; filters that differ between channels run the grouped conv."""
    published = PublishedHarm2d(3, 4, 3, padding=1, use_bn=True).double()
    randomise(published)
    block = blocks.Harm2d(3, 4, 3, padding=1, use_bn=True).double()
    x = torch.randn(2, 3, 9, 9, dtype=F64)
    with torch.no_grad():
        published.dct.mul_(torch.linspace(0.5, 2, 9, dtype=F64).repeat(3)[:, None, None, None])  # same per channel
    assert_same_block(published, block, x)
    assert len(fused_calls) == 1  # training mode; evaluation mode folds the loaded bank into one convolution
    with torch.no_grad():
        published.dct[0].neg_()  # channel 0 differs from the others
    assert_same_block(published, block, x)
    assert len(fused_calls) == 1


# ----------------------------------------------------------------------------------------------------------------
# PredefinedFilterModule.

# (cin, cout, mode, n_angles, f, k, stride, trainable filters, fused)
PFM_CASES = [
    (3, 8, "All", 4, 16, 3, 2, False, True),  # PFNet's first module
    (4, 6, "All", 4, 16, 3, 1, False, True),
    (2, 5, "Uneven", 4, 8, 3, 3, False, True),
    (2, 3, "Even", 2, 4, 5, 2, False, True),
    (2, 4, "All", 4, 32, 3, 1, False, True),  # every filter twice on every channel
    (16, 16, "All", 4, 1, 3, 1, False, False),  # PFNet's later modules: channel i gets filter i mod 16
    (8, 8, "All", 4, 2, 3, 1, False, False),
    (3, 5, "All", 4, 16, 3, 1, True, False),  # trainable filters
    (2, 3, "All", 4, 16, 4, 1, False, False),  # an even kernel
]


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("cin, cout, mode, n_angles, f, k, stride, trainable, fused", PFM_CASES)
def test_predefined_filter_module_matches_published_formulation(
    cin, cout, mode, n_angles, f, k, stride, trainable, fused, device, fused_calls
):
    published = PublishedPFM(cin, cout, edge_filters(k, mode, n_angles), f, stride, trainable).to(device, F64)
    randomise(published)
    block = blocks.PredefinedFilterModule(cin, cout, mode, n_angles, f=f, k=k, stride=stride,
                                          predefined_filters_require_grad=trainable).to(device, F64)
    assert block.fused == fused
    assert_same_block(published, block, torch.randn(2, cin, 12, 13, dtype=F64, device=device))
    assert len(fused_calls) == (2 if fused else 0)


def test_predefined_filters_are_published():
    for mode, n_angles, k in (("All", 4, 3), ("Uneven", 3, 5), ("Even", 2, 7)):
        pool = edge_filters(k, mode, n_angles)
        block = blocks.PredefinedFilterModule(2, 3, mode, n_angles, f=pool.shape[0], k=k)
        w = block.predev_conv.weight
        assert w.dtype == torch.float32 and not w.requires_grad and block.predev_conv.n_kernels == pool.shape[0]
        assert_close(w[:, 0], pool, torch.float32)
        assert torch.equal(block.predev_conv.internal_weight, w.repeat(2, 1, 1, 1))


def test_random_filters_follow_numpy_global_generator():
    np = pytest.importorskip("numpy")
    np.random.seed(3)
    expected = np.random.rand(3, 3, 3) * 2.0 - 1.0
    np.random.seed(3)
    block = blocks.PredefinedFilterModule(2, 4, "Random", 3, f=3)
    assert torch.equal(block.predev_conv.weight[:, 0], torch.tensor(expected, dtype=torch.float32))
    assert block.fused


def test_trainable_filters_are_copied_in_training_mode_only():
    """As published: an in-place change of the pool takes effect at the next training-mode call, and the pool
    itself receives no gradient."""
    published = PublishedPFM(2, 3, edge_filters(3, "All", 4), 16, 1, True).double()
    block = blocks.PredefinedFilterModule(2, 3, "All", 4, f=16, predefined_filters_require_grad=True).double()
    block.load_state_dict(published.state_dict())
    x = torch.randn(2, 2, 8, 8, dtype=F64)
    for module in (published, block):
        with torch.no_grad():
            module.predev_conv.weight.mul_(2)
    assert_same_block(published, block, x)
    assert torch.equal(block.predev_conv.internal_weight[:16], block.predev_conv.weight)


class OtherFilterMode(enum.Enum):  # the published enum, as another module defines it
    Even = 10
    Uneven = 11
    All = 12
    Random = 13
    Smooth = 14


def test_filter_mode_accepts_own_enum_other_enums_and_names():
    pools = [
        blocks.PredefinedFilterModule(2, 3, mode, 4, f=16).predev_conv.weight
        for mode in (blocks.ParameterizedFilterMode.All, OtherFilterMode.All, "All")
    ]
    assert torch.equal(pools[0], pools[1]) and torch.equal(pools[0], pools[2])
    assert [m.name for m in blocks.ParameterizedFilterMode] == ["Even", "Uneven", "All", "Random", "Smooth"]
    with pytest.raises(ValueError, match="filter_mode to be one of Even, Uneven, All, Random, Smooth, got 'all'"):
        blocks.PredefinedFilterModule(2, 3, "all", 4)
    with pytest.raises(TypeError, match="filter_mode to be a ParameterizedFilterMode or its name, got int"):
        blocks.PredefinedFilterModule(2, 3, 2, 4)
    with pytest.raises(ValueError, match="filter_mode Smooth with n_angles=4 gives no filters"):
        blocks.PredefinedFilterModule(2, 3, "Smooth", 4)


# ----------------------------------------------------------------------------------------------------------------
# WTConv2d.


class Scale(nn.Module):
    def __init__(self, channels, value):
        super().__init__()
        self.weight = nn.Parameter(torch.full((1, channels, 1, 1), value))

    def forward(self, x):
        return self.weight * x


class PublishedWTConv2d(nn.Module):
    """Wavelet convolution: per level, pad the low band to even sizes at the bottom and right, split it into four
    bands per channel with a grouped stride-2 convolution (padding L/2 - 1; channel 4c + b), filter them with a
    depthwise convolution and a scale; from the coarsest level up, add the coarser result to the low band and invert
    with the grouped transposed convolution, cropped back; add a scaled depthwise convolution of the input; subsample
    by the stride."""

    def __init__(self, channels, kernel_size, stride, bias, levels, wavelet):
        super().__init__()
        analysis, synthesis = fb.filters.wavelet(wavelet).float(), fb.filters.wavelet(wavelet, synthesis=True).float()
        self.stride, self.pad = stride, analysis.shape[-1] // 2 - 1
        self.wt_filter = nn.Parameter(analysis.repeat(channels, 1, 1)[:, None], requires_grad=False)
        self.iwt_filter = nn.Parameter(synthesis.repeat(channels, 1, 1)[:, None], requires_grad=False)
        self.base_conv = nn.Conv2d(channels, channels, kernel_size, padding="same", groups=channels, bias=bias)
        self.base_scale = Scale(channels, 1.0)
        c4 = 4 * channels
        self.wavelet_convs = nn.ModuleList(
            [nn.Conv2d(c4, c4, kernel_size, padding="same", groups=c4, bias=False) for _ in range(levels)])
        self.wavelet_scale = nn.ModuleList([Scale(c4, 0.1) for _ in range(levels)])

    def forward(self, x):
        c = x.shape[1]
        low, filtered, sizes = x, [], []
        for conv, scale in zip(self.wavelet_convs, self.wavelet_scale):
            h, w = low.shape[-2:]
            sizes.append((h, w))
            bands = F.conv2d(F.pad(low, (0, w % 2, 0, h % 2)), self.wt_filter, stride=2, groups=c, padding=self.pad)
            low = bands[:, 0::4]
            filtered.append(scale(conv(bands)))
        up = 0
        for bands, (h, w) in zip(reversed(filtered), reversed(sizes)):
            bands = bands.clone()
            bands[:, 0::4] = bands[:, 0::4] + up
            up = F.conv_transpose2d(bands, self.iwt_filter, stride=2, groups=c, padding=self.pad)[..., :h, :w]
        out = self.base_scale(self.base_conv(x)) + up
        return out[..., :: self.stride, :: self.stride]


# (channels, kernel_size, stride, bias, levels, wavelet, H, W)
WTCONV_CASES = [
    (3, 5, 1, True, 1, "db1", 16, 16),
    (3, 5, 1, True, 2, "db1", 15, 17),  # odd sizes: padded before each transform, cropped after each inverse
    (2, 3, 2, False, 3, "db2", 23, 20),
    (2, 5, 3, True, 2, "sym3", 19, 21),
    (2, 5, 1, True, 2, "bior2.2", 14, 13),
    (2, 3, 1, True, 2, "coif1", 12, 11),
    (2, 5, 1, True, 0, "db1", 8, 8),
]


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("channels, kernel_size, stride, bias, levels, wavelet, h, w", WTCONV_CASES)
def test_wtconv2d_matches_published_formulation(channels, kernel_size, stride, bias, levels, wavelet, h, w, device,
                                                fused_calls):
    pytest.importorskip("pywt")
    published = PublishedWTConv2d(channels, kernel_size, stride, bias, levels, wavelet).to(device, F64)
    randomise(published)
    block = blocks.WTConv2d(channels, channels, kernel_size, stride, bias, levels, wavelet).to(device, F64)
    assert block.fused
    assert_same_block(published, block, torch.randn(2, channels, h, w, dtype=F64, device=device))
    assert len(fused_calls) == 2 * levels  # one transform per level, in each mode


def test_wtconv2d_trains_with_the_fused_depthwise_weight_gradient(monkeypatch):
    """At sizes where it pays, the depthwise convolutions' weight gradients run fused, with the published results."""
    pytest.importorskip("pywt")
    calls = []
    original = _depthwise._weight_grad
    monkeypatch.setattr(_depthwise, "_weight_grad", lambda *args: calls.append(args[1].shape) or original(*args))
    published = PublishedWTConv2d(4, 5, 1, True, 2, "db1").double()
    randomise(published)
    block = blocks.WTConv2d(4, 4, 5, 1, True, 2, "db1").double()
    assert_same_block(published, block, torch.randn(2, 4, 64, 64, dtype=F64))
    # In each mode, the base convolution (2x4x64x64) and the first level's (2x16x32x32); the second level's is too
    # small to pay.
    assert sorted(calls) == sorted([(2, 4, 64, 64), (2, 16, 32, 32)] * 2)


def test_wtconv2d_initial_values_are_published():
    pywt = pytest.importorskip("pywt")
    torch.manual_seed(0)
    block = blocks.WTConv2d(3, 3, 5, wt_levels=2, wt_type="db2")
    torch.manual_seed(0)
    base = nn.Conv2d(3, 3, 5, padding="same", groups=3)
    convs = [nn.Conv2d(12, 12, 5, padding="same", groups=12, bias=False) for _ in range(2)]
    assert torch.equal(block.base_conv.weight, base.weight) and torch.equal(block.base_conv.bias, base.bias)
    assert all(torch.equal(a.weight, b.weight) for a, b in zip(block.wavelet_convs, convs))
    assert torch.equal(block.base_scale.weight, torch.ones(1, 3, 1, 1))
    assert all(torch.equal(s.weight, torch.full((1, 12, 1, 1), 0.1)) for s in block.wavelet_scale)
    for param, synthesis in ((block.wt_filter, False), (block.iwt_filter, True)):
        assert param.shape == (12, 1, 4, 4) and param.dtype == torch.float32 and not param.requires_grad
        # The published banks multiply float32 coefficients: equal to the float64 products up to that rounding.
        assert_close(param[:, 0], fb.filters.wavelet("db2", synthesis=synthesis).repeat(3, 1, 1), torch.float32)
    lo = torch.tensor(pywt.Wavelet("db2").dec_lo[::-1], dtype=torch.float32)
    assert torch.equal(block.wt_filter[0, 0], torch.outer(lo, lo))
    assert block.do_stride is None and blocks.WTConv2d(3, 3, stride=2).do_stride.stride == 2
    with pytest.raises(ValueError, match="in_channels == out_channels"):
        blocks.WTConv2d(3, 4)


def test_wtconv2d_runs_published_formulation_for_filters_it_cannot_fuse(fused_calls):
    """Filters that differ between channels, or that require grad, run WTConv's grouped convolutions."""
    pytest.importorskip("pywt")
    x = torch.randn(2, 2, 9, 10, dtype=F64)
    published = PublishedWTConv2d(2, 3, 1, True, 2, "db1").double()
    randomise(published)
    block = blocks.WTConv2d(2, 2, 3, wt_levels=2).double()
    with torch.no_grad():
        published.wt_filter[:4].mul_(2)  # channel 0's analysis filters differ from channel 1's
    assert_same_block(published, block, x)
    assert not block.fused and not fused_calls
    with torch.no_grad():
        published.wt_filter[:4].div_(2)
    block.iwt_filter.requires_grad_(True)
    published.iwt_filter.requires_grad_(True)
    assert_same_block(published, block, x)  # also the synthesis filters' gradient
    assert not block.fused and not fused_calls


# ----------------------------------------------------------------------------------------------------------------
# Shared behaviour.


def test_published_formulation_switch(fused_calls):
    """Inside blocks.published_formulation() no block calls the fused operator, and the results agree."""
    torch.manual_seed(0)
    layers = [blocks.Harm2d(3, 4, 3, padding=1, use_bn=True), blocks.PredefinedFilterModule(3, 4, "All", 4, f=16)]
    if importlib.util.find_spec("pywt"):
        layers.append(blocks.WTConv2d(3, 3, 3))
    x = torch.randn(2, 3, 10, 10, dtype=F64)
    for layer in layers:
        layer.double()
        fused = run(layer, x)
        assert len(fused_calls) == 1
        with blocks.published_formulation():
            reference = run(layer, x)
        assert len(fused_calls) == 1
        for what in fused:
            assert_close(fused[what], reference[what], F64, what)
        fused_calls.clear()


@pytest.mark.parametrize("network", ["harmonic", "pfnet"])
def test_block_example_runs(network):
    """The example swaps one import, loads a checkpoint strictly and agrees with the published formulation."""
    root = pathlib.Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "examples/published_blocks.py", network], cwd=root, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    checks = [line for line in result.stdout.splitlines() if line.startswith("CHECK ")]
    assert len(checks) == 3 and all(line.endswith(" OK") for line in checks), result.stdout
    assert result.stdout.rstrip().endswith("all checks passed")
