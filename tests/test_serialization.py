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
    return fb.FixedBranchConv2d(3, 4, 3, bank=BANK, padding=1, filter_padding_mode="reflect", stop_gradient=(2,),
                                **kwargs)


def _same_outputs(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    assert torch.equal(a(x), b(x))


def test_state_dict_keys_are_nn_conv2d_keys():
    layer = _layer()
    assert list(layer.state_dict()) == list(nn.Conv2d(3, 4, 3).state_dict()) == ["weight", "bias"]
    assert list(_layer(bias=False).state_dict()) == ["weight"]
    assert list(fb.FixedBranch(BANK).state_dict()) == []


def test_published_conv_state_dict_loads_strict():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    layer = _layer()
    result = layer.load_state_dict(conv.state_dict(), strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert torch.equal(layer.weight, conv.weight) and torch.equal(layer.bias, conv.bias)
    assert torch.equal(layer.bank, BANK.float())  # the layer keeps its own bank


def _saved(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("kind", ["FixedBranchConv2d", "FixedBranch"])
def test_checkpoint_records_its_bank_and_refuses_another(kind):
    def make(bank):
        if kind == "FixedBranch":
            return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), fb.FixedBranch(bank))
        return nn.Sequential(fb.FixedBranchConv2d(3, 4, 3, bank=bank, padding=1))

    torch.manual_seed(0)
    model = make(BANK)
    state = _saved(model.state_dict())  # through torch.save and torch.load(weights_only=True)
    same = make(BANK)
    same.load_state_dict(state, strict=True)
    assert torch.equal(same[0].weight, model[0].weight)
    # A checkpoint of the half model still matches the float model built with its bank.
    same.load_state_dict(copy.deepcopy(model).half().state_dict(), strict=True)
    others = {
        "other values": fb.filters.bank("sobel_x", "sobel_y", fb.filters.gaussian(5, 2.0)),
        "other shape": fb.filters.bank("sobel_x", "sobel_y"),
    }
    for case, bank in others.items():
        other = make(bank)
        before = other[-1].weight.detach().clone() if kind == "FixedBranchConv2d" else None
        for strict in (True, False):
            with pytest.raises(RuntimeError, match=f"fixedbranch.{kind}: the checkpoint's bank") as info:
                other.load_state_dict(state, strict=strict)
            assert ("shape" in str(info.value)) == (case == "other shape"), str(info.value)
            assert "'" + str(len(model) - 1) + "'" in str(info.value)  # names the module in the checkpoint
        if before is not None:
            assert torch.equal(other[-1].weight, before), case  # weights of another bank are not loaded


def test_state_dict_round_trip_with_nn_conv2d():
    layer, x = _layer(), torch.randn(2, 3, 9, 8)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    conv.load_state_dict(layer.state_dict())  # a plain conv takes the checkpoint's convolution
    assert_close(layer(x), reference.fixed_branch(conv(x), BANK, "reflect"), torch.float32, "from conv weights")

    other = fb.FixedBranchConv2d(3, 4, 3, bank=BANK, padding=1, filter_padding_mode="reflect", stop_gradient=(2,))
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
    layer = fb.FixedBranchConv2d.from_conv2d(conv, bank=BANK, filter_padding_mode="replicate")
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


def test_positional_arguments_are_nn_conv2d_arguments():
    import inspect

    params = inspect.signature(fb.FixedBranchConv2d).parameters
    conv_params = list(inspect.signature(nn.Conv2d).parameters)
    assert list(params)[:len(conv_params)] == conv_params
    assert all(params[name].kind == inspect.Parameter.KEYWORD_ONLY for name in list(params)[len(conv_params):])
    assert params["bank"].default is inspect.Parameter.empty
    # The same positional call builds the same convolution.
    args = (4, 8, 3, 2, 1, 2, 2, False, "reflect")
    layer, conv = fb.FixedBranchConv2d(*args, bank=BANK), nn.Conv2d(*args)
    for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                 "padding_mode"):
        assert getattr(layer, name) == getattr(conv, name), name
    assert layer.bias is None
    with pytest.raises(TypeError):
        fb.FixedBranchConv2d(4, 8, 3, BANK)  # the bank is keyword-only
    from_conv = inspect.signature(fb.FixedBranchConv2d.from_conv2d).parameters
    assert from_conv["bank"].kind == inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize("identity", [True, False])
def test_out_channels_total_is_the_output_width(identity):
    layer = fb.FixedBranchConv2d(3, 8, 3, padding=1, bank=BANK, identity=identity)
    out = layer(torch.randn(2, 3, 9, 8))
    assert layer.out_channels == 8  # nn.Conv2d's meaning: the convolution's output
    assert layer.num_branches == 3 + identity
    assert layer.out_channels_total == out.shape[1] == 8 * layer.num_branches
    nn.BatchNorm2d(layer.out_channels_total)(out)  # what the next layer takes
    assert f"out_channels_total={out.shape[1]}" in repr(layer)
