"""The argument checks the Python front end adds to the operators' own (csrc/checks.cpp): only what C++ cannot
express. A ``TypeError`` for an argument of the wrong Python type, the check that a bank does not require grad, and
normalising collections (a stop set given as an int or a set, a stride given as an int). Shared by the public
functions (ops.py) and the modules (modules.py); every message starts with ``fn``, the fully qualified public name
the user called (``fixedbranch.fixed_branch``, ``fixedbranch.FixedBranchConv2d``).
"""

from __future__ import annotations

import torch

from .reference import pair

__all__ = ["check_bank", "check_int", "check_pair", "check_tensor", "stop_list"]


def check_tensor(fn: str, name: str, value) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{fn}: expected {name} to be a torch.Tensor, got {type(value).__name__}")


def check_bank(fn: str, bank) -> None:
    """A tensor that does not require grad; its rank, dtype and size are the operator's to check."""
    check_tensor(fn, "bank", bank)
    if bank.requires_grad:
        raise ValueError(
            f"{fn}: bank requires grad, but the filters are fixed and never receive a gradient; pass bank.detach()"
        )


def check_int(fn: str, name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{fn}: expected {name} to be an int, got {value!r}")
    return value


def stop_list(fn: str, stop_gradient) -> list[int]:
    """The stop set as a sorted list of ints; its range is the operator's to check."""
    if isinstance(stop_gradient, int) and not isinstance(stop_gradient, bool):
        return [stop_gradient]
    if isinstance(stop_gradient, tuple) and not stop_gradient:
        return []
    try:
        items = list(stop_gradient)
    except TypeError:
        raise TypeError(
            f"{fn}: expected stop_gradient to be a collection of branch indices, got {type(stop_gradient).__name__}"
        ) from None
    for k in items:
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"{fn}: expected stop_gradient to hold ints, got {k!r}")
    return sorted(set(items))


def check_pair(fn: str, name: str, value) -> list[int]:
    """An int or a pair of ints, as a list of two; their range is the operator's to check."""
    ok = type(value) is int or (
        isinstance(value, (tuple, list, torch.Size))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    )
    if not ok:
        raise TypeError(f"{fn}: expected {name} to be an int or a pair of ints, got {value!r}")
    return list(pair(value))
