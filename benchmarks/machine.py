"""Facts about the machine a run measured, the memory allocator it ran under, and the file name its results go
under."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import time
from datetime import datetime, timezone

import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def _physical_cores() -> int | None:
    # Distinct (physical id, core id) pairs; None where /proc/cpuinfo does not say.
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return None
    pairs = set()
    for block in text.split("\n\n"):
        phys = re.search(r"^physical id\s*:\s*(\d+)", block, re.M)
        core = re.search(r"^core id\s*:\s*(\d+)", block, re.M)
        if phys and core:
            pairs.add((phys.group(1), core.group(1)))
    return len(pairs) or None


def facts(device: torch.device) -> dict:
    import fixedbranch

    try:
        import kornia

        kornia_version = kornia.__version__
    except ImportError:
        kornia_version = "not installed"

    info = {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": _physical_cores(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "torch_parallel_backend": _parallel_backend(),
        "kornia_version": kornia_version,
        "fixedbranch_version": fixedbranch.__version__,
        "fixedbranch_source": source_revision(),
        "python_version": sys.version.split()[0],
        "platform": platform.platform(),
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        # Other processes competing for the cores make CPU timings meaningless: record how busy the machine was.
        "load_average_1_5_15": _load_average(),
        "cpu_busy_fraction_before_run": busy_fraction(),
        "device": str(device),
        "allocator": allocator(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu_name=props.name,
            gpu_capability=f"{props.major}.{props.minor}",
            gpu_multiprocessors=props.multi_processor_count,
            gpu_memory_bytes=props.total_memory,
            cuda_version=torch.version.cuda,
        )
    return info


# glibc settings that keep freed memory in the process (no munmap of large blocks, no trimming of the heap), so that
# a new output reuses pages already touched instead of faulting in fresh zeroed ones: the "warm" allocator that
# jemalloc and tcmalloc give by default. glibc reads them once, at process start.
WARM_MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=2147483647:glibc.malloc.trim_threshold=4294967295"
WARM_MALLOC_DIR = "warm-malloc"  # the results subfolder of runs under a warm allocator


def warm_malloc() -> bool:
    """Whether this process runs under an allocator that keeps freed memory (see :func:`allocator`)."""
    return "mmap_threshold" in os.environ.get("GLIBC_TUNABLES", "") or any(
        name in os.environ.get("LD_PRELOAD", "") for name in ("jemalloc", "tcmalloc", "mimalloc"))


def allocator() -> str:
    """The CPU memory allocator of this process, as the environment chose it at start."""
    preload = os.environ.get("LD_PRELOAD", "")
    for name in ("jemalloc", "tcmalloc", "mimalloc"):
        if name in preload:
            return f"warm: {name} (LD_PRELOAD={preload})"
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if "mmap_threshold" in tunables:
        return f"warm: glibc malloc keeping freed memory (GLIBC_TUNABLES={tunables})"
    return "default: glibc malloc (large blocks go back to the system when freed; new outputs fault in fresh pages)"


def reexec_with_warm_malloc(module: str, argv: list[str]) -> None:
    """Restarts this program (``python -m module argv``) under the warm glibc settings, unless it already runs under
    a warm allocator; returns only in that case. glibc reads its tunables at start, so a running process cannot
    switch."""
    if warm_malloc():
        return
    env = dict(os.environ)
    env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES"), WARM_MALLOC_TUNABLES]))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", module, *argv], env)


def source_revision() -> str | None:
    """The commit of the source tree the extension was built from (``git describe --always --dirty``) and the time
    the extension was built, or None outside a git checkout: which kernels a result measured."""
    import fixedbranch

    root = os.path.dirname(os.path.dirname(os.path.abspath(fixedbranch.__file__)))
    try:
        rev = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=root, capture_output=True, text=True,
                             timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    built = getattr(fixedbranch._C, "__file__", None)
    if built and os.path.exists(built):
        stamp = datetime.fromtimestamp(os.path.getmtime(built), timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        rev += f", extension built {stamp} UTC"
    return rev or None


def busy_fraction(seconds: float = 1.0) -> float | None:
    """Fraction of all CPUs' time spent busy over the next ``seconds`` (from /proc/stat), None off Linux.

    Measured while this process sleeps, so it is the other processes' share: on a machine with few cores, any of
    it slows every multi-threaded kernel (a parallel region waits for its slowest thread's time slice).
    """

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        return sum(values), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return round(1.0 - (idle1 - idle0) / max(total1 - total0, 1), 3)


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _parallel_backend() -> str:
    for line in torch.__config__.parallel_info().splitlines():
        if line.startswith("ATen parallel backend"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def slug(device: torch.device) -> str:
    """``cpu-amd-epyc``, ``cuda-nvidia-h100-80gb-hbm3``: the device type and its model, for file names."""
    name = re.sub(r"\((r|tm)\)|\bcpu\b|\bprocessor\b|\d+-core", " ", device_name(device).lower())
    name = re.sub(r"[^a-z0-9]+", "-", name).strip("-")
    return f"{device.type}-{name or 'unknown'}"
