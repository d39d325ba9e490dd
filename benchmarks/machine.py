"""Facts about the machine a run measured (CPU model and ISA, cores, torch, the committed revision), the memory
allocator it ran under, and restarting under a warm allocator."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# glibc settings that keep freed memory in the process (no munmap of large blocks, no trimming), so that a new output
# reuses pages already touched instead of faulting in fresh ones: the "warm" allocator jemalloc and tcmalloc give.
# glibc reads them once, at process start.
WARM_MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=2147483647:glibc.malloc.trim_threshold=4294967295"
PRELOADED = ("jemalloc", "tcmalloc", "mimalloc")


def _lscpu() -> dict[str, str]:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def cpu_model() -> str:
    return _lscpu().get("Model name", "").strip() or platform.processor() or platform.machine() or "unknown cpu"


def revision() -> dict:
    """The committed revision of the tree (``git rev-parse HEAD``) and whether the tree differed from it (tracked
    files modified): a result measured a commit, or a commit plus uncommitted changes. Results written since the
    commit (benchmarks/results/, as ``make bench`` writes one study after another) do not count: they change no
    code that is measured."""

    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "--short=12", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def allocator() -> str:
    """The CPU allocator this process started with: ``default`` (glibc as it comes), ``warm-malloc`` (glibc keeping
    freed memory) or the preloaded library's name."""
    preload = os.environ.get("LD_PRELOAD", "")
    found = next((name for name in PRELOADED if name in preload), None)
    if found:
        return found
    return "warm-malloc" if "mmap_threshold" in os.environ.get("GLIBC_TUNABLES", "") else "default"


def restart_with_warm_malloc(argv: list[str]) -> None:
    """Restarts ``python -m benchmarks argv`` under the warm glibc settings unless a warm allocator already runs;
    returns only in that case. glibc reads its tunables at start, so a running process cannot switch."""
    if allocator() != "default":
        return
    env = dict(os.environ)
    env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES"), WARM_MALLOC_TUNABLES]))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "benchmarks", *argv], env)


def busy_fraction(seconds: float = 1.0) -> float | None:
    """Share of all CPUs' time spent busy over the next ``seconds`` while this process sleeps (/proc/stat): other
    processes' load, which slows every multi-threaded kernel on a machine with few cores."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return sum(values), values[3] + (values[4] if len(values) > 4 else 0)

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return round(1.0 - (idle1 - idle0) / max(total1 - total0, 1), 3)


def facts(device: torch.device) -> dict:
    import fixedbranch

    lscpu = _lscpu()
    info = {
        "cpu_model": cpu_model(),
        "cpu_isa": getattr(fixedbranch._C, "cpu_isa", None),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "logical_cpus": os.cpu_count(),
        "cores_per_socket": lscpu.get("Core(s) per socket", "").strip() or None,
        "l3_cache": lscpu.get("L3 cache", "").strip() or None,
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python_version": sys.version.split()[0],
        "fixedbranch_version": fixedbranch.__version__,
        "revision": revision(),
        "allocator": allocator(),
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "cpu_busy_before_run": busy_fraction(),
        "device": str(device),
    }
    try:
        import kornia

        info["kornia_version"] = kornia.__version__
    except ImportError:
        info["kornia_version"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu_name=props.name, gpu_capability=f"{props.major}.{props.minor}",
                    gpu_multiprocessors=props.multi_processor_count, cuda_version=torch.version.cuda)
    return info


def device_name(facts: dict) -> str:
    return facts.get("gpu_name") or facts["cpu_model"]


def slug(name: str) -> str:
    """``amd-epyc``, ``nvidia-h100-80gb-hbm3``: a model name for file names and titles."""
    name = re.sub(r"\((r|tm)\)|\bcpu\b|\bprocessor\b|\d+-core", " ", name.lower())
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "unknown"
