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
