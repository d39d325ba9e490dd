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
        self.stem = fb.FixedBranchConv2d(3, 4, 3, bank=fb.filters.bank("sobel_x", "laplacian4"), padding=1)
        self.branches = nn.ModuleList([
            fb.FixedBranch(torch.randn(2, 4, 3, generator=g), "reflect"),
            fb.FixedBranch(fb.filters.bank("scharr_y", "prewitt_x"), "replicate", stop_gradient=(1,)),
            fb.FixedBranch(fb.filters.gaussian(5, 1.2)[None], "circular"),
        ])

    def forward(self, x):
        y = self.stem(x)
        return torch.cat([branch(y) for branch in self.branches], 1)


class WithOptions(nn.Module):
    """The fused layers with the output options: a strided stem, then branches in channel order."""

    def __init__(self, identity, order, stride):
        super().__init__()
        opts = dict(identity=identity, order=order)
        self.stem = fb.FixedBranchConv2d(3, 4, 3, bank=fb.filters.bank("sobel_x", "laplacian4"), padding=1,
                                         filter_padding_mode="replicate", filter_stride=stride, **opts)
        self.branches = nn.ModuleList([
            fb.FixedBranch(fb.filters.bank("scharr_y", torch.randn(2, 3, generator=torch.Generator().manual_seed(0))),
                           "reflect", stop_gradient=(2,), stride=stride, **opts),
            fb.FixedBranch(fb.filters.gaussian(5, 1.2)[None], "circular", stride=stride, **opts),
        ])

    def forward(self, x):
        y = self.stem(x)
        return torch.cat([branch(y) for branch in self.branches], 1)


# identity, order, stride: each option alone, and all together.
OPTIONS = {
    "no-identity": (False, "branch", 1),
    "channel-order": (True, "channel", 1),
    "stride-2": (True, "branch", 2),
    "combined": (False, "channel", (2, 1)),
}


def _model(options=None):
    torch.manual_seed(0)
    return (AllModes() if options is None else WithOptions(*options)).eval()


def _fixedbranch_nodes(ep: torch.export.ExportedProgram) -> list[str]:
    return [str(n.target) for n in ep.graph.nodes if n.op == "call_function" and "fixedbranch" in str(n.target)]


def _run_onnx(path, x: torch.Tensor) -> torch.Tensor:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return torch.from_numpy(out)


def _check_standard_onnx(path, pad_modes=ONNX_PAD_MODES, conv_strides=None) -> None:
    """Standard operators only, the expected padding modes, and (given) the strides of the branch convolutions."""
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    domains = {node.domain for node in model.graph.node} | {f.domain for f in model.functions}
    assert domains <= {"", "ai.onnx"}, f"custom-domain nodes: {domains}"
    ops = {node.op_type for node in model.graph.node}
    assert {"Pad", "Conv", "Concat"} <= ops
    modes = {a.s.decode() for n in model.graph.node if n.op_type == "Pad" for a in n.attribute if a.name == "mode"}
    assert modes == pad_modes
    if conv_strides is not None:
        strides = {tuple(a.ints) for n in model.graph.node if n.op_type == "Conv" for a in n.attribute
                   if a.name == "strides"}
        assert conv_strides <= strides | {(1, 1)}, f"Conv strides {strides}, expected {conv_strides}"


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


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_onnx_export_with_output_options(options, tmp_path):
    identity, order, stride = options
    model = _model(options)
    x = torch.randn(2, 3, 12, 10)
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (x,), f=path, dynamic_shapes=({0: "batch", 2: "height", 3: "width"},))
    pair = (stride, stride) if isinstance(stride, int) else stride
    _check_standard_onnx(path, {"edge", "reflect", "wrap"}, conv_strides={pair})
    if identity and pair != (1, 1):  # the strided identity is a Slice with steps
        assert "Slice" in {node.op_type for node in onnx.load(str(path)).graph.node}
    for shape in ((2, 3, 12, 10), (1, 3, 9, 13)):  # odd sizes: the strided sizes round
        x2 = torch.randn(shape)
        assert_close(_run_onnx(path, x2), model(x2), torch.float32, f"onnxruntime {shape}")


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_torch_export_and_lowering_with_output_options(options, tmp_path):
    model = _model(options)
    x = torch.randn(2, 3, 12, 10)
    dims = {"x": {0: torch.export.Dim("batch"), 2: torch.export.Dim("h", min=6), 3: torch.export.Dim("w", min=6)}}
    ep = torch.export.export(model, (x,), dynamic_shapes=dims)
    assert _fixedbranch_nodes(ep) == ["fixedbranch.fixed_branch_conv2d.default", "fixedbranch.fixed_branch.default",
                                      "fixedbranch.fixed_branch.default"]
    lowered = ep.run_decompositions(fb.export.decompositions())
    assert _fixedbranch_nodes(lowered) == []
    for shape in ((2, 3, 12, 10), (3, 3, 7, 11)):
        x2 = torch.randn(shape)
        assert_close(ep.module()(x2), model(x2), torch.float32, f"exported {shape}")
        assert_close(lowered.module()(x2), model(x2), torch.float32, f"lowered {shape}")
    torch.onnx.export(lowered, f=tmp_path / "lowered.onnx")
    _check_standard_onnx(tmp_path / "lowered.onnx", {"edge", "reflect"})
    x2 = torch.randn(1, 3, 9, 13)
    assert_close(_run_onnx(tmp_path / "lowered.onnx", x2), model(x2), torch.float32, "lowered onnx")


