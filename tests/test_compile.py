"""torch.compile of models that use fixedbranch: whole graphs, eager-equal results, dynamic shapes, CUDA graphs."""

import pytest
import torch
import torch._dynamo.testing
from torch import nn

import fixedbranch as fb

from .common import assert_close, cpu_and_cuda


# Output options of the fused layers (identity, order, stride) one at a time and together.
OPTIONS = {
    "default": {},
    "no-identity": dict(identity=False),
    "channel-order": dict(order="channel"),
    "stride-2": dict(stride=2),
    "combined": dict(identity=False, order="channel", stride=(2, 1)),
}


class Net(nn.Module):
    """An ordinary conv, the fused conv + branches, more branches (with a stopped one), pooling and a classifier.

    ``options`` go to both fused layers (``stride`` as the conv layer's ``filter_stride``)."""

    def __init__(self, options=None):
        super().__init__()
        options = dict(options or {})
        stride = options.pop("stride", 1)
        identity = options.get("identity", True)
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.edges = fb.FixedBranchConv2d(4, 4, 3, bank=fb.filters.bank("sobel_x", "sobel_y", "laplacian4"), padding=1,
                                          filter_padding_mode="reflect", filter_stride=stride, **options)
        self.blur = fb.FixedBranch(fb.filters.bank(fb.filters.gaussian(5, 1.0), "laplacian8"), "replicate",
                                   stop_gradient=(1,), stride=stride, **options)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4 * (3 + identity) * (2 + identity), 5)

    def forward(self, x):
        y = self.edges(torch.relu(self.stem(x)))
        return self.head(self.pool(self.blur(y)).flatten(1))


def _make(device, memory_format=torch.contiguous_format, options=None):
    torch.manual_seed(0)
    return Net(options).to(device=device, memory_format=memory_format)


def _grads(model, x, out):
    """Gradients of a fixed random projection of out, for x and every parameter."""
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.device)
    params = [x, *model.parameters()]
    return torch.autograd.grad(out, params, g)


