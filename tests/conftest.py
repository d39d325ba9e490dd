import pytest
import torch

from tests.common import CUDA_KERNELS, CUDA_KERNELS_VARIABLE  # absolute: tests/test_skip_summary.py runs a copy of this file

# The reason every CUDA case is skipped with on a machine without a GPU; the summary counts the skips by it.
NO_GPU = "needs a CUDA device"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=NO_GPU)
    for item in items:
        if "needs_cuda" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    # One line that says what the "s" in the progress are, so that a run without a GPU does not look incomplete.
    cuda = sum(1 for report in terminalreporter.stats.get("skipped", []) if NO_GPU in str(report.longrepr))
    if cuda:
        terminalreporter.write_line(
            f"{cuda} CUDA cases skipped: no CUDA device here (torch.cuda.is_available() is False); "
            "the same tests run them on a machine with a GPU"
        )


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
