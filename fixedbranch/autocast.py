"""Autocast (AMP) kernels: inside ``torch.autocast`` the fused operators behave as the convolutions they replace.

``conv2d`` is on autocast's lower-precision list, and the branches are depthwise convolutions, so under
``torch.autocast(device_type, dtype)``:

- ``fixed_branch_conv2d`` casts x, weight, bias and the bank to the autocast dtype and runs there, exactly as
  ``nn.Conv2d`` does: the output has the autocast dtype, and a float32 layer accepts a half-precision input.
- ``fixed_branch`` does the same (its input and bank are cast), so ``FixedBranch`` after any layer returns the
  autocast dtype, as its depthwise-convolution equivalent would.
- ``fixed_branch_transpose`` too (its equivalent is a transposed convolution, also on the lower-precision list).

The dtype is the one the autocast region chose (``torch.get_autocast_dtype``), read at each call: float16 or
bfloat16 on either device. ``torch.library.register_autocast`` cannot express that (it casts to one dtype fixed
at registration), so the kernels are registered here by hand, the same way it registers them: cast, then
re-dispatch below the autocast key. The backward needs no kernel: autograd records the casts, and the gradient
op runs in the dtype of the gradient it receives.
"""

from __future__ import annotations

import torch

__all__ = []

_OPS = ("fixed_branch", "fixed_branch_conv2d", "fixed_branch_transpose")
_DEVICE_TYPES = ("cpu", "cuda")

_lib = torch.library.Library("fixedbranch", "IMPL")


def _cast(value, device_type: str, dtype: torch.dtype):
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.device.type == device_type:
        return value.to(dtype)
    return value


def _register(opname: str, device_type: str) -> None:
    op = getattr(torch.ops.fixedbranch, opname).default
    key_name = "Autocast" + torch._C._dispatch_key_for_device(device_type)
    key = getattr(torch._C.DispatchKey, key_name)

    def autocast_kernel(*args):
        dtype = torch.get_autocast_dtype(device_type)
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(key)):
            return op(*(_cast(a, device_type, dtype) for a in args))

    # py_impl serves tracing (torch.compile, torch.export) under the Python dispatcher; the Library impl serves
    # eager calls through the C++ dispatcher.
    op.py_impl(key)(autocast_kernel)
    _lib.impl(opname, lambda _keyset, *args: autocast_kernel(*args), key_name, with_keyset=True)


for _name in _OPS:
    for _device_type in _DEVICE_TYPES:
        if torch._C._is_autocast_available(_device_type):
            _register(_name, _device_type)
