"""Fixed filters for the branches, and :func:`bank`, which stacks them into a ``(K, S1, S2)`` bank.

Conventions, shared by every constructor:

- Filters are applied as **cross-correlation** (as ``F.conv2d`` and OpenCV's ``cv2.filter2D`` do) with "same"
  output size; the centre of an (S1, S2) filter is the tap at ((S1 - 1) // 2, (S2 - 1) // 2) (docs/design.md).
- Row index = y, column index = x. An ``_x`` derivative responds positively to intensity that increases
  with the column index.
- Every constructor takes keyword-only ``dtype`` (a floating-point dtype, default ``torch.float64``) and
  ``device``. Values are computed in float64 on the CPU and converted once, so a float32 filter is the
  float64 one rounded.
- Sampled filters (:func:`gaussian`, :func:`log`, :func:`gabor`) use the centred grid ``i - (size - 1) / 2``:
  for odd sizes the centre is a pixel, for even sizes it falls between the two middle pixels.

Needs only torch; :func:`wavelet` also needs PyWavelets, the source of its coefficients.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "sobel_x",
    "sobel_y",
    "scharr_x",
    "scharr_y",
    "prewitt_x",
    "prewitt_y",
    "laplacian4",
    "laplacian8",
    "gaussian",
    "log",
    "gabor",
    "dct",
    "lbcnn",
    "wavelet",
    "bank",
]

_SOBEL_X = [[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]
_SCHARR_X = [[-3.0, 0.0, 3.0], [-10.0, 0.0, 10.0], [-3.0, 0.0, 3.0]]
_PREWITT_X = [[-1.0, 0.0, 1.0], [-1.0, 0.0, 1.0], [-1.0, 0.0, 1.0]]
_LAPLACIAN4 = [[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]
_LAPLACIAN8 = [[1.0, 1.0, 1.0], [1.0, -8.0, 1.0], [1.0, 1.0, 1.0]]


# --------------------------------------------------------------------------------------------------- checks


# Every message starts with `fn`, the public constructor's fully qualified name ("fixedbranch.filters.gaussian").


def _check_dtype(fn: str, dtype: torch.dtype) -> None:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"{fn}: expected dtype to be a floating-point torch.dtype, got {dtype!r}")


def _check_int(fn: str, name: str, value: int, minimum: int = 1) -> int:
    # __index__ admits numpy and 0-d torch integers; bool is an int but never a size.
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        raise TypeError(f"{fn}: expected {name} to be an integer, got {type(value).__name__}")
    value = value.__index__()
    if value < minimum:
        raise ValueError(f"{fn}: expected {name} to be an integer >= {minimum}, got {value}")
    return value


def _check_float(fn: str, name: str, value: float, positive: bool = False) -> float:
    # __float__ admits Python, numpy and 0-d torch numbers, not strings.
    if isinstance(value, bool) or not hasattr(type(value), "__float__"):
        raise TypeError(f"{fn}: expected {name} to be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or (positive and value <= 0):
        raise ValueError(f"{fn}: expected {name} to be a finite number{' > 0' if positive else ''}, got {value}")
    return value


def _out(fn: str, values: torch.Tensor, dtype: torch.dtype, device: torch.device | str | None) -> torch.Tensor:
    _check_dtype(fn, dtype)
    return values.to(dtype=dtype, device=device).contiguous()


def _const(fn: str, rows: list[list[float]], dtype: torch.dtype, device: torch.device | str | None) -> torch.Tensor:
    return _out(fn, torch.tensor(rows, dtype=torch.float64), dtype, device)


def _grid(size: int) -> torch.Tensor:
    """Offsets from the centre, ``i - (size - 1) / 2`` for i = 0 .. size - 1 (half-integers for even sizes)."""
    return torch.arange(size, dtype=torch.float64) - (size - 1) / 2


# ------------------------------------------------------------------------------------------ 3x3 operators


def sobel_x(*, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> torch.Tensor:
    """Sobel derivative along x (columns), unnormalised.

    ``[1, 2, 1]ᵀ ⊗ [-1, 0, 1]``: smoothing down the rows, central difference along the columns. This is the
    kernel of OpenCV's ``cv2.Sobel(img, ddepth, 1, 0, ksize=3)`` (``cv2.getDerivKernels(1, 0, 3)``; Sobel and
    Feldman, 1968).

    Args:
        dtype: floating-point dtype of the result.
        device: device of the result.

    Returns:
        Tensor of shape (3, 3).

    Example:
        >>> sobel_x()
        tensor([[-1.,  0.,  1.],
                [-2.,  0.,  2.],
                [-1.,  0.,  1.]], dtype=torch.float64)
    """
    return _const("fixedbranch.filters.sobel_x", _SOBEL_X, dtype, device)


def sobel_y(*, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> torch.Tensor:
    """Sobel derivative along y (rows), unnormalised: the transpose of :func:`sobel_x`.

    ``[-1, 0, 1]ᵀ ⊗ [1, 2, 1]``, OpenCV's ``cv2.Sobel(img, ddepth, 0, 1, ksize=3)`` kernel.

    Args:
        dtype: floating-point dtype of the result.
        device: device of the result.

    Returns:
        Tensor of shape (3, 3).

    Example:
        >>> sobel_y()
        tensor([[-1., -2., -1.],
                [ 0.,  0.,  0.],
                [ 1.,  2.,  1.]], dtype=torch.float64)
    """
    return _const("fixedbranch.filters.sobel_y", _SOBEL_X, dtype, device).T.contiguous()


def scharr_x(*, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> torch.Tensor:
    """Scharr derivative along x (columns), unnormalised.

    ``[3, 10, 3]ᵀ ⊗ [-1, 0, 1]``, OpenCV's ``cv2.Scharr(img, ddepth, 1, 0)`` kernel (``cv2.getDerivKernels(1, 0,
    cv2.FILTER_SCHARR)``; Scharr, 2000): better rotational symmetry than Sobel.

    Args:
        dtype: floating-point dtype of the result.
        device: device of the result.

    Returns:
        Tensor of shape (3, 3).

    Example:
        >>> scharr_x()
        tensor([[ -3.,   0.,   3.],
                [-10.,   0.,  10.],
                [ -3.,   0.,   3.]], dtype=torch.float64)
    """
    return _const("fixedbranch.filters.scharr_x", _SCHARR_X, dtype, device)


def scharr_y(*, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> torch.Tensor:
    """Scharr derivative along y (rows), unnormalised: the transpose of :func:`scharr_x`.

    Args:
        dtype: floating-point dtype of the result.
        device: device of the result.

    Returns:
        Tensor of shape (3, 3).

    Example:
        >>> scharr_y()
        tensor([[ -3., -10.,  -3.],
                [  0.,   0.,   0.],
                [  3.,  10.,   3.]], dtype=torch.float64)
    """
    return _const("fixedbranch.filters.scharr_y", _SCHARR_X, dtype, device).T.contiguous()


def prewitt_x(*, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> torch.Tensor:
    """Prewitt derivative along x (columns), unnormalised.

    ``[1, 1, 1]ᵀ ⊗ [-1, 0, 1]`` (Prewitt, 1970): box smoothing down the rows, central difference along the columns.

    Args:
        dtype: floating-point dtype of the result.
        device: device of the result.

    Returns:
        Tensor of shape (3, 3).

    Example:
        >>> prewitt_x()
        tensor([[-1.,  0.,  1.],
                [-1.,  0.,  1.],
                [-1.,  0.,  1.]], dtype=torch.float64)
    """
    return _const("fixedbranch.filters.prewitt_x", _PREWITT_X, dtype, device)


def prewitt_y(*, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> torch.Tensor:
    """Prewitt derivative along y (rows), unnormalised: the transpose of :func:`prewitt_x`.

    Args:
        dtype: floating-point dtype of the result.
        device: device of the result.

    Returns:
        Tensor of shape (3, 3).

    Example:
        >>> prewitt_y()
        tensor([[-1., -1., -1.],
                [ 0.,  0.,  0.],
                [ 1.,  1.,  1.]], dtype=torch.float64)
    """
    return _const("fixedbranch.filters.prewitt_y", _PREWITT_X, dtype, device).T.contiguous()


def laplacian4(*, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> torch.Tensor:
    """4-neighbour discrete Laplacian ``∂²/∂x² + ∂²/∂y²``: ``[[0, 1, 0], [1, -4, 1], [0, 1, 0]]``.

    The 5-point stencil; OpenCV's ``cv2.Laplacian(img, ddepth, ksize=1)`` kernel. Sums to 0.

    Args:
        dtype: floating-point dtype of the result.
        device: device of the result.

    Returns:
        Tensor of shape (3, 3).

    Example:
        >>> laplacian4()
        tensor([[ 0.,  1.,  0.],
                [ 1., -4.,  1.],
                [ 0.,  1.,  0.]], dtype=torch.float64)
    """
    return _const("fixedbranch.filters.laplacian4", _LAPLACIAN4, dtype, device)


def laplacian8(*, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> torch.Tensor:
    """8-neighbour discrete Laplacian: ``[[1, 1, 1], [1, -8, 1], [1, 1, 1]]``.

    The 9-point stencil (every neighbour minus 8 × the centre); isotropic to second order along the diagonals
    too. Sums to 0.

    Args:
        dtype: floating-point dtype of the result.
        device: device of the result.

    Returns:
        Tensor of shape (3, 3).

    Example:
        >>> laplacian8()
        tensor([[ 1.,  1.,  1.],
                [ 1., -8.,  1.],
                [ 1.,  1.,  1.]], dtype=torch.float64)
    """
    return _const("fixedbranch.filters.laplacian8", _LAPLACIAN8, dtype, device)


# ------------------------------------------------------------------------------------------ sampled filters


def gaussian(
    size: int, sigma: float, *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
) -> torch.Tensor:
    """Normalised 2-D Gaussian, the outer product of two 1-D Gaussians.

    ``g(i) = exp(-x_i² / (2σ²))`` with ``x_i = i - (size - 1) / 2``, normalised so that ``sum(g) = 1``;
    the result is ``g ⊗ g`` and sums to 1. For odd sizes the 1-D factor is OpenCV's
    ``cv2.getGaussianKernel(size, sigma)`` (``sigma > 0``); OpenCV's even sizes are not on this centred grid
    (its bit-exact kernel supports odd sizes only, opencv#15856).

    Args:
        size: side length, >= 1.
        sigma: standard deviation in pixels, > 0.
        dtype: floating-point dtype of the result.
        device: device of the result.

    Returns:
        Tensor of shape (size, size).

    Raises:
        TypeError: ``size`` is not an integer, ``dtype`` not a floating-point dtype.
        ValueError: ``size`` < 1 or ``sigma`` <= 0.

    Example:
        >>> gaussian(3, 1.0)
        tensor([[0.0751, 0.1238, 0.0751],
                [0.1238, 0.2042, 0.1238],
                [0.0751, 0.1238, 0.0751]], dtype=torch.float64)
    """
    size = _check_int("fixedbranch.filters.gaussian", "size", size)
    sigma = _check_float("fixedbranch.filters.gaussian", "sigma", sigma, positive=True)
    x = _grid(size)
    g = torch.exp(-(x * x) / (2.0 * sigma * sigma))
    g = g / g.sum()
    return _out("fixedbranch.filters.gaussian", torch.outer(g, g), dtype, device)


def log(
    size: int, sigma: float, *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
) -> torch.Tensor:
    """Laplacian of Gaussian (LoG, Marr and Hildreth, 1980), made exactly zero-mean.

    ``k(x, y) = ((x² + y² - 2σ²) / σ⁴) · exp(-(x² + y²) / (2σ²))`` on the centred grid
    ``x = j - (size - 1) / 2``, ``y = i - (size - 1) / 2``, then ``k - mean(k)``. The closed form is
    ``2π σ² ∇²G`` for the unit-mass Gaussian ``G``, i.e. the scale-normalised LoG up to 2π: its centre is
    ``-2/σ²`` before the mean is removed, the sign of :func:`laplacian4`. Truncating the infinite filter
    to the window leaves a small non-zero sum; subtracting the mean removes it, so the filter gives 0 on
    constant images. Symmetric under transposition and flips.

    Args:
        size: side length, >= 1 (``size = 1`` gives ``[[0.]]``, even sizes have no centre pixel).
        sigma: standard deviation in pixels, > 0.
        dtype: floating-point dtype of the result.
        device: device of the result.

    Returns:
        Tensor of shape (size, size), summing to 0 (to rounding).

    Raises:
        TypeError: ``size`` is not an integer, ``dtype`` not a floating-point dtype.
        ValueError: ``size`` < 1 or ``sigma`` <= 0.

    Example:
        >>> log(3, 1.0)
        tensor([[ 0.4918, -0.1147,  0.4918],
                [-0.1147, -1.5082, -0.1147],
                [ 0.4918, -0.1147,  0.4918]], dtype=torch.float64)
    """
    size = _check_int("fixedbranch.filters.log", "size", size)
    sigma = _check_float("fixedbranch.filters.log", "sigma", sigma, positive=True)
    x = _grid(size)
    r2 = x[None, :] ** 2 + x[:, None] ** 2
    s2 = sigma * sigma
    k = (r2 - 2.0 * s2) / (s2 * s2) * torch.exp(-r2 / (2.0 * s2))
    return _out("fixedbranch.filters.log", k - k.mean(), dtype, device)


def gabor(
    size: int,
    sigma: float,
    theta: float,
    lambd: float,
    gamma: float = 0.5,
    psi: float = 0.0,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Real Gabor filter, OpenCV's ``cv2.getGaborKernel`` formula (opencv ``modules/imgproc/src/gabor.cpp``).

    With ``x' = x cos θ + y sin θ`` and ``y' = -x sin θ + y cos θ``::

        k(x, y) = exp(-(x'² + γ² y'²) / (2σ²)) · cos(2π x' / λ + ψ)

    stored as OpenCV stores it, flipped: ``kernel[i, j] = k(c - j, c - i)`` with ``c = (size - 1) / 2``, so that
    correlating with the kernel is convolving with ``k`` (an odd, ``ψ = -π/2``, filter is positive on the left
    and responds negatively to intensity increasing along x, unlike :func:`sobel_x`). For odd
    sizes this is exactly ``cv2.getGaborKernel((size, size), sigma, theta, lambd, gamma, psi)``. For even sizes
    OpenCV returns a (size + 1)-square kernel (it uses ``size // 2`` as the half-width); here the result is
    (size, size) on the centred half-integer grid, like :func:`gaussian` (it equals the even-indexed taps of
    OpenCV's (2·size - 1)-square kernel with ``2σ`` and ``2λ``). Not normalised, not zero-mean (as OpenCV).

    Args:
        size: side length, >= 1.
        sigma: standard deviation of the Gaussian envelope along x', > 0.
        theta: orientation of the normal to the stripes, in radians.
        lambd: wavelength of the carrier, in pixels, > 0.
        gamma: spatial aspect ratio (envelope σ along y' is σ/γ), > 0.
        psi: phase offset, in radians (0: even/cosine filter, -π/2: odd/sine filter).
        dtype: floating-point dtype of the result.
        device: device of the result.

    Returns:
        Tensor of shape (size, size).

    Raises:
        TypeError: ``size`` is not an integer, ``dtype`` not a floating-point dtype.
        ValueError: ``size`` < 1, or ``sigma``, ``lambd`` or ``gamma`` <= 0, or a non-finite angle.

    Example:
        >>> gabor(3, 1.0, 0.0, 8.0)
        tensor([[0.3785, 0.8825, 0.3785],
                [0.4289, 1.0000, 0.4289],
                [0.3785, 0.8825, 0.3785]], dtype=torch.float64)
    """
    size = _check_int("fixedbranch.filters.gabor", "size", size)
    sigma = _check_float("fixedbranch.filters.gabor", "sigma", sigma, positive=True)
    theta = _check_float("fixedbranch.filters.gabor", "theta", theta)
    lambd = _check_float("fixedbranch.filters.gabor", "lambd", lambd, positive=True)
    gamma = _check_float("fixedbranch.filters.gabor", "gamma", gamma, positive=True)
    psi = _check_float("fixedbranch.filters.gabor", "psi", psi)
    # Same operation order as OpenCV, so odd sizes agree with it to the last few ulps.
    c, s = math.cos(theta), math.sin(theta)
    ex = -0.5 / (sigma * sigma)
    sigma_y = sigma / gamma
    ey = -0.5 / (sigma_y * sigma_y)
    cscale = math.pi * 2 / lambd
    offsets = -_grid(size)  # column j holds x = c - j, row i holds y = c - i: OpenCV's kernel(ymax-y, xmax-x)
    x, y = offsets[None, :], offsets[:, None]
    xr = x * c + y * s
    yr = -x * s + y * c
    k = torch.exp(ex * xr * xr + ey * yr * yr) * torch.cos(cscale * xr + psi)
    return _out("fixedbranch.filters.gabor", k, dtype, device)


_DCT_NORMS = ("ortho", "l1")


def _dct_cosines(size: int) -> torch.Tensor:
    """Unnormalised 1-D DCT-II cosines ``cos(π (2i + 1) u / (2N))``, rows = frequency u, columns = position i.

    The angle ``π m / (2N)`` with ``m = (2i + 1) u`` is reduced in integers to the first quadrant before the one
    transcendental call, so the symmetries hold bit for bit: ``C[u, N-1-i] = (-1)^u C[u, i]``, and the taps where
    the cosine vanishes (odd u at the centre of an odd size) are exactly 0 instead of ~6e-17.
    """
    u = torch.arange(size, dtype=torch.int64)[:, None]
    i = torch.arange(size, dtype=torch.int64)[None, :]
    m = ((2 * i + 1) * u) % (4 * size)  # cos has period 4N in m
    m = torch.where(m > 2 * size, 4 * size - m, m)  # cos(2π - a) = cos(a): m in [0, 2N]
    sign = torch.where(m > size, -1.0, 1.0).to(torch.float64)  # cos(π - a) = -cos(a): m in [0, N]
    m = torch.where(m > size, 2 * size - m, m)
    # cos(π m / (2N)) = sin(π (N - m) / (2N)): exact 1 at m = 0, exact 0 at m = N.
    return sign * torch.sin(math.pi * (size - m).to(torch.float64) / (2 * size))


def dct(
    size: int,
    *,
    norm: str = "ortho",
    level: int | None = None,
    dc: bool = True,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """2-D DCT-II basis, the fixed filters of harmonic networks (Ulicny et al., 2019).

    Basis ``(u, v)`` (u the row, vertical, frequency; v the column, horizontal, one) is the outer product of two
    1-D cosines::

        B(u, v)[i, j] = a(u) a(v) cos(π (2i + 1) u / (2N)) cos(π (2j + 1) v / (2N)),   N = size,

    and the filters come in the order ``u * size + v`` (row-major over (u, v)) with those not selected left out.
    ``norm`` fixes the scale:

    - ``"ortho"``: ``a(0) = sqrt(1/N)``, ``a(u > 0) = sqrt(2/N)``, the orthonormal basis. Correlating a patch
      ``P`` with ``B(u, v)`` gives ``scipy.fft.dctn(P, norm="ortho")[u, v]``; the full basis flattened to
      (size², size²) is an orthogonal matrix. (Harmonic networks' ``dct_filters(l1_norm=False)``.)
    - ``"l1"``: each filter divided by its L1 norm, ``sum |B(u, v)| = 1``; the DC filter is ``1/N²``
      everywhere. (Harmonic networks' default, ``dct_filters(l1_norm=True)``.)

    Either way every filter is exactly ``torch.outer(r_u, r_v)`` of two normalised 1-D cosines (the L1 norm of an
    outer product is the product of the L1 norms), so the bank factors into row and column cosines bit for bit.

    Selection, as harmonic networks' ``level`` and ``DC`` arguments: ``level`` keeps only the filters with
    ``u + v < level`` (``level = 1`` keeps the DC filter alone, ``2 * size - 1`` keeps all of them; the count is
    ``level (level + 1) / 2`` for ``level <= size``); ``dc=False`` drops the constant filter ``(0, 0)``.

    Args:
        size: side length N, >= 1 (``size = 1`` is the single filter ``[[1.]]``).
        norm: ``"ortho"`` or ``"l1"``.
        level: ``None`` (all filters) or an integer in ``[1, 2 * size - 1]``: keep ``u + v < level``.
        dc: keep the constant filter (u = v = 0).
        dtype: floating-point dtype of the result.
        device: device of the result.

    Returns:
        Tensor of shape (K, size, size): K = size² with the defaults.

    Raises:
        TypeError: ``size`` or ``level`` is not an integer, ``norm`` not a string, ``dc`` not a bool, ``dtype``
            not a floating-point dtype.
        ValueError: ``size`` < 1, an unknown ``norm``, ``level`` outside ``[1, 2 * size - 1]``, or a selection
            that leaves no filter (``dc=False`` with ``size = 1`` or ``level = 1``).

    Example:
        >>> dct(2)
        tensor([[[ 0.5000,  0.5000],
                 [ 0.5000,  0.5000]],
        <BLANKLINE>
                [[ 0.5000, -0.5000],
                 [ 0.5000, -0.5000]],
        <BLANKLINE>
                [[ 0.5000,  0.5000],
                 [-0.5000, -0.5000]],
        <BLANKLINE>
                [[ 0.5000, -0.5000],
                 [-0.5000,  0.5000]]], dtype=torch.float64)
        >>> dct(3, norm="l1", level=2, dc=False)  # (0, 1) varies along the columns, (1, 0) down the rows
        tensor([[[ 0.1667,  0.0000, -0.1667],
                 [ 0.1667,  0.0000, -0.1667],
                 [ 0.1667,  0.0000, -0.1667]],
        <BLANKLINE>
                [[ 0.1667,  0.1667,  0.1667],
                 [ 0.0000,  0.0000,  0.0000],
                 [-0.1667, -0.1667, -0.1667]]], dtype=torch.float64)
        >>> dct(7, level=3).shape  # u + v < 3: (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0)
        torch.Size([6, 7, 7])
    """
    fn = "fixedbranch.filters.dct"
    size = _check_int(fn, "size", size)
    if not isinstance(norm, str):
        valid = ", ".join(map(repr, _DCT_NORMS))
        raise TypeError(f"{fn}: expected norm to be a string, one of {valid}; got {type(norm).__name__}")
    if norm not in _DCT_NORMS:
        raise ValueError(f"{fn}: expected norm to be one of {', '.join(map(repr, _DCT_NORMS))}, got {norm!r}")
    if level is not None:
        level = _check_int(fn, "level", level, minimum=-(2**63))
        if not 1 <= level <= 2 * size - 1:
            raise ValueError(
                f"{fn}: expected level to be None or an integer in [1, 2 * size - 1] = [1, {2 * size - 1}] for size "
                f"{size} "
                f"(keeps u + v < level), got {level}"
            )
    if not isinstance(dc, bool):
        raise TypeError(f"{fn}: expected dc to be a bool, got {type(dc).__name__}")
    u = torch.arange(size)
    keep = torch.ones(size, size, dtype=torch.bool)
    if level is not None:
        keep &= (u[:, None] + u[None, :]) < level
    if not dc:
        keep[0, 0] = False
    if not keep.any():
        raise ValueError(
            f"{fn}: dc=False with {'size 1' if size == 1 else f'level={level}'} leaves no filter: the constant "
            "filter is "
            "the only one selected"
        )
    cos = _dct_cosines(size)
    if norm == "ortho":
        scale = torch.full((size, 1), math.sqrt(2.0 / size), dtype=torch.float64)
        scale[0] = math.sqrt(1.0 / size)
        rows = cos * scale
    else:
        rows = cos / cos.abs().sum(dim=1, keepdim=True)
    basis = rows[:, None, :, None] * rows[None, :, None, :]  # (u, v, i, j)
    return _out(fn, basis[keep], dtype, device)


def lbcnn(
    n: int,
    size: int,
    sparsity: float = 0.5,
    seed: int = 0,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Random sparse ±1 filters of Local Binary CNNs (Juefei-Xu et al., CVPR 2017).

    ``sparsity`` is LBCNN's ``kSparsity``, the fraction of **non-zero** entries: each filter has exactly
    ``round(sparsity * size²)`` of them (Python's ``round``, half to even: 0.5 on 3×3 gives 4 of 9), at
    positions drawn uniformly without replacement, each ``+1`` or ``-1`` with probability 1/2 (Bernoulli).
    (The original Torch code draws ``floor(kSparsity * numel)`` positions with replacement over the whole
    weight tensor; the per-filter count here is exact.) The draws use a private ``torch.Generator`` seeded
    with ``seed`` on the CPU: the result depends only on the arguments, not on the device, and the global
    RNG is left untouched.

    Args:
        n: number of filters, >= 1.
        size: side length, >= 1.
        sparsity: fraction of non-zero entries, in (0, 1]; must leave at least one non-zero entry.
        seed: seed of the private generator.
        dtype: floating-point dtype of the result.
        device: device of the result.

    Returns:
        Tensor of shape (n, size, size) with values in {-1, 0, 1}.

    Raises:
        TypeError: ``n``, ``size`` or ``seed`` is not an integer, ``dtype`` not a floating-point dtype.
        ValueError: ``n`` < 1, ``size`` < 1, ``sparsity`` outside (0, 1] or rounding to no non-zero entry.

    Example:
        >>> w = lbcnn(8, 3, sparsity=0.5, seed=1)
        >>> w.shape, (w != 0).sum(dim=(1, 2)).tolist()
        (torch.Size([8, 3, 3]), [4, 4, 4, 4, 4, 4, 4, 4])
    """
    fn = "fixedbranch.filters.lbcnn"
    n = _check_int(fn, "n", n)
    size = _check_int(fn, "size", size)
    seed = _check_int(fn, "seed", seed, minimum=-(2**63))
    sparsity = _check_float(fn, "sparsity", sparsity, positive=True)
    if sparsity > 1:
        raise ValueError(f"{fn}: expected sparsity to be a fraction of non-zero entries in (0, 1], got {sparsity}")
    numel = size * size
    nonzero = round(sparsity * numel)
    if nonzero == 0:
        raise ValueError(
            f"{fn}: sparsity={sparsity} of {size}x{size} = {numel} entries rounds to 0 non-zero entries; "
            f"use sparsity >= {0.5 / numel:.3g}"
        )
    gen = torch.Generator(device="cpu").manual_seed(seed)
    positions = torch.stack([torch.randperm(numel, generator=gen)[:nonzero] for _ in range(n)])
    signs = torch.bernoulli(torch.full((n, nonzero), 0.5, dtype=torch.float64), generator=gen) * 2 - 1
    weights = torch.zeros(n, numel, dtype=torch.float64).scatter_(1, positions, signs)
    return _out(fn, weights.reshape(n, size, size), dtype, device)


# --------------------------------------------------------------------------------------------------- wavelets


def wavelet(
    name: str,
    *,
    synthesis: bool = False,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The four filters of one level of a separable 2-D discrete wavelet transform, from PyWavelets' coefficients.

    With ``h = (h_lo, h_hi)`` a pair of 1-D filters of length L, filter ``k`` is the outer product::

        filter[k][i, j] = h[k % 2][i] * h[k // 2][j]      (i the row, j the column)

    so filter 0 is low-pass both ways (``pywt.dwt2``'s approximation ``cA``), filter 1 high-pass down the rows
    (its horizontal detail ``cH``), filter 2 high-pass along the rows (``cV``) and filter 3 both (``cD``). The
    analysis bank has ``h = (dec_lo, dec_hi)`` reversed, because the branches correlate where a filter bank
    convolves; the synthesis bank has ``h = (rec_lo, rec_hi)`` as they are, since the transpose of a correlation
    is a convolution. This is the convention of WTConv's
    ``create_2d_wavelet_filter``, so that, for even image sizes,

    - ``fixed_branch(x, wavelet(name), identity=False, order="channel", stride=2)`` is its wavelet transform
      (channel ``4c + k`` holds subband k of channel c), and
    - ``fixed_branch_transpose(z, wavelet(name, synthesis=True), identity=False, order="channel", stride=2,
      output_size=(H, W))`` its inverse.

    L is even for every discrete wavelet, and the "same" padding's top row count ``(L - 1) // 2 = L // 2 - 1`` is
    exactly the padding WTConv gives ``F.conv2d`` (docs/design.md, "Wavelet banks"). With
    ``padding_mode="circular"`` the transform is periodic and the inverse reconstructs the image exactly (to the
    precision of the coefficients), for orthogonal and biorthogonal wavelets alike.

    Args:
        name: a discrete wavelet PyWavelets knows (``pywt.wavelist(kind="discrete")``): ``"haar"``, ``"db1"`` ..
            ``"db38"``, ``"sym2"`` .., ``"coif1"`` .., ``"bior1.1"`` .., ``"rbio1.1"`` .., ``"dmey"``.
        synthesis: the synthesis (reconstruction) bank instead of the analysis (decomposition) bank.
        dtype: floating-point dtype of the result (the coefficients are PyWavelets' float64 values, rounded once).
        device: device of the result.

    Returns:
        Tensor of shape (4, L, L).

    Raises:
        ImportError: PyWavelets is not installed.
        TypeError: ``name`` is not a string, ``synthesis`` not a bool, ``dtype`` not a floating-point dtype.
        ValueError: ``name`` is not a discrete wavelet (a continuous one such as ``"morl"``, or unknown).

    Example:
        >>> wavelet("haar")
        tensor([[[ 0.5000,  0.5000],
                 [ 0.5000,  0.5000]],
        <BLANKLINE>
                [[ 0.5000,  0.5000],
                 [-0.5000, -0.5000]],
        <BLANKLINE>
                [[ 0.5000, -0.5000],
                 [ 0.5000, -0.5000]],
        <BLANKLINE>
                [[ 0.5000, -0.5000],
                 [-0.5000,  0.5000]]], dtype=torch.float64)
        >>> wavelet("db2", synthesis=True).shape
        torch.Size([4, 4, 4])
    """
    fn = "fixedbranch.filters.wavelet"
    if not isinstance(name, str):
        raise TypeError(f"{fn}: expected name to be a string such as 'db2', got {type(name).__name__}")
    if not isinstance(synthesis, bool):
        raise TypeError(f"{fn}: expected synthesis to be a bool, got {type(synthesis).__name__}")
    _check_dtype(fn, dtype)
    try:
        import pywt
    except ImportError as error:
        raise ImportError(f"{fn}: needs PyWavelets for the coefficients (pip install PyWavelets)") from error
    if name not in pywt.wavelist(kind="discrete"):
        kind = "a continuous wavelet" if name in pywt.wavelist(kind="continuous") else "not a wavelet PyWavelets knows"
        raise ValueError(
            f"{fn}: expected name to be a discrete (orthogonal or biorthogonal) wavelet, e.g. 'haar', 'db2', 'sym4', "
            f"'coif1', 'bior2.2', 'rbio1.3' (pywt.wavelist(kind='discrete')); got {name!r}, {kind}"
        )
    w = pywt.Wavelet(name)
    lo, hi = (w.rec_lo, w.rec_hi) if synthesis else (w.dec_lo[::-1], w.dec_hi[::-1])
    h = torch.tensor([lo, hi], dtype=torch.float64)  # (2, L)
    filters = torch.stack([torch.outer(h[k % 2], h[k // 2]) for k in range(4)])
    return _out(fn, filters, dtype, device)


# --------------------------------------------------------------------------------------------------- bank

_NAMED = {
    "sobel_x": sobel_x,
    "sobel_y": sobel_y,
    "scharr_x": scharr_x,
    "scharr_y": scharr_y,
    "prewitt_x": prewitt_x,
    "prewitt_y": prewitt_y,
    "laplacian4": laplacian4,
    "laplacian8": laplacian8,
}
"""The zero-argument constructors, by the names :func:`bank` accepts."""


def bank(
    *specs: str | torch.Tensor, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
) -> torch.Tensor:
    """Stack filters into a bank ``(K, S1, S2)``, zero-padding smaller ones, centred, to the largest size.

    Each spec is one of:

    - a name of a zero-argument constructor: ``"sobel_x"``, ``"sobel_y"``, ``"scharr_x"``, ``"scharr_y"``,
      ``"prewitt_x"``, ``"prewitt_y"``, ``"laplacian4"``, ``"laplacian8"`` (one filter);
    - a 2-D tensor ``(s1, s2)`` (one filter);
    - a 3-D tensor ``(k, s1, s2)`` (k filters; k = 0 adds none).

    ``S1`` and ``S2`` are the maxima over the specs. A smaller ``(s1, s2)`` filter is placed at rows
    ``o1 : o1 + s1`` and columns ``o2 : o2 + s2`` with ``o = (S - 1) // 2 - (s - 1) // 2``, so that its
    "same"-padding centre lands on the large one's and ``F.conv2d`` with ``padding="same"`` gives the same
    output with either filter (e.g. 3×3 in 5×5 at ``[1:4, 1:4]``, 2×2 in 3×3 at ``[1:3, 1:3]``). Tensors are
    detached and copied: the bank never shares memory or autograd history with its specs.

    Args:
        *specs: names, 2-D filters or 3-D stacks, in output order.
        dtype: floating-point dtype of the result.
        device: device of the result; by default that of the first tensor spec, else the default device.

    Returns:
        Tensor of shape (K, S1, S2).

    Raises:
        ValueError: no specs, no filters in total, an unknown name (the message lists the valid ones), a
            tensor of rank other than 2 or 3, or an empty filter size.
        TypeError: a spec that is neither a ``str`` nor a tensor, a complex tensor, or a non-floating ``dtype``.

    Example:
        >>> bank("sobel_x", torch.ones(1, 1)).shape
        torch.Size([2, 3, 3])
        >>> bank(torch.ones(1, 1))[0, :, :]
        tensor([[1.]], dtype=torch.float64)
        >>> bank("laplacian4", torch.ones(1, 1))[1]
        tensor([[0., 0., 0.],
                [0., 1., 0.],
                [0., 0., 0.]], dtype=torch.float64)
    """
    fn = "fixedbranch.filters.bank"
    _check_dtype(fn, dtype)
    if not specs:
        raise ValueError(f"{fn}: expected specs to hold at least one filter name, 2-D filter or 3-D stack, got none")
    stacks = []
    for i, spec in enumerate(specs):
        if isinstance(spec, str):
            if spec not in _NAMED:
                raise ValueError(
                    f"{fn}: specs[{i}] is an unknown filter name {spec!r}; valid names: {', '.join(_NAMED)}"
                )
            stack = _NAMED[spec]()[None]
        elif isinstance(spec, torch.Tensor):
            if spec.dim() not in (2, 3):
                raise ValueError(
                    f"{fn}: expected specs[{i}] to be a 2-D filter or a 3-D stack, got {spec.dim()} dimensions"
                )
            if spec.is_complex():
                raise TypeError(f"{fn}: expected specs[{i}] to be a real tensor, got {spec.dtype}")
            stack = spec.detach() if spec.dim() == 3 else spec.detach()[None]
            if stack.shape[1] == 0 or stack.shape[2] == 0:
                raise ValueError(f"{fn}: expected specs[{i}] to have filter sizes >= 1, got {tuple(stack.shape[1:])}")
            if device is None:
                device = spec.device
        else:
            raise TypeError(
                f"{fn}: expected specs[{i}] to be a filter name (str) or a tensor, got {type(spec).__name__}"
            )
        stacks.append(stack)
    k_total = sum(s.shape[0] for s in stacks)
    if k_total == 0:
        raise ValueError(f"{fn}: expected specs to hold at least one filter in total, got 0 (only empty stacks)")
    big1 = max(s.shape[1] for s in stacks)
    big2 = max(s.shape[2] for s in stacks)
    out = torch.zeros(k_total, big1, big2, dtype=dtype, device=device)
    k0 = 0
    for stack in stacks:
        k, s1, s2 = stack.shape
        o1 = (big1 - 1) // 2 - (s1 - 1) // 2
        o2 = (big2 - 1) // 2 - (s2 - 1) // 2
        out[k0 : k0 + k, o1 : o1 + s1, o2 : o2 + s2] = stack.to(dtype=dtype, device=device)
        k0 += k
    return out
