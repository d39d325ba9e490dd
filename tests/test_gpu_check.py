"""tools/gpu_check's argument handling and its dry run's summary (the full dry run runs in CI: .ci/run)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GPU_CHECK = ROOT / "tools" / "gpu_check"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(GPU_CHECK), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def test_unknown_step_is_refused():
    done = _run("--dry-run", "--steps", "info,benchmarks")
    assert done.returncode == 2 and "unknown step(s) benchmarks" in done.stderr


def test_dry_run_reports_every_step_with_the_summary_last(tmp_path):
    done = _run("--dry-run", "--steps", "info", "--out", str(tmp_path), "--revision", "test", "--archive",
                str(tmp_path / "results.tar.gz"))
    assert done.returncode == 0, done.stdout + done.stderr
    table = done.stdout.strip().splitlines()[-6:]
    assert [row.split("|")[1].strip() for row in table] == ["info", "build", "tests", "sanitizer", "errors", "bench"]
    (folder,) = tmp_path.glob("*-test")
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["dry_run"] and [s["status"] for s in summary["steps"]] == ["ok"] + ["skipped"] * 5
    assert (tmp_path / "results.tar.gz").stat().st_size > 0
