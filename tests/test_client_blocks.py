"""Blocks of published fixed-filter networks, fixedbranch against the networks' own grouped-convolution formulation.

The blocks live in examples/harmonic_block.py (harmonic networks' DCT bank, BN, 1x1) and
examples/predefined_filter_block.py (pre-defined filter networks' 16 edge filters, BN, ReLU, 1x1, BN); each exposes
``check``, ``state_dict_round_trip`` and ``timings``. The scripts also run as a user runs them, with ``--quick``.
"""

import importlib.util
import pathlib
import subprocess
import sys

import pytest
import torch

import fixedbranch as fb

from .common import TOLERANCE, cpu_and_cuda

ROOT = pathlib.Path(__file__).resolve().parents[1]
NAMES = ("harmonic_block", "predefined_filter_block")
# Further cases: another filter size and a stride of 3 on a size it does not divide.
EXTRA_CASES = {
    "harmonic_block": {"5x5/3": (1, 2, 3, 5, 3, 11)},
    "predefined_filter_block": {"stride 3": (1, 2, 3, 3, 10)},
}


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"examples_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EXAMPLES = {name: load(name) for name in NAMES}


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("name", NAMES)
def test_fixedbranch_block_matches_grouped_convolution_float64(name, device):
    example = EXAMPLES[name]
    for cases in (None, EXTRA_CASES[name]):
        results = example.check(torch.float64, device, cases)
        assert len(results) >= 4
        for what, err in results:
            assert err <= TOLERANCE[torch.float64], f"{what}: relative difference {err:.1e}"


@pytest.mark.parametrize("name", NAMES)
def test_fixedbranch_block_matches_grouped_convolution_float32(name):
    for what, err in EXAMPLES[name].check(torch.float32):
        assert err <= TOLERANCE[torch.float32], f"{what}: relative difference {err:.1e}"


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("name", NAMES)
def test_grouped_state_dict_loads_unchanged(name, device):
    same_keys, err = EXAMPLES[name].state_dict_round_trip(torch.float64, device)
    assert same_keys
    assert err <= TOLERANCE[torch.float64]


def test_state_dicts_hold_only_trained_state():
    harm = EXAMPLES["harmonic_block"].HarmFixedBranch(4, 6)
    pfm = EXAMPLES["predefined_filter_block"].PFMFixedBranch(4, 6)
    assert list(harm.state_dict()) == ["weight", "bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"]
    assert not [key for key in pfm.state_dict() if key.startswith("predev_conv")]
    assert [name for name, _ in pfm.named_parameters()] == [
        "norm1.weight", "norm1.bias", "conv1x1.weight", "norm2.weight", "norm2.bias",
    ]


def test_harmonic_block_uses_the_l1_normalised_dct_bank():
    block = EXAMPLES["harmonic_block"].HarmFixedBranch(4, 6, kernel_size=3, dtype=torch.float64)
    torch.testing.assert_close(block.dct.bank, fb.filters.dct(3, norm="l1"), rtol=0, atol=0)
    assert block.bn.num_features == 4 * 9
    with pytest.raises(ValueError, match="kernel_size"):
        EXAMPLES["harmonic_block"].HarmGrouped(4, 6, kernel_size=4)


def test_predefined_filter_pool_is_the_papers():
    pool = EXAMPLES["predefined_filter_block"].edge_filters()
    assert pool.shape == (16, 3, 3)
    # Zero mean and unit L1 norm per filter; each filter appears as -w then +w, so the pool spans 8 dimensions.
    torch.testing.assert_close(pool.sum((1, 2)), torch.zeros(16, dtype=torch.float64), rtol=0, atol=1e-15)
    torch.testing.assert_close(pool.abs().sum((1, 2)), torch.ones(16, dtype=torch.float64))
    torch.testing.assert_close(pool[0::2], -pool[1::2], rtol=0, atol=0)
    assert torch.linalg.matrix_rank(pool.reshape(16, 9)).item() == 8
    # The uneven filter at 0 degrees responds to intensity increasing along x, the even one is a vertical line.
    assert (pool[1, :, 2] > 0).all() and (pool[1, :, 0] < 0).all()
    assert (pool[9, :, 1] > 0).all() and (pool[9, :, 0] < 0).all()


@pytest.mark.parametrize("name", NAMES)
def test_script_quick_run_passes_and_prints_the_table(name):
    result = subprocess.run([sys.executable, f"examples/{name}.py", "--quick"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    checks = [line for line in lines if line.startswith("CHECK ")]
    assert checks and all(line.endswith(" OK") for line in checks), result.stdout
    table = [line for line in lines if line.rstrip().endswith("x") and " ms " in line]
    assert len(table) == 4 * len(EXAMPLES[name].QUICK_CASES), result.stdout  # block and stage, both passes
    assert result.stdout.rstrip().endswith("all checks passed")
