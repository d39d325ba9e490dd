"""Tests of fixedbranch.filters: exact stencils, OpenCV / SciPy agreement, bank() layout and errors."""

from __future__ import annotations

import doctest
import math

import cv2
import numpy as np
import pytest
import scipy.fft
import torch
import torch.nn.functional as F

from fixedbranch import filters

THREE_BY_THREE = {
    "sobel_x": [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]],
    "sobel_y": [[-1, -2, -1], [0, 0, 0], [1, 2, 1]],
    "scharr_x": [[-3, 0, 3], [-10, 0, 10], [-3, 0, 3]],
    "scharr_y": [[-3, -10, -3], [0, 0, 0], [3, 10, 3]],
    "prewitt_x": [[-1, 0, 1], [-1, 0, 1], [-1, 0, 1]],
    "prewitt_y": [[-1, -1, -1], [0, 0, 0], [1, 1, 1]],
    "laplacian4": [[0, 1, 0], [1, -4, 1], [0, 1, 0]],
    "laplacian8": [[1, 1, 1], [1, -8, 1], [1, 1, 1]],
}


def as_np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def correlate_same(img: np.ndarray, kernel: torch.Tensor) -> np.ndarray:
    """F.conv2d (correlation) of a 2-D image with zero 'same' padding, as docs/design.md pads it."""
    x = torch.from_numpy(img)[None, None]
    return F.conv2d(x, kernel.to(x.dtype)[None, None], padding="same")[0, 0].numpy()


# ------------------------------------------------------------------------------------------------ module


def test_public_names():
    assert sorted(filters.__all__) == sorted(
        [*THREE_BY_THREE, "gaussian", "log", "gabor", "dct", "lbcnn", "wavelet", "bank"]
    )
    assert sorted(filters._NAMED) == sorted(THREE_BY_THREE)
    for name in filters.__all__:
        assert getattr(filters, name).__doc__, name


def test_doctests():
    result = doctest.testmod(filters, optionflags=doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0
    assert result.failed == 0


# ---------------------------------------------------------------------------------------- 3x3 operators


@pytest.mark.parametrize("name", sorted(THREE_BY_THREE))
def test_stencils_exact(name):
    k = getattr(filters, name)()
    assert k.dtype == torch.float64 and k.shape == (3, 3) and k.is_contiguous()
    assert torch.equal(k, torch.tensor(THREE_BY_THREE[name], dtype=torch.float64))


@pytest.mark.parametrize("name", sorted(THREE_BY_THREE))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_stencils_dtype(name, dtype):
    k = getattr(filters, name)(dtype=dtype, device="cpu")
    assert k.dtype == dtype and k.device.type == "cpu"
    assert torch.equal(k.double(), torch.tensor(THREE_BY_THREE[name], dtype=torch.float64))


def test_laplacians_sum_to_zero():
    assert filters.laplacian4().sum() == 0 and filters.laplacian8().sum() == 0


@pytest.mark.parametrize("ksize,name", [(3, "sobel"), (cv2.FILTER_SCHARR, "scharr")])
def test_derivatives_match_opencv_kernels(ksize, name):
    kx, ky = cv2.getDerivKernels(1, 0, ksize, ktype=cv2.CV_64F)
    # getDerivKernels(dx=1, dy=0) gives kx = the derivative along x, ky = the smoothing along y.
    expected_x = np.outer(ky.ravel(), kx.ravel())
    np.testing.assert_array_equal(as_np(getattr(filters, f"{name}_x")()), expected_x)
    np.testing.assert_array_equal(as_np(getattr(filters, f"{name}_y")()), expected_x.T)


def test_derivatives_match_opencv_on_images():
    rng = np.random.default_rng(0)
    img = rng.standard_normal((23, 31))
    border = cv2.BORDER_REFLECT_101
    cases = [
        (filters.sobel_x(), cv2.Sobel(img, cv2.CV_64F, 1, 0, ksize=3, borderType=border)),
        (filters.sobel_y(), cv2.Sobel(img, cv2.CV_64F, 0, 1, ksize=3, borderType=border)),
        (filters.scharr_x(), cv2.Scharr(img, cv2.CV_64F, 1, 0, borderType=border)),
        (filters.scharr_y(), cv2.Scharr(img, cv2.CV_64F, 0, 1, borderType=border)),
        (filters.laplacian4(), cv2.Laplacian(img, cv2.CV_64F, ksize=1, borderType=border)),
    ]
    for kernel, expected in cases:
        # cv2.filter2D is correlation, so our kernel plugs in unchanged ...
        np.testing.assert_allclose(cv2.filter2D(img, cv2.CV_64F, as_np(kernel), borderType=border), expected,
                                   rtol=0, atol=1e-12)
        # ... and so does F.conv2d with reflect "same" padding (PyTorch's reflect = OpenCV's REFLECT_101).
        x = F.pad(torch.from_numpy(img)[None, None], (1, 1, 1, 1), mode="reflect")
        ours = F.conv2d(x, kernel[None, None])[0, 0].numpy()
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-12)