def _check_against_eager(model, compiled, x):
    x = x.requires_grad_()
    out, expected = compiled(x), model(x)
    assert_close(out, expected, torch.float32, "forward")
    got, want = _grads(model, x, out), _grads(model, x, expected)
    assert_close(got[0], want[0], torch.float32, "input gradient")
    # Parameter gradients are sums over batch and image, which a compiled graph may add up in another order than
    # the eager kernels (inductor's own reduction for a bias gradient against cuDNN's): 1e-4, not 1e-5.
    for name, a, b in zip(dict(model.named_parameters()), got[1:], want[1:]):
        scale = b.abs().max().item()
        assert (a - b).abs().max().item() <= 1e-4 * scale, f"gradient of {name}"


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_larger_model_fullgraph_matches_eager_with_dynamic_shapes(options, device):
    # aot_eager traces the forward and backward graphs exactly as inductor receives them and runs them with the
    # eager kernels. Batch, height and width are all free (odd and even, so a stride's rounding shows): one
    # compilation serves every shape.
    model = _make(device, options=options)
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    for shape in ((2, 3, 12, 10), (3, 3, 9, 15), (4, 3, 20, 7)):
        x = torch.randn(shape, device=device)
        for dim in (0, 2, 3):
            torch._dynamo.mark_dynamic(x, dim)
        _check_against_eager(model, compiled, x)
    assert counter.frame_count == 1
    assert not torch._dynamo.utils.counters["graph_break"]


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_inductor_matches_eager_with_dynamic_batch(device):
    # The fused layers alone: inductor calls the operators as extern kernels and asserts that each output's sizes
    # and strides are what the fake kernel said; channels_last makes that check the memory format too. (Pointwise
    # and pooling layers around them would add C++ kernel builds of several seconds each and test inductor, not
    # fixedbranch; the larger model runs through inductor in the CUDA graph test.) The batch is dynamic; the
    # spatial sizes are not, because inductor's lowering of convolution_backward specialises them (a model of
    # nn.Conv2d alone recompiles for each image size there too).
    torch.manual_seed(0)
    model = nn.Sequential(
        fb.FixedBranchConv2d(3, 4, 3, padding=1, bank=fb.filters.bank("sobel_x", "sobel_y"),
                             filter_padding_mode="reflect"),
        fb.FixedBranch(fb.filters.bank("laplacian8", "scharr_x"), "replicate", stop_gradient=(1,)),
    ).to(device=device, dtype=torch.float32, memory_format=torch.channels_last)
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    for batch in (2, 3, 5):
        x = torch.randn(batch, 3, 12, 10, device=device).contiguous(memory_format=torch.channels_last)
        torch._dynamo.mark_dynamic(x, 0)
        _check_against_eager(model, compiled, x)
    assert counter.frame_count == 1
    assert not torch._dynamo.utils.counters["graph_break"]


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_inductor_with_output_options(device):
    # Inductor checks each extern kernel's output strides against the fake kernel's: channel order and strides must
    # keep y's memory format in both, with and without the identity, for a 13x11 image (odd: rounded strided sizes).
    torch.manual_seed(0)
    model = nn.Sequential(
        fb.FixedBranchConv2d(3, 4, 3, padding=1, bank=fb.filters.bank("sobel_x", "sobel_y"),
                             filter_padding_mode="reflect",
                             identity=False, order="channel", filter_stride=2),
        fb.FixedBranch(fb.filters.bank("laplacian8", "scharr_x"), "replicate", stop_gradient=(1,), order="channel",
                       stride=(1, 2)),
    ).to(device=device, dtype=torch.float32, memory_format=torch.channels_last)
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    for batch in (2, 3):
        x = torch.randn(batch, 3, 13, 11, device=device).contiguous(memory_format=torch.channels_last)
        torch._dynamo.mark_dynamic(x, 0)
        _check_against_eager(model, compiled, x)
    assert counter.frame_count == 1
    assert not torch._dynamo.utils.counters["graph_break"]


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_functional_ops_compile_fullgraph(options):
    y = torch.randn(2, 3, 9, 8, dtype=torch.float64, requires_grad=True)
    bank = fb.filters.bank("sobel_x", "scharr_y")
    conv_options = {("filter_stride" if k == "stride" else k): v for k, v in options.items()}

    def branches(y, x, w):
        return (fb.fixed_branch(y, bank, "circular", (2,), **options),
                fb.fixed_branch_conv2d(x, w, None, bank, padding=1, **conv_options))

    x = torch.randn(2, 3, 9, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    compiled = torch.compile(branches, backend="aot_eager", fullgraph=True)
    got, want = compiled(y, x, w), branches(y, x, w)
    for a, b in zip(got, want):
        assert_close(a, b, torch.float64, "forward")
    g = [torch.randn_like(t) for t in want]
    # materialize_grads: the compiled graph returns zeros where eager autograd returns None.
    for a, b in zip(torch.autograd.grad(got, (y, x, w), g, materialize_grads=True),
                    torch.autograd.grad(want, (y, x, w), g, materialize_grads=True)):
        assert_close(a, b, torch.float64, "backward")


@pytest.mark.needs_cuda
@pytest.mark.usefixtures("cuda_kernels")  # under both CUDA kernel generations
@pytest.mark.parametrize("options", [OPTIONS["default"], OPTIONS["combined"]], ids=["default", "combined"])
def test_cuda_graphs_reduce_overhead(options):
    # CUDA graphs replay the captured kernels: a kernel launched on the wrong stream, or one that allocates outside
    # the caching allocator, fails the capture or gives stale results on replay. Four steps: warm-up, recording,
    # then replays, forward and backward.
    model = _make("cuda", options=options)
    compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    for step in range(4):
        torch.compiler.cudagraph_mark_step_begin()
        _check_against_eager(model, compiled, torch.randn(4, 3, 16, 16, device="cuda"))
