"""The source layout the design states (docs/design.md, section 3): every schema and every dispatcher registration
of the operators in csrc/fixed_branch.cpp (autograd's in csrc/autograd.cpp), device files that only provide
kernels, and the CPU kernels' cost model beside them rather than in the device-independent planner."""

import re
from pathlib import Path

import torch

import fixedbranch  # noqa: F401  (registers the operators)

CSRC = Path(__file__).resolve().parents[1] / "csrc"
SOURCES = {p.relative_to(CSRC).as_posix(): p.read_text() for p in CSRC.rglob("*") if p.suffix in {".cpp", ".cu", ".h"}}


def _files_with(pattern: str) -> set[str]:
    return {name for name, text in SOURCES.items() if re.search(pattern, text)}


def test_every_schema_in_one_file():
    assert _files_with(r"TORCH_LIBRARY(_FRAGMENT)?\(") == {"fixed_branch.cpp"}
    assert _files_with(r"\bm\.def\(") == {"fixed_branch.cpp"}


def test_devices_register_kernels_once_and_nowhere_else():
    assert _files_with(r"TORCH_LIBRARY_IMPL\(") == {"fixed_branch.cpp", "autograd.cpp"}
    assert _files_with(r"register_branch_kernels\(c10::DeviceType::CPU") == {"cpu/fixed_branch_cpu.cpp"}
    assert _files_with(r"register_branch_kernels\(c10::DeviceType::CUDA") == {"cuda/fixed_branch_cuda.cu"}
    # The entry points are registered for both device keys; this build's kernels are listed by the operator.
    for op in ("fixed_branch", "_fixed_branch_backward"):
        for key in ("CPU", "CUDA"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fixedbranch::{op}", key), (op, key)
    assert "cpu" in torch.ops.fixedbranch._kernel_devices()


def test_the_cpu_cost_model_lives_beside_the_cpu_kernels():
    assert _files_with(r"kRowTapCost|kPassCost|bool pays_on_cpu") == {"cpu/cost_model.h", "cpu/cost_model.cpp"}
    assert not _files_with(r"pays_on_cpu") & {name for name in SOURCES if name.startswith("bank_plan/")}
