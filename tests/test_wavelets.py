"""Wavelet banks (fixedbranch.filters.wavelet): the coefficients against PyWavelets, one transform level as
fixed_branch and its inverse as fixed_branch_transpose, against WTConv's formulation and against pywt.dwt2/idwt2.

Border conventions, for even image sizes (docs/design.md, "Wavelet banks"):

- ``padding_mode="circular"`` is pywt's ``mode="periodization"``, with no shift: the "same" padding's top row count
  (L - 1) // 2 = L/2 - 1 puts output pixel m's window at input rows 2m - (L/2 - 1) .. 2m + L/2, which is where
  pywt's periodized convolution reads. So ``fixed_branch`` equals ``pywt.dwt2(mode="periodization")`` and
  ``fixed_branch_transpose`` with the synthesis bank equals ``pywt.idwt2(mode="periodization")``.
- ``padding_mode="zeros"`` is WTConv's ``F.conv2d(..., stride=2, padding=L//2 - 1)`` (the extra bottom/right row
  of "same" padding is never read at stride 2 on an even size), and a window of pywt's ``mode="zero"`` output,
  which holds every shift: pywt's coefficient k reads input rows 2k + 1 - (L - 1) .. 2k + 1, so ours are pywt's
  from k = (L - 2) / 4 on when L = 2 (mod 4), and, when L = 0 (mod 4), pywt's of the image with one zero row and
  column put in front, from k = L / 4 on.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fixedbranch as fb

pywt = pytest.importorskip("pywt")

DISCRETE = pywt.wavelist(kind="discrete")
# Orthogonal and biorthogonal families, several members each (the whole list is in the cheap tests).
FAMILIES = ("haar", "db1", "db2", "db3", "db4", "db7", "sym2", "sym5", "coif1", "coif3", "bior1.3", "bior2.2",
            "bior3.1", "bior4.4", "bior6.8", "rbio2.4", "rbio3.9")


def _transform(x: torch.Tensor, name: str, padding_mode: str) -> torch.Tensor:
    return fb.fixed_branch(x, fb.filters.wavelet(name), padding_mode, identity=False, order="channel", stride=2)


def _inverse(z: torch.Tensor, name: str, padding_mode: str, size) -> torch.Tensor:
    return fb.fixed_branch_transpose(z, fb.filters.wavelet(name, synthesis=True), padding_mode, identity=False,
                                     order="channel", stride=2, output_size=size)


def _image(name: str, seed: int = 0, channels: int = 2) -> torch.Tensor:
    """An even-sized image at least twice the filter length (circular padding wraps once at most)."""
    side = max(16, 2 * pywt.Wavelet(name).dec_len)
    return torch.randn(2, channels, side, side + 6, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


@pytest.mark.parametrize("name", DISCRETE)
def test_banks_are_pywt_coefficients(name):
    w = pywt.Wavelet(name)
    analysis = (np.array(w.dec_lo)[::-1], np.array(w.dec_hi)[::-1])
    synthesis = (np.array(w.rec_lo), np.array(w.rec_hi))
    for h, bank in ((analysis, fb.filters.wavelet(name)), (synthesis, fb.filters.wavelet(name, synthesis=True))):
        assert bank.dtype == torch.float64 and bank.shape == (4, w.dec_len, w.dec_len)
        for k in range(4):  # filter[k][i, j] = h[k % 2][i] * h[k // 2][j], bit for bit
            assert np.array_equal(bank[k].numpy(), np.outer(h[k % 2], h[k // 2])), (name, k)


def test_orthogonal_synthesis_bank_is_the_analysis_bank():
    """For an orthogonal wavelet rec = dec reversed, so the inverse is the transpose of the transform itself."""
    for name in ("haar", "db3", "sym4", "coif2"):
        assert torch.equal(fb.filters.wavelet(name), fb.filters.wavelet(name, synthesis=True))
    assert not torch.equal(fb.filters.wavelet("bior2.2"), fb.filters.wavelet("bior2.2", synthesis=True))


def test_dtype_and_device():
    bank = fb.filters.wavelet("db2", dtype=torch.float32)
    assert bank.dtype == torch.float32 and torch.equal(bank, fb.filters.wavelet("db2").float())


@pytest.mark.parametrize("name", ["morl", "mexh", "cmor1.5-1.0", "gaus1", "db0", "haar2", "", "DB2"])
def test_rejects_other_names(name):
    with pytest.raises(ValueError, match=r"^fixedbranch\.filters\.wavelet: expected name .*discrete") as error:
        fb.filters.wavelet(name)
    assert repr(name) in str(error.value)


def test_rejects_wrong_types():
    with pytest.raises(TypeError, match=r"^fixedbranch\.filters\.wavelet: expected name to be a string"):
        fb.filters.wavelet(pywt.Wavelet("db2"))
    with pytest.raises(TypeError, match=r"^fixedbranch\.filters\.wavelet: expected synthesis to be a bool"):
        fb.filters.wavelet("db2", synthesis=1)


# ------------------------------------------------------------------------------------------------- WTConv


def _wtconv_transform(x: torch.Tensor, name: str) -> torch.Tensor:
    """WTConv's transform, restated: the analysis bank repeated per channel, one grouped strided convolution with
    L//2 - 1 zero rows and columns on every side."""
    bank = fb.filters.wavelet(name)
    c, size = x.shape[1], bank.shape[-1]
    weight = bank.repeat(c, 1, 1).unsqueeze(1)  # (4C, 1, L, L): channel 4c + k is filter k of channel c
    return F.conv2d(x, weight, stride=2, groups=c, padding=size // 2 - 1)


def _wtconv_inverse(z: torch.Tensor, name: str) -> torch.Tensor:
    """WTConv's inverse, restated: the transposed convolution with the synthesis bank and the same padding."""
    bank = fb.filters.wavelet(name, synthesis=True)
    c, size = z.shape[1] // 4, bank.shape[-1]
    return F.conv_transpose2d(z, bank.repeat(c, 1, 1).unsqueeze(1), stride=2, groups=c, padding=size // 2 - 1)


@pytest.mark.parametrize("name", FAMILIES)
def test_transform_and_inverse_match_wtconv(name):
    x = _image(name)
    z = _transform(x, name, "zeros")
    expected = _wtconv_transform(x, name)
    assert z.shape == expected.shape
    torch.testing.assert_close(z, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(_inverse(z, name, "zeros", x.shape[2:]), _wtconv_inverse(z, name), rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------------- pywt


def _pywt_subbands(x: torch.Tensor, name: str, mode: str) -> torch.Tensor:
    """pywt.dwt2 of every plane, in channel order: (cA, cH, cV, cD) of channel c at 4c .. 4c + 3."""
    cA, (cH, cV, cD) = pywt.dwt2(x.numpy(), name, mode=mode, axes=(-2, -1))
    bands = np.stack([cA, cH, cV, cD], axis=2)  # (N, C, 4, H', W')
    return torch.from_numpy(bands).flatten(1, 2)


@pytest.mark.parametrize("name", FAMILIES + ("dmey",))
def test_circular_is_pywt_periodization(name):
    x = _image(name)
    z = _transform(x, name, "circular")
    torch.testing.assert_close(z, _pywt_subbands(x, name, "periodization"), rtol=0, atol=1e-12)
    # The inverse of any coefficients, not only of a transform's.
    n, c4, h, w = z.shape
    coeffs = torch.randn(z.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    bands = coeffs.numpy().reshape(n, c4 // 4, 4, h, w)
    expected = pywt.idwt2((bands[:, :, 0], (bands[:, :, 1], bands[:, :, 2], bands[:, :, 3])), name,
                          mode="periodization", axes=(-2, -1))
    inverse = _inverse(coeffs, name, "circular", x.shape[2:])
    torch.testing.assert_close(inverse, torch.from_numpy(expected), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", FAMILIES)
def test_zeros_is_a_window_of_pywt_zero_mode(name):
    x = _image(name)
    size = pywt.Wavelet(name).dec_len
    if size % 4 == 2:
        full, offset = _pywt_subbands(x, name, "zero"), (size - 2) // 4
    else:  # the sampling grids differ by one pixel: pywt sees the image with a zero row and column in front
        full, offset = _pywt_subbands(F.pad(x, (1, 0, 1, 0)), name, "zero"), size // 4
    z = _transform(x, name, "zeros")
    window = full[:, :, offset : offset + z.shape[2], offset : offset + z.shape[3]]
    torch.testing.assert_close(z, window, rtol=0, atol=1e-12)


def _pywt_round_trip_error(x: torch.Tensor, name: str) -> float:
    """How far pywt's own periodized transform and inverse land from x: the precision of its coefficients."""
    coeffs = pywt.dwt2(x.numpy(), name, mode="periodization", axes=(-2, -1))
    return float(np.abs(pywt.idwt2(coeffs, name, mode="periodization", axes=(-2, -1)) - x.numpy()).max())


@pytest.mark.parametrize("name", DISCRETE)
def test_perfect_reconstruction_with_circular_padding(name):
    """Transform then inverse gives x back, as exactly as pywt's own round trip does (its coefficients are tabulated
    to about 1e-11 for the longer symlets; dmey is an FIR approximation of the Meyer wavelet, not exactly
    orthogonal, so its round trip is off by about 2e-2 in pywt too)."""
    x = _image(name, channels=1)
    error = (_inverse(_transform(x, name, "circular"), name, "circular", x.shape[2:]) - x).abs().max().item()
    assert error <= 10 * _pywt_round_trip_error(x, name) + 1e-13, error
    if name != "dmey":
        assert error < 1e-9


@pytest.mark.parametrize("name", ("haar", "db2", "bior2.2"))
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_perfect_reconstruction_in_lower_precision(name, dtype):
    x = _image(name).to(dtype)
    back = _inverse(_transform(x, name, "circular"), name, "circular", x.shape[2:])
    assert back.dtype == dtype
    tolerance = {torch.float32: 1e-5, torch.bfloat16: 0.1}[dtype]
    torch.testing.assert_close(back.double(), x.double(), rtol=0, atol=tolerance)


@pytest.mark.parametrize("name", ("haar", "db2", "bior1.3"))
def test_multilevel_round_trip(name):
    """The README's loop: transform the low band again at each level, then invert from the coarsest level up."""
    x = torch.randn(1, 3, 32, 48, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    low, details, sizes = x, [], []
    for _ in range(3):
        sizes.append(low.shape[2:])
        bands = _transform(low, name, "circular").unflatten(1, (-1, 4))  # (N, C, 4, H/2, W/2)
        low, high = bands[:, :, 0], bands[:, :, 1:]
        details.append(high)
    for high, size in zip(reversed(details), reversed(sizes)):
        low = _inverse(torch.cat([low.unsqueeze(2), high], 2).flatten(1, 2), name, "circular", size)
    torch.testing.assert_close(low, x, rtol=0, atol=1e-10)