def test_sobel_x_sign_convention():
    ramp = np.tile(np.arange(8, dtype=np.float64), (6, 1))  # increases along columns (+x)
    inner = (slice(1, -1), slice(1, -1))
    assert (correlate_same(ramp, filters.sobel_x())[inner] == 8).all()
    assert (correlate_same(ramp, filters.sobel_y())[inner] == 0).all()
    assert (correlate_same(ramp.T.copy(), filters.sobel_y())[inner] == 8).all()
    assert (correlate_same(ramp, filters.prewitt_x())[inner] == 6).all()
    assert (correlate_same(ramp, filters.scharr_x())[inner] == 32).all()


# ---------------------------------------------------------------------------------------------- gaussian


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 8, 11])
@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.3])
def test_gaussian_closed_form(size, sigma):
    g = filters.gaussian(size, sigma)
    assert g.shape == (size, size) and g.dtype == torch.float64
    assert abs(g.sum().item() - 1) < 1e-14
    x = np.arange(size) - (size - 1) / 2
    g1 = np.exp(-(x**2) / (2 * sigma**2))
    expected = np.outer(g1, g1) / g1.sum() ** 2
    np.testing.assert_allclose(as_np(g), expected, rtol=1e-13, atol=1e-16)
    # Separable and symmetric: rank one, invariant under transposition and both flips.
    assert torch.equal(g, g.T) and torch.allclose(g, g.flip(0), rtol=0, atol=1e-16)
    assert torch.allclose(g, g.flip(1), rtol=0, atol=1e-16)


@pytest.mark.parametrize("size", [1, 3, 5, 7, 9, 15])
@pytest.mark.parametrize("sigma", [0.8, 1.0, 1.7, 3.0])
def test_gaussian_matches_opencv(size, sigma):
    g1 = cv2.getGaussianKernel(size, sigma, ktype=cv2.CV_64F).ravel()
    np.testing.assert_allclose(as_np(filters.gaussian(size, sigma)), np.outer(g1, g1), rtol=0, atol=1e-14)


def test_gaussian_even_size_is_centred_between_pixels():
    g = filters.gaussian(4, 1.0)
    assert torch.allclose(g[1, 1], g[2, 2]) and torch.allclose(g[0, 0], g[3, 3])
    assert g[1:3, 1:3].min() > g[0].max()


def test_gaussian_dtype_device():
    g = filters.gaussian(5, 1.0, dtype=torch.float32, device="cpu")
    assert g.dtype == torch.float32
    assert torch.equal(g, filters.gaussian(5, 1.0).float())


# --------------------------------------------------------------------------------------------------- log


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 9, 10])
@pytest.mark.parametrize("sigma", [0.7, 1.0, 2.0])
def test_log(size, sigma):
    k = filters.log(size, sigma)
    assert k.shape == (size, size) and k.dtype == torch.float64
    assert abs(k.sum().item()) < 1e-12
    assert torch.allclose(k, k.T, rtol=0, atol=1e-15)
    assert torch.allclose(k, k.flip(0), rtol=0, atol=1e-15)
    assert torch.allclose(k, k.flip(1), rtol=0, atol=1e-15)
    # Closed form before the mean is removed.
    x = np.arange(size) - (size - 1) / 2
    r2 = x[None, :] ** 2 + x[:, None] ** 2
    raw = (r2 - 2 * sigma**2) / sigma**4 * np.exp(-r2 / (2 * sigma**2))
    np.testing.assert_allclose(as_np(k), raw - raw.mean(), rtol=0, atol=1e-13)
    if size % 2 == 1 and size >= 3:
        c = size // 2
        assert k[c, c] < 0 and k[c, c] == k.min()


def test_log_constant_image_gives_zero():
    img = np.full((12, 12), 3.5)
    out = correlate_same(img, filters.log(5, 1.2))[2:-2, 2:-2]
    np.testing.assert_allclose(out, 0, atol=1e-12)


# ------------------------------------------------------------------------------------------------- gabor

GABOR_PARAMS = [
    # size, sigma, theta, lambd, gamma, psi
    (3, 1.0, 0.0, 4.0, 0.5, 0.0),
    (5, 1.5, math.pi / 4, 3.0, 0.5, 0.0),
    (7, 2.0, 0.3, 5.0, 1.0, math.pi / 2),
    (9, 2.5, 2.0, 6.0, 0.8, -math.pi / 2),
    (11, 3.0, -1.1, 4.5, 0.3, 1.0),
    (1, 1.0, 0.7, 2.0, 0.5, 0.4),
    (31, 4.0, math.pi, 10.0, 0.5, 0.25),
]


