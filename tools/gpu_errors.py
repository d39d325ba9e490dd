"""Every error the CUDA side of fixedbranch can raise must reach Python as an exception with its message.

One device build once turned every TORCH_CHECK into a segfault. This runs each error path on CUDA tensors, under
both kernel generations, in this one process: the argument checks of every operator (docs/design.md, "Bad input"),
the generation switch, and errors raised from nvcc-compiled host code (fixedbranch._cuda_error_probe: a value
check, a runtime check, a failed launch, a failed runtime call). After the errors a normal call must still give
the CPU's result, so no error left the device or the library in a bad state. Prints one line per case; exits 1 if
any case did not raise what it should, and dies by its signal if one crashes (tools/gpu_check reports which).

    python tools/gpu_errors.py
"""

from __future__ import annotations

import os
import sys

import torch

import fixedbranch as fb

ops = torch.ops.fixedbranch


def cases(device: str):
    """(name, callable, exception type, text the message must hold)."""
    y = torch.randn(2, 3, 8, 9, device=device)
    bank = torch.randn(2, 3, 3, device=device)
    g = torch.randn(2, 9, 8, 9, device=device)
    fwd = ops.fixed_branch
    bwd = ops._fixed_branch_backward
    yield "y not 4-D", lambda: fwd(y[0], bank, "zeros", [], True, "branch", [1, 1]), ValueError, "4 dimensions"
    yield "bank not 3-D", lambda: fwd(y, bank[0], "zeros", [], True, "branch", [1, 1]), ValueError, "3 dimensions"
    yield "int dtype", lambda: fwd(y.int(), bank, "zeros", [], True, "branch", [1, 1]), ValueError, "float"
    yield "bank on the CPU", lambda: fwd(y, bank.cpu(), "zeros", [], True, "branch", [1, 1]), ValueError, \
        "same device"
    yield "empty bank", lambda: fwd(y, bank[:0], "zeros", [], True, "branch", [1, 1]), ValueError, "non-empty bank"
    yield "reflect too large", lambda: fwd(y[:, :, :1], bank, "reflect", [], True, "branch", [1, 1]), ValueError, \
        "reflect padding"
    yield "circular twice", lambda: fwd(y[:, :, :1, :1], torch.randn(1, 5, 5, device=device), "circular", [], True,
                                        "branch", [1, 1]), ValueError, "circular padding"
    yield "stop out of range", lambda: bwd(g, bank, "zeros", [3], True, "branch", [1, 1], [8, 9]), ValueError, \
        "stop_gradient"
    yield "stop 0 without identity", lambda: bwd(g[:, :6], bank, "zeros", [0], False, "branch", [1, 1], [8, 9]), \
        ValueError, "stop_gradient"
    yield "stride < 1", lambda: fwd(y, bank, "zeros", [], True, "branch", [0, 1]), ValueError, "stride"
    yield "unknown order", lambda: fwd(y, bank, "zeros", [], True, "pixel", [1, 1]), ValueError, "order"
    yield "unknown padding mode", lambda: fwd(y, bank, "mirror", [], True, "branch", [1, 1]), ValueError, \
        "padding_mode"
    yield "channels not a multiple", lambda: bwd(g[:, :8], bank, "zeros", [], True, "branch", [1, 1], [8, 9]), \
        ValueError, "multiple"
    yield "input_size inconsistent", lambda: bwd(g, bank, "zeros", [], True, "branch", [2, 2], [8, 9]), \
        ValueError, "input_size"
    yield "bank requires grad", lambda: fb.fixed_branch(y, bank.clone().requires_grad_()), ValueError, \
        "bank requires grad"
    yield "conv dtype mismatch", lambda: fb.fixed_branch_conv2d(y, torch.randn(4, 3, 3, 3, device=device).double(),
                                                                None, bank), ValueError, "dtype"
    yield "probe value", lambda: ops._cuda_error_probe("value"), ValueError, "a value error raised in CUDA host code"
    yield "probe check", lambda: ops._cuda_error_probe("check"), RuntimeError, "a runtime error raised in CUDA host"
    yield "probe launch", lambda: ops._cuda_error_probe("launch"), RuntimeError, "CUDA error"
    yield "probe api", lambda: ops._cuda_error_probe("api"), RuntimeError, "CUDA error"


def run_case(name, fn, exc_type, text) -> bool:
    print(f"gpu_errors: {name} ...", end=" ", flush=True)  # before the call: a crash names its case
    try:
        fn()
    except exc_type as exc:
        if text.lower() not in str(exc).lower():
            print(f"FAILED: the message lacks {text!r}: {exc}")
            return False
        print("ok")
        return True
    except Exception as exc:  # noqa: BLE001  (the wrong exception type is the finding)
        print(f"FAILED: {type(exc).__name__} instead of {exc_type.__name__}: {exc}")
        return False
    print(f"FAILED: no exception (expected {exc_type.__name__})")
    return False


def still_works(device: str) -> bool:
    gen = torch.Generator().manual_seed(1)
    y = torch.randn(2, 3, 8, 9, generator=gen)
    bank = torch.randn(2, 3, 3, generator=gen)
    out = ops.fixed_branch(y.to(device), bank.to(device), "reflect", [], True, "branch", [1, 1])
    expected = ops.fixed_branch(y, bank, "reflect", [], True, "branch", [1, 1])
    ok = (out.cpu() - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()
    print(f"gpu_errors: a normal call after the errors ... {'ok' if ok else 'FAILED: wrong result'}", flush=True)
    return ok


def main() -> int:
    device = "cuda"
    torch.cuda.init()
    failures = 0
    for generation in ("verified", "next"):
        os.environ["FIXEDBRANCH_CUDA_KERNELS"] = generation
        print(f"gpu_errors: FIXEDBRANCH_CUDA_KERNELS={generation}", flush=True)
        for case in cases(device):
            failures += not run_case(*case)
        failures += not still_works(device)
    os.environ["FIXEDBRANCH_CUDA_KERNELS"] = "nxet"
    failures += not run_case("unknown generation", lambda: ops.fixed_branch(
        torch.randn(1, 1, 4, 4, device=device), torch.randn(1, 3, 3, device=device), "zeros", [], True, "branch",
        [1, 1]), ValueError, "FIXEDBRANCH_CUDA_KERNELS")
    os.environ["FIXEDBRANCH_CUDA_KERNELS"] = "verified"
    print(f"gpu_errors: {failures} failure(s)", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
