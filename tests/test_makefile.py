"""The Makefile reinstalls when TORCH or a dependency pin changes, and only then. Runs make with PY=/bin/true in a
scratch VENV, so that the recipes run without installing anything."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None or not Path("/bin/true").exists(),
                                reason="needs make and /bin/true")


def _make(venv: Path, *args: str, dry_run: bool = True) -> str:
    command = ["make", "-C", str(ROOT), *(["-n"] if dry_run else []), f"VENV={venv}", "PY=/bin/true", *args, "build"]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def test_make_reinstalls_when_torch_or_a_dependency_pin_changes(tmp_path):
    venv = tmp_path / "venv"
    venv.mkdir()
    assert 'pip install -q "torch==2.13.0"' in _make(venv)  # nothing installed yet
    _make(venv, dry_run=False)  # "installs" (PY=/bin/true) and records the pins
    assert "pip install" not in _make(venv)  # the same pins: nothing to do
    assert 'pip install -q "torch==2.14.1"' in _make(venv, "TORCH=torch==2.14.1")
    assert "pip install -q --no-build-isolation -e ." in _make(venv, "TORCH=torch==2.14.1")  # rebuilt against it
    assert "pip install" in _make(venv, "DEPS=ninja pytest")
    _make(venv, "TORCH=torch==2.14.1", dry_run=False)
    assert "pip install" not in _make(venv, "TORCH=torch==2.14.1")
    assert 'pip install -q "torch==2.13.0"' in _make(venv)  # and back
    stamps = list(venv.glob(".deps-*"))
    assert len(stamps) == 1 and "torch==2.14.1" in stamps[0].read_text()
