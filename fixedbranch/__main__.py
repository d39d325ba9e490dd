"""``python -m fixedbranch``: the version and what this installation was built with, for bug reports."""

from __future__ import annotations

import os
import sys

import torch

import fixedbranch

def _has_kernel(device: str) -> bool:
    # The entry points are registered for every device key; the extension lists the devices it has kernels for.
    return device.lower() in torch.ops.fixedbranch._kernel_devices()


def _cuda_device() -> str:
    if torch.version.cuda is None:
        return "none (this torch is a CPU build)"
    if not torch.cuda.is_available():
        return f"none visible (torch built with CUDA {torch.version.cuda})"
    names = {torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())}
    major, minor = torch.cuda.get_device_capability()
    return f"{torch.cuda.device_count()} x {', '.join(sorted(names))} (sm_{major}{minor}), CUDA {torch.version.cuda}"


def _threads() -> list[str]:
    # parallel_info's head names the backend (OpenMP or native) and its thread counts; the BLAS lines are torch's.
    info = torch.__config__.parallel_info().splitlines()
    head = [line.strip() for line in info[:5] if line.strip()]
    backend = [line.strip() for line in info if line.startswith("ATen parallel backend")]
    return [f"torch.get_num_threads() = {torch.get_num_threads()}"] + head + backend


def _row(label: str, value: str) -> str:
    return f"  {label + ':':<14}" + value.replace("\n", "\n" + " " * 16)


def report() -> tuple[list[str], bool]:
    """Lines to print, and whether the compiled extension loaded."""
    lines = [f"fixedbranch {fixedbranch.__version__}", _row("package", os.path.dirname(fixedbranch.__file__))]
    try:
        from fixedbranch import _C
    except ImportError as exc:
        built = False
        lines.append(_row("extension", "NOT BUILT"))
        lines.append(_row("to build", str(getattr(fixedbranch, "_BUILD_ERROR", exc))))
    else:
        built = True
        lines.append(_row("extension", _C.__file__))
        isa = getattr(_C, "cpu_isa", None)
        cpu = "yes" + (f" (vector ISA: {isa})" if isa else "") if _has_kernel("CPU") else "no"
        lines.append(_row("CPU kernels", cpu))
        listed, owned = getattr(_C, "cpu_cache_bytes", 0), getattr(_C, "cpu_owned_cache_bytes", 0)
        if listed:
            lines.append(_row("CPU cache", f"{listed / 2**20:g} MiB last level, {owned / 2**20:g} MiB counted on "
                              "(streaming stores beyond it, prefetching beyond twice it or the last level)"))
        if _has_kernel("CUDA"):
            lines.append(_row("CUDA kernels", "yes"))
            archs = getattr(_C, "cuda_arch_list", None)
            if archs:
                lines.append(_row("CUDA archs", f"{archs} (as built)"))
            else:
                lines.append(_row("CUDA archs", "not recorded by the build; torch's own list: "
                                  + " ".join(torch.cuda.get_arch_list())))
        else:
            lines.append(_row("CUDA kernels", "no (built without CUDA)"))
    lines.append(_row("torch", f"{torch.__version__} at {os.path.dirname(torch.__file__)}"))
    lines.append(_row("CUDA device", _cuda_device()))
    lines.append(_row("threads", "\n".join(_threads())))
    lines.append(_row("python", f"{sys.version.split()[0]} ({sys.executable})"))
    return lines, built


def main() -> int:
    lines, built = report()
    print("\n".join(lines))
    return 0 if built else 1


if __name__ == "__main__":
    sys.exit(main())