@pytest.mark.parametrize("size,sigma,theta,lambd,gamma,psi", GABOR_PARAMS)
def test_gabor_matches_opencv_odd(size, sigma, theta, lambd, gamma, psi):
    k = filters.gabor(size, sigma, theta, lambd, gamma, psi)
    expected = cv2.getGaborKernel((size, size), sigma, theta, lambd, gamma, psi, ktype=cv2.CV_64F)
    assert k.shape == expected.shape == (size, size)
    np.testing.assert_allclose(as_np(k), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("size", [2, 4, 6, 10])
@pytest.mark.parametrize(
    "sigma,theta,lambd,gamma,psi",
    [(1.0, 0.0, 4.0, 0.5, 0.0), (1.5, 0.9, 3.0, 0.7, 0.6), (2.0, -2.3, 5.5, 1.0, -math.pi / 2)],
)
def test_gabor_matches_opencv_even(size, sigma, theta, lambd, gamma, psi):
    # OpenCV returns (size+1)² for an even size; ours is size² on the half-integer grid x = c - j. Scaling x, σ
    # and λ by 2 leaves the formula unchanged, so our taps are the even-indexed taps of OpenCV's (2·size-1)²
    # kernel with 2σ and 2λ.
    k = filters.gabor(size, sigma, theta, lambd, gamma, psi)
    assert k.shape == (size, size)
    big = cv2.getGaborKernel((2 * size - 1,) * 2, 2 * sigma, theta, 2 * lambd, gamma, psi, ktype=cv2.CV_64F)
    np.testing.assert_allclose(as_np(k), big[::2, ::2], rtol=0, atol=1e-12)


def test_gabor_defaults_and_dtype():
    k = filters.gabor(7, 2.0, 0.5, 4.0, dtype=torch.float32)
    expected = cv2.getGaborKernel((7, 7), 2.0, 0.5, 4.0, 0.5, 0.0, ktype=cv2.CV_64F)
    assert k.dtype == torch.float32
    np.testing.assert_allclose(as_np(k), expected, rtol=0, atol=1e-7)


# --------------------------------------------------------------------------------------------------- dct


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 8])
def test_dct_orthonormal(size):
    b = filters.dct(size)
    assert b.shape == (size * size, size, size) and b.dtype == torch.float64
    flat = b.reshape(size * size, -1)
    eye = torch.eye(size * size, dtype=torch.float64)
    assert torch.allclose(flat @ flat.T, eye, rtol=0, atol=1e-12)
    assert torch.allclose(flat.T @ flat, eye, rtol=0, atol=1e-12)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7, 8])
def test_dct_matches_scipy(size):
    b = as_np(filters.dct(size))
    rng = np.random.default_rng(size)
    x = rng.standard_normal((size, size))
    np.testing.assert_allclose(b.reshape(size * size, -1) @ x.ravel(),
                               scipy.fft.dctn(x, norm="ortho").ravel(), rtol=0, atol=1e-12)
    # Each basis element is the adjoint (= inverse, orthonormal) transform of a delta at (u, v).
    for u in range(size):
        for v in range(size):
            delta = np.zeros((size, size))
            delta[u, v] = 1
            np.testing.assert_allclose(b[u * size + v], scipy.fft.idctn(delta, norm="ortho"), rtol=0, atol=1e-12)


def test_dct_layout():
    b = filters.dct(4)
    assert torch.allclose(b[0], torch.full((4, 4), 0.25, dtype=torch.float64), rtol=0, atol=1e-15)
    # index u*size + v: v varies along columns (j), u along rows (i).
    assert torch.allclose(b[1], b[1][0:1].expand(4, 4), rtol=0, atol=1e-15)  # constant down the rows
    assert torch.allclose(b[4], b[4][:, 0:1].expand(4, 4), rtol=0, atol=1e-15)  # constant along the rows


def dct_matrix(size: int) -> np.ndarray:
    """SciPy's orthonormal 1-D DCT-II matrix D[u, i]: D @ x == scipy.fft.dct(x, norm="ortho")."""
    return scipy.fft.dct(np.eye(size), norm="ortho", axis=0)


def harmonic_dct_filters(k, level=None, dc=True, l1_norm=True, dtype=np.float32):
    """Harmonic networks' ``dct_filters(k, level=, DC=, l1_norm=)`` (harmonic/modules.py), groups = 1, no expand.

    Loops and arithmetic as there, including the filter count from their closed form; ``dtype`` float32 is
    theirs (cosines rounded to float32, then the L1 norm summed in float32), float64 the same steps unrounded.
    """
    if level is None:
        nf = k**2 - int(not dc)
    elif level <= k:
        nf = level * (level + 1) // 2 - int(not dc)
    else:
        r = 2 * k - 1 - level
        nf = k**2 - r * (r + 1) // 2 - int(not dc)
    bank = np.zeros((nf, k, k), dtype=dtype)
    m = 0
    for i in range(k):
        for j in range(k):
            if (not dc and i == 0 and j == 0) or (level is not None and i + j >= level):
                continue
            for x in range(k):
                for y in range(k):
                    bank[m, x, y] = math.cos(math.pi * (x + 0.5) * i / k) * math.cos(math.pi * (y + 0.5) * j / k)
            if l1_norm:
                bank[m] /= np.sum(np.abs(bank[m]))
            else:
                bank[m] *= (2.0 / k) * (1.0 if i > 0 else 1 / math.sqrt(2.0)) * (1.0 if j > 0 else 1 / math.sqrt(2.0))
            m += 1
    assert m == nf
    return bank


