"""State dicts, pickling, copies and dtype/device moves of the modules, and FixedBranchConv2d.from_conv2d."""

import copy
import io

import pytest
import torch
from torch import nn

import fixedbranch as fb
from fixedbranch import reference

from .common import assert_close, cpu_and_cuda

BANK = fb.filters.bank("sobel_x", "sobel_y", fb.filters.gaussian(5, 1.0))


def _layer(**kwargs):
    torch.manual_seed(0)
    return fb.FixedBranchConv2d(3, 4, 3, BANK, padding=1, filter_padding_mode="reflect", stop_gradient=(2,),
                                **kwargs)


def _same_outputs(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    assert torch.equal(a(x), b(x))


def test_state_dict_keys_are_nn_conv2d_keys():
    layer = _layer()
    assert list(layer.state_dict()) == list(nn.Conv2d(3, 4, 3).state_dict()) == ["weight", "bias"]
    assert list(_layer(bias=False).state_dict()) == ["weight"]
    assert list(fb.FixedBranch(BANK).state_dict()) == []


def test_state_dict_round_trip_with_nn_conv2d():
    layer, x = _layer(), torch.randn(2, 3, 9, 8)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    conv.load_state_dict(layer.state_dict())
    assert_close(layer(x), reference.fixed_branch(conv(x), BANK, "reflect"), torch.float32, "from conv weights")

    other = fb.FixedBranchConv2d(3, 4, 3, BANK, padding=1, filter_padding_mode="reflect", stop_gradient=(2,))
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    other.load_state_dict(torch.load(buffer, weights_only=True))
    _same_outputs(layer, other, x)


def test_whole_model_save_load(tmp_path):
    model = nn.Sequential(_layer(), nn.ReLU(), fb.FixedBranch(BANK[:1], "circular", stop_gradient=(0,)))
    x = torch.randn(2, 3, 9, 8)
    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    _same_outputs(model, loaded, x)
    assert loaded[0].filter_padding_mode == "reflect" and loaded[0].stop_gradient == (2,)
    assert loaded[2].padding_mode == "circular" and loaded[2].stop_gradient == (0,)
    assert torch.equal(loaded[0].bank, model[0].bank) and torch.equal(loaded[2].bank, model[2].bank)
    assert repr(loaded) == repr(model)


def test_deepcopy_is_independent():
    layer = _layer()
    twin = copy.deepcopy(layer)
    x = torch.randn(1, 3, 8, 8)
    _same_outputs(layer, twin, x)
    assert twin.bank.data_ptr() != layer.bank.data_ptr() and twin.weight.data_ptr() != layer.weight.data_ptr()
    with torch.no_grad():
        twin.weight.add_(1)
        twin.bank.mul_(2)
    assert not torch.equal(layer(x), twin(x))
    assert torch.equal(layer.bank, _layer().bank)


@pytest.mark.parametrize("convert,dtype", [
    (lambda m: m.half(), torch.float16),
    (lambda m: m.bfloat16(), torch.bfloat16),
    (lambda m: m.double(), torch.float64),
    (lambda m: m.to(torch.float16), torch.float16),
    (lambda m: m.to(dtype=torch.float64), torch.float64),
])
def test_dtype_conversion_moves_weights_and_bank(convert, dtype):
    layer = convert(_layer())
    branches = convert(fb.FixedBranch(BANK.float()))
    assert layer.weight.dtype == layer.bias.dtype == layer.bank.dtype == branches.bank.dtype == dtype
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    out = layer(x.to(dtype))
    assert out.dtype == dtype
    # Half types: compared in float64 with the bank rounded to the half type (what the layer now holds).
    expected = reference.fixed_branch_conv2d(x.to(dtype).double(), layer.weight.double(), layer.bias.double(),
                                             layer.bank.double(), padding=1, padding_mode="reflect")
    assert_close(out, expected, dtype, "converted layer")
    assert branches(x.to(dtype)).dtype == dtype


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_device_moves_the_bank(device):
    layer = _layer().to(device)
    branches = fb.FixedBranch(BANK).to(device)
    assert layer.weight.device.type == layer.bank.device.type == branches.bank.device.type == device
    x = torch.randn(2, 3, 9, 8, device=device)
    assert_close(layer(x), _layer()(x.cpu()), torch.float32, "moved layer")
    # The meta device: shapes only, as used to build large models before materialising them.
    meta = _layer().to("meta")
    assert meta.bank.is_meta and meta(torch.empty(2, 3, 9, 8, device="meta")).shape == (2, 16, 9, 8)


def test_module_constructed_on_a_device_and_dtype():
    layer = _layer(device="meta", dtype=torch.float64)
    assert layer.weight.is_meta and layer.bank.is_meta and layer.bank.dtype == torch.float64


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("conv_kwargs", [
    dict(padding=1),
    dict(stride=2, padding=2, dilation=2),
    dict(groups=3, padding="same"),
    dict(padding=1, padding_mode="reflect"),
    dict(padding="valid"),
])
def test_from_conv2d_matches_conv_then_reference(bias, conv_kwargs):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 6, 3, bias=bias, **conv_kwargs)
    layer = fb.FixedBranchConv2d.from_conv2d(conv, BANK, filter_padding_mode="replicate")
    assert layer.weight.data_ptr() != conv.weight.data_ptr()
    assert (layer.stride, layer.padding, layer.dilation, layer.groups, layer.padding_mode) == (
        conv.stride, conv.padding, conv.dilation, conv.groups, conv.padding_mode)
    x = torch.randn(2, 3, 11, 10, requires_grad=True)
    out = layer(x)
    expected = reference.fixed_branch(conv(x), BANK, "replicate")
    assert_close(out, expected, torch.float32, "forward")
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (x, layer.weight), g), torch.autograd.grad(expected, (x, conv.weight), g)):
        assert_close(a, b, torch.float32, "backward")
