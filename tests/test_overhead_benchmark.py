"""The per-call overhead benchmark end to end on a few calls: every row and ratio reaches the JSON and the markdown,
and --accumulate adds a run's rounds to the earlier file's. No timing is asserted."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import overhead

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # two runs, each a second of machine facts plus torch's import

FEW = ["--repeat", "1", "--calls", "4", "--block-us", "20", "--warmup", "1", "--label", "test"]


def _run(out: Path, *extra: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.overhead", "--out", str(out), *FEW, *extra],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


@pytest.fixture(scope="module")
def run_twice(tmp_path_factory):
    out = tmp_path_factory.mktemp("overhead")
    _run(out)
    first = json.loads(next(out.glob("*.json")).read_text())
    stdout = _run(out, "--accumulate")
    return out, first, stdout


def test_files_are_named_by_device_and_label(run_twice):
    out, _, _ = run_twice
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 2 and all(n.startswith("cpu-") for n in names), names
    assert {Path(n).stem for n in names} == {Path(names[0]).stem} and names[0].endswith("-test.json"), names


def test_every_row_column_and_ratio_is_written(run_twice):
    out, _, stdout = run_twice
    results = json.loads(next(out.glob("*.json")).read_text())
    assert set(results["rows"]) == set(overhead.LABELS)
    for key, entry in results["rows"].items():
        for column in overhead.COLUMNS:
            assert entry[column]["us"] > 0 and entry[column]["cpu_us"] > 0, (key, column)
    assert {f"{num}/{den}" for num, den, _ in overhead.RATIOS} <= results["ratios"].keys()
    assert results["settings"]["threads"] == 1 and results["settings"]["shape"] == [1, 2, 4, 4]
    markdown = next(out.glob("*.md")).read_text()
    for text in (*overhead.LABELS.values(), *(label for _, _, label in overhead.RATIOS)):
        assert f"| {text} |" in markdown and f"| {text} |" in stdout, text


def test_accumulate_keeps_the_earlier_rounds(run_twice):
    out, first, _ = run_twice
    results = json.loads(next(out.glob("*.json")).read_text())
    assert first["settings"]["rounds"] == 1 and results["settings"]["rounds"] == 2
    for key, entry in results["rows"].items():
        for column in overhead.COLUMNS:
            for clock, best in (("round_medians_us", "us"), ("cpu_round_medians_us", "cpu_us")):
                rounds = entry[column][clock]
                assert rounds[0] == first["rows"][key][column][clock][0]
                assert len(rounds) == 2 and entry[column][best] == pytest.approx(min(rounds), abs=1e-3)