def dct_selection(size, level=None, dc=True):
    """(u, v) of the selected filters, in output order."""
    return [
        (u, v)
        for u in range(size)
        for v in range(size)
        if (level is None or u + v < level) and (dc or (u, v) != (0, 0))
    ]


def dct_selections(size):
    """Every valid (level, dc) pair for ``size``: each level, with and without the DC filter, unless nothing is left."""
    for level in [None, *range(1, 2 * size)]:
        for dc in (True, False):
            if dc or (size > 1 and level != 1):
                yield level, dc


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 8])
def test_dct_ortho_is_scipy_basis(size):
    d = dct_matrix(size)
    for level, dc in dct_selections(size):
        b = as_np(filters.dct(size, norm="ortho", level=level, dc=dc))
        expected = np.stack([np.outer(d[u], d[v]) for u, v in dct_selection(size, level, dc)])
        assert b.shape == expected.shape
        np.testing.assert_allclose(b, expected, rtol=0, atol=1e-15, err_msg=f"level={level} dc={dc}")


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6, 7, 8, 11])
def test_dct_l1_independent(size):
    b = filters.dct(size, norm="l1")
    assert b.shape == (size * size, size, size) and b.dtype == torch.float64
    # Straight from the definition: the 2-D cosine product on the pixel grid, divided by the sum of its |taps|.
    i = np.arange(size)[:, None]
    j = np.arange(size)[None, :]
    for u in range(size):
        for v in range(size):
            f = np.cos(np.pi * (2 * i + 1) * u / (2 * size)) * np.cos(np.pi * (2 * j + 1) * v / (2 * size))
            np.testing.assert_allclose(as_np(b[u * size + v]), f / np.abs(f).sum(), rtol=0, atol=1e-15)
    torch.testing.assert_close(
        b.abs().sum(dim=(1, 2)), torch.ones(size * size, dtype=torch.float64), rtol=0, atol=1e-14
    )
    dc_filter = torch.full((size, size), 1.0 / size**2, dtype=torch.float64)
    torch.testing.assert_close(b[0], dc_filter, rtol=1e-15, atol=0)
    # Same directions as the orthonormal basis, only rescaled.
    ortho = filters.dct(size)
    torch.testing.assert_close(ortho / ortho.abs().sum(dim=(1, 2), keepdim=True), b, rtol=0, atol=1e-15)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7])
@pytest.mark.parametrize("norm", ["ortho", "l1"])
def test_dct_matches_harmonic_networks(size, norm):
    # dct_selections leaves out dc=False with size 1 or level 1: theirs gives an empty or a (-1)-filter bank
    # there, ours raises (test_validation).
    for level, dc in dct_selections(size):
        ours = filters.dct(size, norm=norm, level=level, dc=dc)
        exact = harmonic_dct_filters(size, level, dc, l1_norm=norm == "l1", dtype=np.float64)
        np.testing.assert_allclose(as_np(ours), exact, rtol=0, atol=1e-15, err_msg=f"level={level} dc={dc}")
        # Their float32 arithmetic agrees with ours rounded to float32 to the last bits.
        theirs = harmonic_dct_filters(size, level, dc, l1_norm=norm == "l1")
        ours32 = as_np(filters.dct(size, norm=norm, level=level, dc=dc, dtype=torch.float32))
        np.testing.assert_allclose(ours32, theirs, rtol=0, atol=2e-7, err_msg=f"level={level} dc={dc}")


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7])
def test_dct_selection_counts_and_order(size):
    full = filters.dct(size)
    index = {uv: u_v for u_v, uv in enumerate(dct_selection(size))}
    for level, dc in dct_selections(size):
        picked = [index[uv] for uv in dct_selection(size, level, dc)]
        for norm in ("ortho", "l1"):
            b = filters.dct(size, norm=norm, level=level, dc=dc)
            assert torch.equal(b, filters.dct(size, norm=norm)[picked])
        # Closed-form counts (harmonic networks' formula).
        if level is None:
            count = size**2
        elif level <= size:
            count = level * (level + 1) // 2
        else:
            count = size**2 - (2 * size - 1 - level) * (2 * size - level) // 2
        assert b.shape == (count - (not dc), size, size)
    assert torch.equal(filters.dct(size, level=2 * size - 1), full)
    if size > 1:
        assert torch.equal(filters.dct(size, dc=False), full[1:])


