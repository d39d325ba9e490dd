"""Facts about the machine a run measured, and the file name its results go under."""

from __future__ import annotations

import os
import platform
import re
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
        "python_version": sys.version.split()[0],
        "platform": platform.platform(),
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        # Other processes competing for the cores make CPU timings meaningless: record how busy the machine was.
        "load_average_1_5_15": _load_average(),
        "cpu_busy_fraction_before_run": busy_fraction(),
        "device": str(device),
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