# ------------------------------------------------------------------------------------------- decompositions


@pytest.mark.parametrize("options", [(True, "branch", 1), *OPTIONS.values(), (True, "channel", (1, 3))],
                         ids=["default", *OPTIONS.keys(), "identity-channel-stride-1x3"])
@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize("stop", ["none", "all", "one"])
def test_standard_op_formulation_matches_reference(stop, padding_mode, options):
    identity, order, stride = options
    stop = {"none": (), "all": (0, 1, 2) if identity else (1, 2), "one": (2,)}[stop]
    opts = dict(identity=identity, order=order)
    g = torch.Generator().manual_seed(1)
    bank = torch.randn(2, 4, 3, generator=g, dtype=torch.float64)
    y = torch.randn(2, 3, 7, 6, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 3, 1, 1, generator=g, dtype=torch.float64, requires_grad=True)
    conv = dict(padding_mode=padding_mode, stop_gradient=stop, filter_stride=stride, **opts)
    cases = [
        (fb.export.fixed_branch(y, bank, padding_mode, stop, stride=stride, **opts),
         reference.fixed_branch(y, bank, padding_mode, stop, stride=stride, **opts)),
        (fb.export.fixed_branch_conv2d(y, w, None, bank, **conv),
         reference.fixed_branch_conv2d(y, w, None, bank, **conv)),
    ]
    # The decompositions (functional circular padding) compute the same.
    lowered = fb.export.decompositions()
    decomposed = lowered[torch.ops.fixedbranch.fixed_branch.default]
    cases.append((decomposed(y, bank, padding_mode, list(stop), identity, order, stride),
                  reference.fixed_branch(y, bank, padding_mode, stop, stride=stride, **opts)))
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
    layer = fb.FixedBranchConv2d(3, 4, 3, bank=fb.filters.bank("sobel_x"), padding=1, filter_padding_mode="reflect")
    x = torch.randn(2, 3, 8, 8)
    table = torch.export.default_decompositions()
    table.update(fb.export.decompositions())
    lowered = torch.export.export(layer, (x,)).run_decompositions(table)
    assert _fixedbranch_nodes(lowered) == []
    assert_close(lowered.module()(x), layer(x), torch.float32, "core ATen")


def test_readme_onnx_example_keeps_the_batch_dynamic(tmp_path, monkeypatch):
    import pathlib
    import re
    import textwrap

    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = [textwrap.dedent(b) for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "torch.onnx.export" in b]
    assert len(blocks) == 1, "README.md lost its ONNX export example"
    monkeypatch.chdir(tmp_path)
    namespace = {"torch": torch, "fb": fb}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    model = namespace["model"].eval()
    for batch in (1, 5):  # neither is the example input's 2
        x = torch.randn(batch, 3, 32, 32)
        assert_close(_run_onnx(tmp_path / "model.onnx", x), model(x), torch.float32, f"onnxruntime batch {batch}")
