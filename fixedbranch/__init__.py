"""fixedbranch: fused fixed-filter branches for CNNs.

``out = cat([y, F_1*y, ..., F_K*y], 1)`` with ``y = conv2d(x)``: the convolution, every fixed filter of a bank and
the concatenation as one autograd node, forward in one pass over y and backward in one pass over the gradient, in
C++ on the CPU and CUDA on the GPU. :mod:`fixedbranch.reference` is the pure-PyTorch ground truth.
"""

from . import filters, reference

__version__ = "0.1.0"

__all__ = [
    "FixedBranch",
    "FixedBranchConv2d",
    "FixedBranchTranspose",
    "bank_plan",
    "blocks",
    "branch_contributions",
    "filters",
    "fixed_branch",
    "fixed_branch_conv2d",
    "fixed_branch_transpose",
    "reference",
]

try:
    from . import _C  # noqa: F401  (registers torch.ops.fixedbranch before ops.py refers to it)
except ImportError as _exc:
    # filters and reference need only torch and stay importable; every fused name explains how to build.
    _BUILD_ERROR = ImportError(
        f"fixedbranch's compiled extension fixedbranch._C could not be loaded ({_exc}). Build it from the "
        "repository root with `pip install --no-build-isolation -e .` (or run `make test`, which creates .venv "
        "and builds it)."
    )

    def __getattr__(name):
        if name in __all__ or name in ("ops", "modules"):
            raise _BUILD_ERROR
        raise AttributeError(f"module 'fixedbranch' has no attribute '{name}'")

else:
    from .modules import FixedBranch, FixedBranchConv2d, FixedBranchTranspose
    from .ops import branch_contributions, fixed_branch, fixed_branch_conv2d, fixed_branch_transpose
    from .plan import bank_plan
    from . import autocast, blocks, export  # noqa: F401  (autocast kernels; the published blocks; ONNX lowering)
