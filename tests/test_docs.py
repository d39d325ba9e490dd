"""The examples in the public docstrings run and print what they claim."""

import doctest

import pytest
import torch

import fixedbranch
from fixedbranch import modules, ops


@pytest.mark.parametrize("module", [ops, modules])
def test_docstring_examples(module):
    torch.manual_seed(0)
    result = doctest.testmod(module, extraglobs={"torch": torch, "fb": fixedbranch}, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


def test_readme_api_block_runs():
    import pathlib
    import re

    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", readme, re.S)
    assert block is not None, "README.md lost its API example"
    namespace: dict = {}
    exec(compile(block.group(1), "README.md", "exec"), namespace)
    assert namespace["out"].shape == (8, 160, 96, 96)
    assert namespace["shares"].shape == (5, 8, 32, 96, 96)
    assert namespace["norm"].num_features == 160  # out_channels_total, as its comment says


def test_design_states_the_extensions_plan_tolerances():
    # docs/design.md explains the plan's tolerances in words and numbers; the numbers must be the extension's.
    import pathlib
    import re

    from fixedbranch.plan import plan_tolerances

    design = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "design.md").read_text()
    stated = re.search(r"to: (\S+) for float64 .*?; (\S+) for float32 and the half types", design, re.S)
    assert stated is not None, "docs/design.md no longer states the plan's tolerances where this test looks"
    for number, dtype in zip(stated.groups(), (torch.float64, torch.float32)):
        assert set(plan_tolerances(dtype).values()) == {float(number)}, (dtype, number)


def test_readme_bank_plan_comment_is_what_it_prints():
    import pathlib
    import re

    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    shown = re.search(r"print\(fb\.bank_plan\(fb\.filters\.dct\(7\)\)\)\n((?:# .*\n)+)", readme)
    assert shown is not None, "README.md lost its bank_plan example"
    lines = [line[2:] for line in shown.group(1).splitlines()]
    printed = str(fixedbranch.bank_plan(fixedbranch.filters.dct(7))).splitlines()
    assert lines[:-1] == printed[:len(lines) - 1]
    assert lines[-1].split()[0] == "..." and f"{len(printed) - 1} in all" in lines[-1]
