import pytest
import torch

from .common import CUDA_KERNELS, CUDA_KERNELS_VARIABLE


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "needs_cuda" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config):
    # cuDNN's TF32 convolutions round float32 to 10 mantissa bits, 1e-4 apart from the float64 truth; the
    # equivalence tests hold float32 to 1e-5, so the convolution must run in full float32.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def pytest_generate_tests(metafunc):
    # A test that uses the `cuda_kernels` fixture (directly or through usefixtures) runs once per generation.
    if "cuda_kernels" in metafunc.fixturenames:
        metafunc.parametrize("cuda_kernels", CUDA_KERNELS, indirect=True)


@pytest.fixture
def cuda_kernels(request, monkeypatch):
    """The CUDA kernel generation of this test run, set for the duration of the test."""
    monkeypatch.setenv(CUDA_KERNELS_VARIABLE, request.param)
    return request.param


@pytest.fixture(autouse=True)
def _cuda_kernels_marker(request, monkeypatch):
    # pytest.mark.cuda_kernels("next") on a parameter (cpu_and_cuda) selects that generation for its test.
    marker = request.node.get_closest_marker("cuda_kernels")
    if marker is not None:
        monkeypatch.setenv(CUDA_KERNELS_VARIABLE, marker.args[0])
