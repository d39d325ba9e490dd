"""The test run's summary says why the CUDA cases were skipped (tests/conftest.py)."""

import pathlib

import torch

pytest_plugins = ["pytester"]


def test_summary_counts_the_cuda_skips(pytester):
    pytester.makeconftest((pathlib.Path(__file__).parent / "conftest.py").read_text())
    pytester.makeini("[pytest]\nmarkers =\n    needs_cuda: needs a CUDA device\n")
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.needs_cuda)])
        @pytest.mark.parametrize("case", range(3))
        def test_case(device, case):
            pass

        def test_other_skip():
            pytest.skip("not a CUDA case")
        """
    )
    result = pytester.runpytest("-q")
    if torch.cuda.is_available():
        result.assert_outcomes(passed=6, skipped=1)
        assert "CUDA cases skipped" not in result.stdout.str()
    else:
        result.assert_outcomes(passed=3, skipped=4)
        result.stdout.fnmatch_lines(["3 CUDA cases skipped: no CUDA device here*"])
