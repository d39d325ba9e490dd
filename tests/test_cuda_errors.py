"""Errors raised on the CUDA side reach Python as exceptions with their messages, under both kernel generations:
tools/gpu_errors.py runs every case in a child process, so that a crash (the old failure where a device build turned
every TORCH_CHECK into a segfault) fails this test instead of ending the test run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.needs_cuda

ROOT = Path(__file__).resolve().parents[1]


def test_every_cuda_error_raises_with_its_message():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.pop("FIXEDBRANCH_CUDA_KERNELS", None)
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_errors.py")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "gpu_errors: 0 failure(s)" in done.stdout