def test_dct_selection_spelled_out():
    b = filters.dct(4)
    # u + v < 3 in u*4 + v order: (0,0) (0,1) (0,2) (1,0) (1,1) (2,0).
    assert torch.equal(filters.dct(4, level=3), b[[0, 1, 2, 4, 5, 8]])
    assert torch.equal(filters.dct(4, level=3, dc=False), b[[1, 2, 4, 5, 8]])
    assert torch.equal(filters.dct(4, level=2, dc=False), b[[1, 4]])
    # u + v < 6 drops only (3, 3).
    assert torch.equal(filters.dct(4, level=6), b[:15])
    assert torch.equal(filters.dct(4, level=1), b[:1])


@pytest.mark.parametrize("size", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("norm", ["ortho", "l1"])
def test_dct_exact_structure(size, norm):
    b = filters.dct(size, norm=norm).reshape(size, size, size, size)  # (u, v, i, j)
    for u in range(size):
        for v in range(size):
            f = b[u, v]
            # Exact (anti)symmetry: cos_u(N-1-i) = (-1)^u cos_u(i).
            assert torch.equal(f.flip(0), f * (-1) ** u)
            assert torch.equal(f.flip(1), f * (-1) ** v)
            # Rank one: the outer product of its row and column cosines.
            s = torch.linalg.svdvals(f)
            assert s[1:].abs().max() <= 1e-14 * s[0]
    if size % 2:
        c = size // 2
        # Odd frequencies vanish at the centre tap exactly, not at ~1e-17.
        assert (b[1::2, :, c, :] == 0).all() and (b[:, 1::2, :, c] == 0).all()


@pytest.mark.parametrize("norm", ["ortho", "l1"])
def test_dct_size_one(norm):
    # A 1x1 "basis" is the identity filter: allowed, level 1 is its only level, and it is the DC filter.
    assert torch.equal(filters.dct(1, norm=norm), torch.ones(1, 1, 1, dtype=torch.float64))
    assert torch.equal(filters.dct(1, norm=norm, level=1), torch.ones(1, 1, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"dc=False with size 1 leaves no filter"):
        filters.dct(1, norm=norm, dc=False)
    with pytest.raises(ValueError, match=r"expected level .*\[1, 1\] for size 1"):
        filters.dct(1, level=2)


def test_dct_dtype_device_and_argument_types():
    b32 = filters.dct(5, norm="l1", level=4, dc=False, dtype=torch.float32, device="cpu")
    assert b32.dtype == torch.float32 and b32.is_contiguous()
    assert torch.equal(b32, filters.dct(5, norm="l1", level=4, dc=False).float())
    assert torch.equal(filters.dct(5, level=np.int64(4)), filters.dct(5, level=4))
    assert torch.equal(filters.dct(5, level=torch.tensor(4)), filters.dct(5, level=4))
    with pytest.raises(TypeError):
        filters.dct(3, "l1")  # norm, level and dc are keyword-only


# ------------------------------------------------------------------------------------------------- lbcnn


@pytest.mark.parametrize("n,size,sparsity", [(16, 3, 0.5), (8, 5, 0.1), (4, 3, 1.0), (10, 4, 0.9), (3, 1, 0.6)])
def test_lbcnn_counts_and_values(n, size, sparsity):
    w = filters.lbcnn(n, size, sparsity)
    assert w.shape == (n, size, size) and w.dtype == torch.float64
    assert set(w.unique().tolist()) <= {-1.0, 0.0, 1.0}
    expected = round(sparsity * size * size)
    assert (w != 0).sum(dim=(1, 2)).tolist() == [expected] * n


def test_lbcnn_round_is_pythons():
    # round(0.5 * 9) = round(4.5) = 4 (half to even); round(0.5 * 25) = 12.
    assert (filters.lbcnn(3, 3, 0.5) != 0).sum(dim=(1, 2)).tolist() == [4, 4, 4]
    assert (filters.lbcnn(3, 5, 0.5) != 0).sum(dim=(1, 2)).tolist() == [12, 12, 12]


def test_lbcnn_deterministic_and_seeded():
    a = filters.lbcnn(32, 3, seed=7)
    assert torch.equal(a, filters.lbcnn(32, 3, seed=7))
    assert not torch.equal(a, filters.lbcnn(32, 3, seed=8))
    assert torch.equal(filters.lbcnn(32, 3), filters.lbcnn(32, 3, 0.5, 0))
    assert torch.equal(filters.lbcnn(32, 3, seed=7, dtype=torch.float32), a.float())


def test_lbcnn_leaves_global_rng_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    filters.lbcnn(64, 5, 0.3, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    # And the global RNG does not influence it.
    torch.manual_seed(0)
    a = filters.lbcnn(8, 3, seed=5)
    torch.manual_seed(99)
    assert torch.equal(a, filters.lbcnn(8, 3, seed=5))


def test_lbcnn_is_random_enough():
    w = filters.lbcnn(4000, 3, 0.5, seed=3)
    nz = w[w != 0]
    assert abs((nz > 0).double().mean().item() - 0.5) < 0.02  # signs balanced
    freq = (w != 0).double().mean(0)  # every position equally likely: 4/9
    assert torch.allclose(freq, torch.full((3, 3), 4 / 9, dtype=torch.float64), atol=0.03)
    assert len({tuple(f.flatten().tolist()) for f in w}) > 1000  # filters differ from one another


# -------------------------------------------------------------------------------------------------- bank


def test_bank_names():
    b = filters.bank("sobel_x", "sobel_y", "laplacian4")
    assert b.shape == (3, 3, 3) and b.dtype == torch.float64
    assert torch.equal(b, torch.stack([filters.sobel_x(), filters.sobel_y(), filters.laplacian4()]))
    all_named = filters.bank(*THREE_BY_THREE)
    assert torch.equal(all_named, torch.tensor(list(THREE_BY_THREE.values()), dtype=torch.float64))


def test_bank_centres_3x3_in_5x5():
    b = filters.bank("laplacian8", filters.gaussian(5, 1.0))
    assert b.shape == (2, 5, 5)
    assert torch.equal(b[0, 1:4, 1:4], filters.laplacian8())
    assert b[0].abs().sum() == filters.laplacian8().abs().sum()  # zeros elsewhere
    assert torch.equal(b[1], filters.gaussian(5, 1.0))


def test_bank_centres_even_in_odd():
    small = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    b = filters.bank(small, "sobel_x")
    assert b.shape == (2, 3, 3)
    # "same" centre of 2x2 is its tap (0, 0); of 3x3 the tap (1, 1): so the 2x2 lands at [1:3, 1:3].
    expected = torch.zeros(3, 3, dtype=torch.float64)
    expected[1:3, 1:3] = small
    assert torch.equal(b[0], expected)


def test_bank_non_square():
    row = torch.tensor([[1.0, -2.0, 1.0]])  # (1, 3)
    col = torch.tensor([[1.0], [2.0], [3.0], [4.0]])  # (4, 1)
    b = filters.bank(row, col, torch.ones(2, 5))
    assert b.shape == (3, 4, 5)
    # (1,3) in (4,5): offset ((4-1)//2 - 0, (5-1)//2 - 1) = (1, 1); (4,1): (0, 2); (2,5): (1, 0).
    assert torch.equal(b[0, 1, 1:4], row[0].double()) and b[0].count_nonzero() == 3
    assert torch.equal(b[1, :, 2], col[:, 0].double()) and b[1].count_nonzero() == 4
    assert torch.equal(b[2, 1:3, :], torch.ones(2, 5, dtype=torch.float64)) and b[2].count_nonzero() == 10


@pytest.mark.parametrize("small", [(1, 1), (2, 2), (3, 3), (2, 3), (1, 4), (3, 2), (4, 4)])
@pytest.mark.parametrize("big", [(4, 4), (5, 5), (4, 6), (7, 5)])
@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate", "circular"])
def test_bank_padding_preserves_same_output(small, big, mode):
    # The defining property of the centring: a padded filter gives the same "same"-size output as the
    # original one, for every padding mode.
    if small[0] > big[0] or small[1] > big[1]:
        pytest.skip("small filter larger than the bank")
    gen = torch.Generator().manual_seed(0)
    f = torch.randn(small, generator=gen, dtype=torch.float64)
    padded = filters.bank(f, torch.zeros(big, dtype=torch.float64))[0]
    y = torch.randn(2, 3, 9, 11, generator=gen, dtype=torch.float64)

    def apply(filt):
        s1, s2 = filt.shape
        top, left = (s1 - 1) // 2, (s2 - 1) // 2
        yp = F.pad(y, (left, s2 - 1 - left, top, s1 - 1 - top), mode=mode)
        return F.conv2d(yp, filt.expand(3, 1, s1, s2), groups=3)

    torch.testing.assert_close(apply(padded), apply(f), rtol=0, atol=1e-13)


def test_bank_mixes_names_2d_and_3d():
    stack = filters.dct(3)  # (9, 3, 3)
    b = filters.bank("sobel_x", stack, filters.gaussian(5, 1.0), filters.lbcnn(2, 1, 1.0))
    assert b.shape == (1 + 9 + 1 + 2, 5, 5)
    assert torch.equal(b[0, 1:4, 1:4], filters.sobel_x())
    assert torch.equal(b[1:10, 1:4, 1:4], stack)
    assert torch.equal(b[10], filters.gaussian(5, 1.0))
    assert torch.equal(b[11:, 2, 2], filters.lbcnn(2, 1, 1.0)[:, 0, 0])
    assert filters.bank(torch.zeros(0, 7, 7), "sobel_x").shape == (1, 7, 7)


def test_bank_dtype_device_and_detach():
    f32 = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float32, requires_grad=True)
    ints = torch.tensor([[0, 1, 0], [1, -4, 1], [0, 1, 0]])
    b = filters.bank(f32, ints)
    assert b.dtype == torch.float64 and not b.requires_grad and b.device == f32.device
    assert torch.equal(b[1], filters.laplacian4())
    b[0, 1, 1] = 100  # a copy: the spec is untouched
    assert f32[0, 0] == 1
    b16 = filters.bank("sobel_x", "scharr_y", dtype=torch.float16, device="cpu")
    assert b16.dtype == torch.float16 and torch.equal(b16.double(), filters.bank("sobel_x", "scharr_y"))


def test_bank_errors():
    with pytest.raises(ValueError, match="at least one"):
        filters.bank()
    with pytest.raises(ValueError, match=r"unknown filter name 'sobel'.*valid names: sobel_x, sobel_y"):
        filters.bank("sobel_x", "sobel")
    with pytest.raises(ValueError, match=r"laplacian8"):
        filters.bank("gaussian")  # needs arguments: not a name
    with pytest.raises(
        ValueError,
        match=r"fixedbranch\.filters\.bank: expected specs\[1\] to be a 2-D filter or a 3-D stack, got 1 dimensions",
    ):
        filters.bank("sobel_x", torch.ones(3))
    with pytest.raises(ValueError, match="to be a 2-D filter or a 3-D stack, got 4 dimensions"):
        filters.bank(torch.ones(1, 1, 3, 3))
    with pytest.raises(ValueError, match="to be a 2-D filter or a 3-D stack, got 0 dimensions"):
        filters.bank(torch.tensor(1.0))
    with pytest.raises(TypeError, match=r"expected specs\[0\] to be a filter name \(str\) or a tensor, got list"):
        filters.bank([[1.0]])
    with pytest.raises(TypeError, match="got ndarray"):
        filters.bank(np.ones((3, 3)))
    with pytest.raises(TypeError, match="real tensor"):
        filters.bank(torch.ones(3, 3, dtype=torch.complex64))
    with pytest.raises(ValueError, match="filter sizes >= 1"):
        filters.bank(torch.ones(2, 0, 3))
    with pytest.raises(ValueError, match="at least one filter in total"):
        filters.bank(torch.ones(0, 3, 3))
    with pytest.raises(TypeError, match="fixedbranch.filters.bank: expected dtype to be a floating-point"):
        filters.bank("sobel_x", dtype=torch.int64)


# ------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: filters.gaussian(0, 1.0), ValueError,
         r"fixedbranch\.filters\.gaussian: expected size to be an integer >= 1, got 0"),
        (lambda: filters.gaussian(3.0, 1.0), TypeError,
         r"fixedbranch\.filters\.gaussian: expected size to be an integer, got float"),
        (lambda: filters.gaussian(True, 1.0), TypeError,
         r"fixedbranch\.filters\.gaussian: expected size to be an integer, got bool"),
        (lambda: filters.gaussian(3, 0.0), ValueError,
         r"fixedbranch\.filters\.gaussian: expected sigma to be a finite number > 0, got 0.0"),
        (lambda: filters.gaussian(3, -1), ValueError, r"fixedbranch\.filters\.gaussian: expected sigma .*> 0"),
        (lambda: filters.gaussian(3, float("nan")), ValueError,
         r"fixedbranch\.filters\.gaussian: expected sigma .*finite"),
        (lambda: filters.gaussian(3, "1"), TypeError,
         r"fixedbranch\.filters\.gaussian: expected sigma to be a real number, got str"),
        (lambda: filters.gaussian(3, True), TypeError,
         r"fixedbranch\.filters\.gaussian: expected sigma to be a real number, got bool"),
        (lambda: filters.lbcnn(4, 1), ValueError,
         r"fixedbranch\.filters\.lbcnn: sparsity=0.5 of 1x1 = 1 entries rounds to 0"),
        (lambda: filters.log(-1, 1.0), ValueError,
         r"fixedbranch\.filters\.log: expected size to be an integer >= 1, got -1"),
        (lambda: filters.log(3, 0), ValueError, r"fixedbranch\.filters\.log: expected sigma .*> 0"),
        (lambda: filters.gabor(0, 1.0, 0.0, 4.0), ValueError, r"fixedbranch\.filters\.gabor: expected size .*>= 1"),
        (lambda: filters.gabor(3, 0.0, 0.0, 4.0), ValueError, r"fixedbranch\.filters\.gabor: expected sigma .*> 0"),
        (lambda: filters.gabor(3, 1.0, float("inf"), 4.0), ValueError,
         r"fixedbranch\.filters\.gabor: expected theta .*finite"),
        (lambda: filters.gabor(3, 1.0, 0.0, 0.0), ValueError, r"fixedbranch\.filters\.gabor: expected lambd .*> 0"),
        (lambda: filters.gabor(3, 1.0, 0.0, 4.0, gamma=0.0), ValueError,
         r"fixedbranch\.filters\.gabor: expected gamma .*> 0"),
        (lambda: filters.gabor(3, 1.0, 0.0, 4.0, psi=float("nan")), ValueError,
         r"fixedbranch\.filters\.gabor: expected psi .*finite"),
        (lambda: filters.dct(0), ValueError, r"fixedbranch\.filters\.dct: expected size to be an integer >= 1, got 0"),
        (lambda: filters.dct(2.5), TypeError, r"fixedbranch\.filters\.dct: expected size to be an integer"),
        (lambda: filters.dct(3, norm="L1"), ValueError,
         r"fixedbranch\.filters\.dct: expected norm to be one of 'ortho', 'l1', got 'L1'"),
        (lambda: filters.dct(3, norm="backward"), ValueError,
         r"fixedbranch\.filters\.dct: expected norm to be one of 'ortho', 'l1'"),
        (lambda: filters.dct(3, norm=None), TypeError,
         r"fixedbranch\.filters\.dct: expected norm to be a string.*got NoneType"),
        (lambda: filters.dct(3, norm=True), TypeError,
         r"fixedbranch\.filters\.dct: expected norm to be a string.*got bool"),
        (lambda: filters.dct(3, level=0), ValueError,
         r"fixedbranch\.filters\.dct: expected level to be None or an integer in \[1, 2 \* size - 1\]"),
        (lambda: filters.dct(3, level=0), ValueError,
         r"fixedbranch\.filters\.dct: expected level .*\[1, 5\] for size 3 \(keeps u \+ v < level\), got 0"),
        (lambda: filters.dct(3, level=6), ValueError,
         r"fixedbranch\.filters\.dct: expected level .*\[1, 5\] for size 3.*got 6"),
        (lambda: filters.dct(3, level=-1), ValueError, r"fixedbranch\.filters\.dct: expected level .*\[1, 5\].*got -1"),
        (lambda: filters.dct(8, level=16), ValueError,
         r"fixedbranch\.filters\.dct: expected level .*\[1, 15\] for size 8.*got 16"),
        (lambda: filters.dct(3, level=2.0), TypeError,
         r"fixedbranch\.filters\.dct: expected level to be an integer, got float"),
        (lambda: filters.dct(3, level=True), TypeError,
         r"fixedbranch\.filters\.dct: expected level to be an integer, got bool"),
        (lambda: filters.dct(3, level="2"), TypeError,
         r"fixedbranch\.filters\.dct: expected level to be an integer, got str"),
        (lambda: filters.dct(3, dc=1), TypeError, r"fixedbranch\.filters\.dct: expected dc to be a bool, got int"),
        (lambda: filters.dct(3, dc=None), TypeError,
         r"fixedbranch\.filters\.dct: expected dc to be a bool, got NoneType"),
        (lambda: filters.dct(3, dc="False"), TypeError,
         r"fixedbranch\.filters\.dct: expected dc to be a bool, got str"),
        (lambda: filters.dct(3, level=1, dc=False), ValueError,
         r"fixedbranch\.filters\.dct: dc=False with level=1 leaves no filter"),
        (lambda: filters.dct(1, dc=False), ValueError,
         r"fixedbranch\.filters\.dct: dc=False with size 1 leaves no filter"),
        (lambda: filters.lbcnn(0, 3), ValueError,
         r"fixedbranch\.filters\.lbcnn: expected n to be an integer >= 1, got 0"),
        (lambda: filters.lbcnn(4, 0), ValueError,
         r"fixedbranch\.filters\.lbcnn: expected size to be an integer >= 1, got 0"),
        (lambda: filters.lbcnn(4, 3, 0.0), ValueError, r"fixedbranch\.filters\.lbcnn: expected sparsity .*> 0"),
        (lambda: filters.lbcnn(4, 3, 1.5), ValueError,
         r"fixedbranch\.filters\.lbcnn: expected sparsity .*\(0, 1\], got 1.5"),
        (lambda: filters.lbcnn(4, 3, 0.01), ValueError,
         r"fixedbranch\.filters\.lbcnn: sparsity=.*rounds to 0 non-zero"),
        (lambda: filters.lbcnn(4, 3, seed=1.5), TypeError,
         r"fixedbranch\.filters\.lbcnn: expected seed to be an integer"),
        (lambda: filters.sobel_x(dtype=torch.int32), TypeError,
         r"fixedbranch\.filters\.sobel_x: expected dtype to be a floating-point"),
        (lambda: filters.gaussian(3, 1.0, dtype=torch.bool), TypeError,
         r"fixedbranch\.filters\.gaussian: expected dtype to be a floating-point"),
        (lambda: filters.dct(3, dtype="float32"), TypeError,
         r"fixedbranch\.filters\.dct: expected dtype to be a floating-point"),
    ],
)
def test_validation(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_keyword_only_dtype_device():
    with pytest.raises(TypeError):
        filters.sobel_x(torch.float32)
    with pytest.raises(TypeError):
        filters.gaussian(3, 1.0, torch.float32)


def test_integer_like_sizes_accepted():
    assert torch.equal(filters.gaussian(np.int64(5), np.float32(1.0)), filters.gaussian(5, 1.0))
    assert filters.dct(torch.tensor(3)).shape == (9, 3, 3)
