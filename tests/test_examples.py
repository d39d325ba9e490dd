"""The example scripts, a shortened demo and ``python -m fixedbranch`` run as a user runs them: in a subprocess."""

import pathlib
import subprocess
import sys

import pytest
import torch

import fixedbranch  # noqa: F401  (registers the operators)

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("seed*.py"))
DEMO_RESULTS = ROOT / "docs" / "demo_results.md"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_there_is_one_example_per_question():
    assert [p.name[:7] for p in EXAMPLES] == ["seed000", "seed001", "seed002", "seed003"]


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.stem)
def test_example_checks_pass(script):
    result = run(str(script))
    assert result.returncode == 0, result.stdout + result.stderr
    checks = [line for line in result.stdout.splitlines() if line.startswith("CHECK ")]
    assert checks, result.stdout
    assert all(line.endswith(" OK") for line in checks), result.stdout
    assert result.stdout.rstrip().endswith("all checks passed")


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """One short demo run, its stdout piped as in a log: (result, output folder)."""
    out = tmp_path_factory.mktemp("demo")
    return run("examples/demo.py", "--quick", "--epochs", "1", "--out", str(out)), out


def test_quick_demo_agrees_and_writes_figures(quick_demo):
    result, tmp_path = quick_demo
    assert result.returncode == 0, result.stdout + result.stderr
    assert ": AGREE" in result.stdout
    assert "the drift is float32 round-off amplified by training" in result.stdout
    assert "share of dL/dy sent back by each branch" in result.stdout
    for name in ("loss_curves.png", "branch_shares.png", "filter_bank_photo.png"):
        png = tmp_path / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{name} is not a PNG"
        assert png.stat().st_size > 10_000, f"{name} looks empty"
    # Its results file has the tables of the committed one (the README's block), row for row at epoch 1.
    written, committed = (path.read_text().splitlines() for path in (tmp_path / "results.md", DEMO_RESULTS))
    assert [line for line in written if line.startswith("epoch")] == [
        line for line in committed if line.startswith("epoch")
    ]


def test_demo_has_no_progress_bar_when_output_is_not_a_terminal(quick_demo):
    result, _ = quick_demo
    assert result.returncode == 0, result.stdout + result.stderr
    # tqdm redraws with carriage returns and reports a rate; a log gets neither.
    assert "\r" not in result.stdout + result.stderr
    assert "step/s" not in result.stdout + result.stderr and "s/step" not in result.stdout + result.stderr


def test_readme_demo_block_is_the_demos_results_file():
    readme = (ROOT / "README.md").read_text()
    begin, end = "<!-- demo:begin -->\n", "<!-- demo:end -->"
    assert readme.count(begin) == 1 and readme.count(end) == 1
    block = readme[readme.index(begin) + len(begin) : readme.index(end)]
    assert block == DEMO_RESULTS.read_text(), "README's Demo block differs: run python examples/demo.py --write-docs"


def test_module_main_reports_the_build():
    result = run("-m", "fixedbranch")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("fixedbranch ")
    labels = {line.split(":")[0].strip(): line.split(":", 1)[1].strip() for line in result.stdout.splitlines()[1:]
              if line.startswith("  ") and not line.startswith("   ")}
    assert labels["CPU kernels"].startswith("yes"), result.stdout
    # What the extension was built with, not what the dispatcher routes (the entry points serve every device).
    built_with_cuda = "cuda" in torch.ops.fixedbranch._kernel_devices()
    assert labels["CUDA kernels"].startswith("yes") == built_with_cuda, result.stdout
    assert {"package", "extension", "CUDA kernels", "torch", "CUDA device", "threads"} <= labels.keys()
