import pytest
import torch


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
