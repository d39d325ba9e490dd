"""torch.export keeps the fused operators; torch.onnx.export lowers them to standard ONNX operators."""

import onnx
import onnxruntime
import pytest
import torch
from torch import nn

import fixedbranch as fb
from fixedbranch import reference

from .common import PADDING_MODES, assert_close

# Every padding mode, an even non-square filter (asymmetric "same" padding) and a partial stop set.
ONNX_PAD_MODES = {"constant", "reflect", "edge", "wrap"}


class AllModes(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.stem = fb.FixedBranchConv2d(3, 4, 3, fb.filters.bank("sobel_x", "laplacian4"), padding=1)
        self.branches = nn.ModuleList([
            fb.FixedBranch(torch.randn(2, 4, 3, generator=g), "reflect"),
            fb.FixedBranch(fb.filters.bank("scharr_y", "prewitt_x"), "replicate", stop_gradient=(1,)),
            fb.FixedBranch(fb.filters.gaussian(5, 1.2)[None], "circular"),
        ])

    def forward(self, x):
        y = self.stem(x)
        return torch.cat([branch(y) for branch in self.branches], 1)


def _model():
    torch.manual_seed(0)
    return AllModes().eval()


def _fixedbranch_nodes(ep: torch.export.ExportedProgram) -> list[str]:
    return [str(n.target) for n in ep.graph.nodes if n.op == "call_function" and "fixedbranch" in str(n.target)]


def _run_onnx(path, x: torch.Tensor) -> torch.Tensor:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return torch.from_numpy(out)


def _check_standard_onnx(path, pad_modes=ONNX_PAD_MODES) -> None:
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    domains = {node.domain for node in model.graph.node} | {f.domain for f in model.functions}
    assert domains <= {"", "ai.onnx"}, f"custom-domain nodes: {domains}"
    ops = {node.op_type for node in model.graph.node}
    assert {"Pad", "Conv", "Concat"} <= ops
    modes = {a.s.decode() for n in model.graph.node if n.op_type == "Pad" for a in n.attribute if a.name == "mode"}
    assert modes == pad_modes


# ---------------------------------------------------------------------------------------------------- export


def test_exporting_to_onnx_is_false_outside_onnx_export():
    assert not fb.export.exporting_to_onnx()
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(fb.export.exporting_to_onnx())
            return x + 1

    torch.export.export(Probe(), (torch.ones(2),))
    assert seen == [False]


def test_torch_export_keeps_fused_ops_and_lowers_on_request(tmp_path):
    model = _model()
    x = torch.randn(2, 3, 12, 10)
    dims = {"x": {0: torch.export.Dim("batch"), 2: torch.export.Dim("h", min=5), 3: torch.export.Dim("w", min=5)}}
    ep = torch.export.export(model, (x,), dynamic_shapes=dims)
    assert "fixedbranch.fixed_branch_conv2d.default" in _fixedbranch_nodes(ep)
    for shape in ((2, 3, 12, 10), (3, 3, 7, 16)):
        x2 = torch.randn(shape)
        assert_close(ep.module()(x2), model(x2), torch.float32, f"exported {shape}")

    # The program serialises: the operators are recorded by name and found again at load time.
    torch.export.save(ep, tmp_path / "model.pt2")
    loaded = torch.export.load(tmp_path / "model.pt2")
    assert_close(loaded.module()(x), model(x), torch.float32, "loaded")

    # decompositions() lowers an existing program to core ATen, which then exports to standard ONNX.
    lowered = ep.run_decompositions(fb.export.decompositions())
    assert _fixedbranch_nodes(lowered) == []
    assert_close(lowered.module()(x), model(x), torch.float32, "lowered")
    torch.onnx.export(lowered, f=tmp_path / "lowered.onnx")
    # Here circular padding is written as slices and a concatenation (a decomposition must be functional).
    _check_standard_onnx(tmp_path / "lowered.onnx", ONNX_PAD_MODES - {"wrap"})
    x2 = torch.randn(1, 3, 9, 13)
    assert_close(_run_onnx(tmp_path / "lowered.onnx", x2), model(x2), torch.float32, "lowered onnx")


# ------------------------------------------------------------------------------------------------------ onnx


def test_onnx_export_out_of_the_box(tmp_path):
    model = _model()
    x = torch.randn(2, 3, 12, 10)
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (x,), f=path, dynamic_shapes=({0: "batch", 2: "height", 3: "width"},))
    _check_standard_onnx(path)
    for shape in ((2, 3, 12, 10), (1, 3, 9, 13), (4, 3, 16, 6)):
        x2 = torch.randn(shape)
        assert_close(_run_onnx(path, x2), model(x2), torch.float32, f"onnxruntime {shape}")


# ------------------------------------------------------------------------------------------- decompositions


@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize("stop", [(), (0, 1, 2), (2,)])
def test_standard_op_formulation_matches_reference(padding_mode, stop):
    g = torch.Generator().manual_seed(1)
    bank = torch.randn(2, 4, 3, generator=g, dtype=torch.float64)
    y = torch.randn(2, 3, 7, 6, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 3, 1, 1, generator=g, dtype=torch.float64, requires_grad=True)
    cases = [
        (fb.export.fixed_branch(y, bank, padding_mode, stop), reference.fixed_branch(y, bank, padding_mode, stop)),
        (fb.export.fixed_branch_conv2d(y, w, None, bank, padding_mode=padding_mode, stop_gradient=stop),
         reference.fixed_branch_conv2d(y, w, None, bank, padding_mode=padding_mode, stop_gradient=stop)),
    ]
    for got, want in cases:
        assert_close(got, want, torch.float64, "forward")
        grad = torch.randn(want.shape, generator=g, dtype=torch.float64)
        if want.requires_grad:
            for a, b in zip(torch.autograd.grad(got, (y, w), grad, allow_unused=True, materialize_grads=True),
                            torch.autograd.grad(want, (y, w), grad, allow_unused=True, materialize_grads=True)):
                assert_close(a, b, torch.float64, "gradient")
        else:
            assert not got.requires_grad


def test_decompositions_table_combines_with_the_core_aten_defaults():
    layer = fb.FixedBranchConv2d(3, 4, 3, fb.filters.bank("sobel_x"), padding=1, filter_padding_mode="reflect")
    x = torch.randn(2, 3, 8, 8)
    table = torch.export.default_decompositions()
    table.update(fb.export.decompositions())
    lowered = torch.export.export(layer, (x,)).run_decompositions(table)
    assert _fixedbranch_nodes(lowered) == []
    assert_close(lowered.module()(x), layer(x), torch.float32, "core ATen")
