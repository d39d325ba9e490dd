"""fixed_branch_transpose, the adjoint of fixed_branch: against the reference, the adjoint identity
<fixed_branch(y), z> = <y, fixed_branch_transpose(z)>, its gradients, the module, compile/export/ONNX/AMP and bad input.

Random cases take their options (padding mode, identity, order, stride) from a fixed enumeration, so every
combination is checked, and draw the rest (sizes, bank, dtype, layout) from a seeded generator.
"""

import itertools
import random

import pytest
import torch

import fixedbranch as fb
from fixedbranch import reference

from .common import (
    DTYPES,
    INPUT_LAYOUTS,
    ORDERS,
    PADDING_MODES,
    STRIDES,
    TOLERANCE,
    assert_close,
    cpu_and_cuda,
    pair,
    to_layout,
)

_ops = torch.ops.fixedbranch
OPTIONS = list(itertools.product(PADDING_MODES, (True, False), ORDERS, STRIDES))


def _random_case(seed: int) -> dict:
    rnd = random.Random(seed)
    mode, identity, order, stride = OPTIONS[seed % len(OPTIONS)]
    s1, s2 = rnd.choice([(1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (4, 3), (1, 5), (6, 6), (6, 2), (3, 7)])
    # Reflect needs the image larger than the padding, circular at least as large.
    lo_h = {"reflect": s1 // 2 + 1, "circular": max(1, s1 // 2)}.get(mode, 1)
    lo_w = {"reflect": s2 // 2 + 1, "circular": max(1, s2 // 2)}.get(mode, 1)
    return dict(
        n=rnd.randint(1, 3),
        c=rnd.choice([1, 2, 3, 5, 8]),
        h=rnd.randint(lo_h, lo_h + 12),
        w=rnd.randint(lo_w, lo_w + 16),
        k=rnd.randint(1, 6),
        s=(s1, s2),
        mode=mode,
        identity=identity,
        order=order,
        stride=stride,
        dtype=rnd.choice(DTYPES),
        layout=rnd.choice(INPUT_LAYOUTS),
    )


def _z_shape(case: dict) -> tuple[int, ...]:
    s_h, s_w = pair(case["stride"])
    branches = case["k"] + case["identity"]
    return (case["n"], branches * case["c"], (case["h"] - 1) // s_h + 1, (case["w"] - 1) // s_w + 1)


def _options(case: dict) -> dict:
    return dict(identity=case["identity"], order=case["order"], stride=case["stride"])


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("seed", range(2 * len(OPTIONS)))
def test_transpose_matches_reference(seed, device):
    case = _random_case(seed)
    gen = torch.Generator().manual_seed(seed)
    dtype = case["dtype"]
    bank = torch.randn(case["k"], *case["s"], generator=gen, dtype=torch.float64).to(device)
    z = to_layout(torch.randn(_z_shape(case), generator=gen, dtype=torch.float64).to(dtype).to(device), case["layout"])
    size = (case["h"], case["w"])

    y = fb.fixed_branch_transpose(z, bank, case["mode"], output_size=size, **_options(case))
    # The reference in float64 on what the fused op computes with: z, and the bank rounded to z's dtype.
    expected = reference.fixed_branch_transpose(z.double(), bank.to(dtype).double(), case["mode"],
                                                output_size=size, **_options(case))
    assert y.dtype == dtype and y.device == z.device and y.shape == (case["n"], case["c"], *size)
    assert_close(y, expected, dtype, f"transpose {case}")
    if case["layout"] == "channels_last" and case["c"] > 1:
        assert y.is_contiguous(memory_format=torch.channels_last)
    if case["layout"] == "contiguous":
        assert y.is_contiguous()
    # The raw operator computes the same, bit for bit.
    raw = _ops.fixed_branch_transpose(z, bank, case["mode"], case["identity"], case["order"],
                                      list(pair(case["stride"])), list(size))
    assert torch.equal(raw, y)


@pytest.mark.parametrize("seed", range(0, 2 * len(OPTIONS), 7))
def test_reference_transpose_is_the_reference_backward(seed):
    """The reference's own check: its transpose is autograd's vector-Jacobian product of the reference forward."""
    case = _random_case(seed)
    gen = torch.Generator().manual_seed(seed)
    bank = torch.randn(case["k"], *case["s"], generator=gen, dtype=torch.float64)
    y = torch.randn(case["n"], case["c"], case["h"], case["w"], generator=gen, dtype=torch.float64,
                    requires_grad=True)
    out = reference.fixed_branch(y, bank, case["mode"], (), **_options(case))
    z = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    (vjp,) = torch.autograd.grad(out, y, z)
    transposed = reference.fixed_branch_transpose(z, bank, case["mode"], output_size=(case["h"], case["w"]),
                                                  **_options(case))
    assert_close(transposed, vjp, torch.float64, f"{case}")


def _adjoint_gap(device, dtype, mode, identity, order, stride, size, filter_size, seed):
    """|<A y, z> - <y, A^T z>| and the scale it is relative to, A = fixed_branch, both from the fused kernels."""
    gen = torch.Generator().manual_seed(seed)
    bank = torch.randn(3, *filter_size, generator=gen, dtype=torch.float64).to(device)
    y = torch.randn(2, 3, *size, generator=gen, dtype=torch.float64).to(dtype).to(device)
    opts = dict(identity=identity, order=order, stride=stride)
    ay = fb.fixed_branch(y, bank, mode, **opts)
    z = torch.randn(ay.shape, generator=gen, dtype=torch.float64).to(dtype).to(device)
    atz = fb.fixed_branch_transpose(z, bank, mode, output_size=size, **opts)
    left = (ay.double() * z.double()).sum().item()
    right = (y.double() * atz.double()).sum().item()
    # Each side is a sum of products rounded to the dtype: the error is relative to the sum of their magnitudes.
    scale = max((ay.double() * z.double()).abs().sum().item(), (y.double() * atz.double()).abs().sum().item())
    return abs(left - right), scale


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("stride", STRIDES, ids=str)
@pytest.mark.parametrize("mode", PADDING_MODES)
def test_adjoint_identity(mode, stride, dtype, device):
    """<fixed_branch(y), z> = <y, fixed_branch_transpose(z)> with every option, on odd and even filters and sizes."""
    for i, (identity, order) in enumerate(itertools.product((True, False), ORDERS)):
        for size, filter_size in (((9, 11), (3, 3)), ((8, 7), (4, 2)), ((6, 6), (5, 4))):
            gap, scale = _adjoint_gap(device, dtype, mode, identity, order, stride, size, filter_size, seed=i)
            assert gap <= TOLERANCE[dtype] * scale, (identity, order, size, filter_size, gap, scale)


def test_default_output_size_is_z_size_at_stride_1():
    z = torch.randn(2, 9, 5, 7)
    bank = fb.filters.bank("sobel_x", "laplacian4")
    assert torch.equal(fb.fixed_branch_transpose(z, bank), fb.fixed_branch_transpose(z, bank, output_size=(5, 7)))
    assert fb.fixed_branch_transpose(z, bank).shape == (2, 3, 5, 7)


def test_empty_batch():
    z = torch.randn(0, 6, 4, 4)
    y = fb.fixed_branch_transpose(z, fb.filters.bank("sobel_x", "sobel_y"), stride=2, output_size=(8, 7))
    assert y.shape == (0, 2, 8, 7)


def test_is_what_the_forward_backward_computes():
    """fixed_branch's gradient with nothing stopped is the transpose, bit for bit (the same kernel)."""
    gen = torch.Generator().manual_seed(3)
    bank = torch.randn(4, 3, 5, generator=gen)
    y = torch.randn(2, 3, 10, 9, generator=gen, requires_grad=True)
    out = fb.fixed_branch(y, bank, "reflect", identity=False, order="channel", stride=(2, 3))
    z = torch.randn(out.shape, generator=gen)
    (grad,) = torch.autograd.grad(out, y, z)
    t = fb.fixed_branch_transpose(z, bank, "reflect", identity=False, order="channel", stride=(2, 3),
                                  output_size=(10, 9))
    assert torch.equal(grad, t)


# ------------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("mode", PADDING_MODES)
def test_gradient_is_fixed_branch(mode, device):
    gen = torch.Generator().manual_seed(PADDING_MODES.index(mode))
    bank = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64).to(device)
    opts = dict(identity=True, order="channel", stride=(2, 1))
    z = torch.randn(2, 9, 4, 7, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    y = fb.fixed_branch_transpose(z, bank, mode, output_size=(8, 7), **opts)
    g = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(device)
    (grad_z,) = torch.autograd.grad(y, z, g)
    assert torch.equal(grad_z, fb.fixed_branch(g, bank, mode, **opts))


GRADCHECK_CASES = [
    ("zeros", True, "branch", 1, (6, 5)),
    ("reflect", False, "channel", 2, (7, 6)),
    ("replicate", True, "channel", (1, 3), (5, 7)),
    ("circular", False, "branch", (2, 1), (6, 5)),
]


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=lambda c: c[0])
def test_gradcheck_and_gradgradcheck(case, device):
    mode, identity, order, stride, size = case
    gen = torch.Generator().manual_seed(5)
    bank = torch.randn(2, 3, 2, generator=gen, dtype=torch.float64).to(device)
    s_h, s_w = pair(stride)
    z_shape = (2, (2 + identity) * 2, (size[0] - 1) // s_h + 1, (size[1] - 1) // s_w + 1)
    z = torch.randn(z_shape, generator=gen, dtype=torch.float64).to(device).requires_grad_()

    def transpose(z):
        return fb.fixed_branch_transpose(z, bank, mode, identity, order, stride, size)

    assert torch.autograd.gradcheck(transpose, (z,))
    assert torch.autograd.gradgradcheck(transpose, (z,))


def _opcheck_samples(device):
    gen = torch.Generator().manual_seed(0)
    bank = torch.randn(2, 3, 3, generator=gen).to(device)
    z = torch.randn(2, 9, 6, 5, generator=gen).to(device)
    z_strided = torch.randn(1, 4, 3, 3, generator=gen, dtype=torch.float64).to(device)
    return [
        (z.requires_grad_(), bank, "reflect", True, "branch", [1, 1], None),
        (to_layout(z.detach(), "channels_last"), bank, "zeros", True, "channel", [1, 1], [6, 5]),
        (z_strided.requires_grad_(), bank.double(), "circular", False, "channel", [2, 2], [6, 5]),
        (z_strided.detach(), bank.double(), "replicate", False, "branch", [2, 3], [5, 7]),
    ]


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("index", range(4))
def test_opcheck(index, device):
    torch.library.opcheck(_ops.fixed_branch_transpose.default, _opcheck_samples(device)[index])


# ------------------------------------------------------------------------------------------------- module


def test_module_matches_function_and_has_no_state():
    bank = fb.filters.wavelet("db2", synthesis=True)
    layer = fb.FixedBranchTranspose(bank, "circular", identity=False, order="channel", stride=2)
    assert list(layer.parameters()) == [] and layer.state_dict() == {}
    assert torch.equal(layer.bank, bank) and layer.num_branches == 4
    z = torch.randn(2, 12, 5, 6, dtype=torch.float64)
    expected = fb.fixed_branch_transpose(z, bank, "circular", False, "channel", 2, (10, 12))
    assert torch.equal(layer(z, output_size=(10, 12)), expected)
    assert "identity=False" in repr(layer) and "stride=(2, 2)" in repr(layer)
    half = layer.float()
    assert half.bank.dtype == torch.float32


def test_module_checks_options_at_construction():
    with pytest.raises(ValueError, match="fixedbranch.FixedBranchTranspose: expected padding_mode to be one of"):
        fb.FixedBranchTranspose(fb.filters.bank("sobel_x"), "mirror")
    with pytest.raises(ValueError, match="fixedbranch.FixedBranchTranspose: expected order to be"):
        fb.FixedBranchTranspose(fb.filters.bank("sobel_x"), order="rows")


# ------------------------------------------------------------------------------------- compile, export, ONNX, AMP


class _AnalysisSynthesis(torch.nn.Module):
    """A strided analysis bank, a pointwise op, and its synthesis bank back to the input size."""

    def __init__(self, mode="reflect", identity=True, order="branch", stride=2):
        super().__init__()
        opts = dict(identity=identity, order=order, stride=stride)
        bank = fb.filters.bank("sobel_x", "laplacian4", torch.randn(4, 2, generator=torch.Generator().manual_seed(0)))
        self.analysis = fb.FixedBranch(bank, mode, **opts)
        self.synthesis = fb.FixedBranchTranspose(bank, mode, **opts)

    def forward(self, x):
        return self.synthesis(torch.tanh(self.analysis(x)), output_size=x.shape[2:])


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dynamic", [False, True])
def test_compile_fullgraph(dynamic, device):
    model = _AnalysisSynthesis().to(device)
    x = torch.randn(2, 3, 11, 10, device=device, requires_grad=True)
    compiled = torch.compile(model, fullgraph=True, dynamic=dynamic, backend="aot_eager")
    out, expected = compiled(x), model(x)
    assert_close(out, expected, torch.float32, "compiled forward")
    g = torch.randn_like(out)
    assert_close(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(expected, x, g)[0], torch.float32, "grad")


def test_export_keeps_the_operator_and_decomposes_exactly():
    model = _AnalysisSynthesis("circular", identity=False, order="channel").eval()
    x = torch.randn(2, 3, 12, 10)
    ep = torch.export.export(model, (x,))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert "fixedbranch.fixed_branch_transpose.default" in targets
    assert_close(ep.module()(x), model(x), torch.float32, "exported")
    lowered = ep.run_decompositions(fb.export.decompositions())
    assert not any("fixedbranch" in str(n.target) for n in lowered.graph.nodes)
    assert_close(lowered.module()(x), model(x), torch.float32, "decomposed")


@pytest.mark.parametrize(
    "options", [("zeros", True, "branch", 1), ("reflect", False, "channel", 2), ("replicate", True, "channel", (2, 1)),
                ("circular", False, "branch", (1, 2))], ids=lambda o: o[0],
)
def test_onnx_lowering(options, tmp_path):
    onnx, onnxruntime = pytest.importorskip("onnx"), pytest.importorskip("onnxruntime")
    mode, identity, order, stride = options
    model = _AnalysisSynthesis(mode, identity, order, stride).eval()
    x = torch.randn(2, 3, 12, 9)
    path = tmp_path / "transpose.onnx"
    torch.onnx.export(model, (x,), dynamo=True).save(str(path))
    graph = onnx.load(str(path))
    assert "ConvTranspose" in {node.op_type for node in graph.graph.node}
    assert all(node.domain in ("", "ai.onnx") for node in graph.graph.node)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert_close(torch.from_numpy(out), model(x), torch.float32, "onnxruntime")


def test_onnx_lowering_matches_reference_every_option():
    """The standard-operator lowering itself, in float64, over every option (the export test covers a few)."""
    for seed in range(0, 2 * len(OPTIONS), 3):
        case = _random_case(seed)
        gen = torch.Generator().manual_seed(seed)
        bank = torch.randn(case["k"], *case["s"], generator=gen, dtype=torch.float64)
        z = torch.randn(_z_shape(case), generator=gen, dtype=torch.float64)
        size = (case["h"], case["w"])
        lowered = fb.export.fixed_branch_transpose(z, bank, case["mode"], output_size=size, **_options(case))
        expected = reference.fixed_branch_transpose(z, bank, case["mode"], output_size=size, **_options(case))
        assert_close(lowered, expected, torch.float64, f"{case}")


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16), ids=str)
def test_autocast_takes_the_autocast_dtype(dtype, device):
    bank = fb.filters.wavelet("db2", synthesis=True)
    z = torch.randn(2, 8, 6, 5, device=device, requires_grad=True)
    with torch.autocast(device, dtype=dtype):
        y = fb.fixed_branch_transpose(z, bank.to(device), "circular", False, "channel", 2, (12, 10))
    assert y.dtype == dtype
    expected = reference.fixed_branch_transpose(z.detach().to(dtype).double(), bank.to(dtype).double().to(device),
                                                "circular", False, "channel", 2, (12, 10))
    assert_close(y, expected, dtype, "autocast")
    y.float().sum().backward()
    assert z.grad.dtype == torch.float32


# ------------------------------------------------------------------------------------------------- bad input

Z = torch.randn(2, 9, 4, 4)
BANK = fb.filters.bank("sobel_x", "sobel_y").float()  # K = 2: 3 branches with the identity

# (case, arguments after z and bank as the public function takes them, words of the message)
BAD = [
    ("z rank", dict(z=Z[0]), ["z", "4 dimensions", "got 3"]),
    ("z dtype", dict(z=Z.int()), ["z", "float32", ("torch.int32", "Int")]),
    ("bank rank", dict(bank=BANK[0]), ["bank", "3 dimensions", "got 2"]),
    ("empty bank", dict(bank=BANK[:0]), ["non-empty bank"]),
    ("bank device", dict(bank=BANK.to("meta")), ["bank", "same device", "meta"]),
    ("channels", dict(z=Z[:, :8]), ["z's 8 channels", "multiple of the 3 branches"]),
    ("channels without identity", dict(identity=False), ["z's 9 channels", "multiple of the 2 branches"]),
    ("stride without output_size", dict(stride=2), ["output_size", "required", "stride"]),
    ("output_size mismatch", dict(stride=2, output_size=(9, 8)), ["z is 4x4", "output_size (9, 8)", "5x4"]),
    ("output_size mismatch at stride 1", dict(output_size=(5, 4)), ["z is 4x4", "output_size (5, 4)"]),
    ("negative output_size", dict(output_size=(-1, 4)), ["output_size", "non-negative"]),
    ("padding mode", dict(padding_mode="mirror"), ["padding_mode", "'zeros'", "'mirror'"]),
    ("order", dict(order="rows"), ["order", "'rows'"]),
    ("stride zero", dict(stride=0), ["stride", ">= 1"]),
    ("reflect too large", dict(bank=torch.randn(1, 9, 9), z=Z[:, :2], padding_mode="reflect"),
     ["padding_mode='reflect'", "image (output_size) is 4x4"]),
    ("circular too large", dict(bank=torch.randn(1, 11, 3), z=Z[:, :2], padding_mode="circular"),
     ["padding_mode='circular'", "wrap", "4x4 image (output_size)"]),
]


def _public_and_raw(args: dict):
    z, bank = args.pop("z", Z), args.pop("bank", BANK)
    opts = dict(padding_mode="zeros", identity=True, order="branch", stride=1, output_size=None)
    opts.update(args)
    stride = list(pair(opts["stride"]))
    size = None if opts["output_size"] is None else list(opts["output_size"])
    public = lambda: fb.fixed_branch_transpose(z, bank, **opts)  # noqa: E731
    raw = lambda: _ops.fixed_branch_transpose(z, bank, opts["padding_mode"], opts["identity"],  # noqa: E731
                                              opts["order"], stride, size)
    return public, raw


def _assert_message(error: BaseException, words) -> None:
    message = str(error)
    assert message.startswith("fixedbranch.fixed_branch_transpose: "), message
    for word in words:
        alternatives = word if isinstance(word, tuple) else (word,)
        assert any(a in message for a in alternatives), (word, message)


@pytest.mark.parametrize("case", BAD, ids=lambda c: c[0])
def test_bad_input_public_and_raw_alike(case):
    _, args, words = case
    public, raw = _public_and_raw(dict(args))
    with pytest.raises(ValueError) as from_public:
        public()
    with pytest.raises(ValueError) as from_raw:
        raw()
    _assert_message(from_public.value, words)
    assert str(from_public.value) == str(from_raw.value)


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: fb.fixed_branch_transpose(Z.numpy(), BANK), ["z", "torch.Tensor", "ndarray"]),
        (lambda: fb.fixed_branch_transpose(Z, BANK.tolist()), ["bank", "torch.Tensor", "list"]),
        (lambda: fb.fixed_branch_transpose(Z, BANK, stride=2, output_size=8), ["output_size", "pair of ints"]),
        (lambda: fb.fixed_branch_transpose(Z, BANK, stride="2"), ["stride", "pair of ints"]),
    ],
)
def test_python_types(call, words):
    with pytest.raises(TypeError) as error:
        call()
    _assert_message(error.value, words)


def test_bank_that_requires_grad():
    with pytest.raises(ValueError) as error:
        fb.fixed_branch_transpose(Z, BANK.clone().requires_grad_())
    _assert_message(error.value, ["bank requires grad"])
