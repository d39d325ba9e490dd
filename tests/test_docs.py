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
