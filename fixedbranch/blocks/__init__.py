"""The published fixed-filter blocks as drop-ins: swap one import, load the published checkpoint unchanged.

Each class has the published class's constructor, parameters, buffers and state_dict keys (same names, shapes,
dtypes and initial values, drawn in the same order from the same generators), so that
``load_state_dict(published.state_dict(), strict=True)`` works both ways and a model keeps its results:

- :class:`Harm2d`: harmonic networks (Ulicny, Krylov and Dahyot; ``harmonic/modules.py``), a DCT bank on every
  channel, then BatchNorm and a 1x1 convolution (``use_bn=True``), or the bank folded into the weights.
- :class:`PredefinedFilterModule`: pre-defined filter networks (Linse, Barth and Martinetz; ``models/PFNet.py``),
  edge filters, BatchNorm, ReLU, a 1x1 convolution and BatchNorm.
- :class:`WTConv2d`: wavelet convolutions (Finder et al., ECCV 2024; ``wtconv/wtconv2d.py``), depthwise convolutions
  in a multi-level Haar or Daubechies wavelet domain.

Where the fused operators can express a call (every filter of the bank on every channel, "same" padding, no
dilation, fixed filters), the fixed stage runs as one :func:`fixedbranch.fixed_branch` (and the inverse wavelet
transform as one :func:`fixedbranch.fixed_branch_transpose`), taking its filters from the published parameter
itself; every other call runs the published formulation, with the same results. Each class's docstring says which
calls are fused; within ``with fixedbranch.blocks.published_formulation():`` every call runs the published
formulation (the benchmarks' baseline).
"""

from ._common import published_formulation
from .harmonic import Harm2d
from .predefined import ParameterizedFilterMode, PredefinedFilterModule
from .wavelet import WTConv2d

__all__ = ["Harm2d", "ParameterizedFilterMode", "PredefinedFilterModule", "WTConv2d", "published_formulation"]
