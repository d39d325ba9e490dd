"""Every study end to end on its quick preset, in a temporary folder: the result schema, every row checked against
the reference before timing, the bound's kind on every bounded row, the three files, and nothing else on stdout than
the markdown. And the docs' benchmark blocks are what the committed results render. No timing is asserted.

The studies run at once, as subprocesses on one thread each, so that the module takes about as long as the slowest."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import report
from benchmarks.studies import STUDIES

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    procs = {}
    for name in STUDIES:
        out = tmp_path_factory.mktemp(name)
        # Into files, not pipes: a pipe nobody reads yet would stall its writer once full.
        with open(out / "stdout", "w") as stdout, open(out / "stderr", "w") as stderr:
            procs[name] = out, subprocess.Popen([sys.executable, "-m", "benchmarks", name, "--out", str(out),
                                                 "--threads", "1"], cwd=ROOT, stdout=stdout, stderr=stderr)
    return {name: (out, proc.wait(timeout=1200)) for name, (out, proc) in procs.items()}


def result_of(runs, name: str) -> tuple[dict, str]:
    out, returncode = runs[name]
    assert returncode == 0, (out / "stderr").read_text()[-4000:]
    files = sorted(p.name for p in (out / name).iterdir())
    assert files == ["cpu-quick.json", "cpu-quick.md", "cpu-quick.png"], files
    assert (out / name / "cpu-quick.png").read_bytes().startswith(b"\x89PNG")
    stdout = (out / "stdout").read_text()
    assert stdout == (out / name / "cpu-quick.md").read_text() + "\n"  # the markdown, no profiler or compiler noise
    result = json.loads((out / name / "cpu-quick.json").read_text())
    assert {"schema", "study", "preset", "settings", "machine", "rates", "cases", "wall_time_s"} <= result.keys()
    assert result["study"] == name and result["preset"] == "quick" and result["settings"]["threads"] == 1
    assert result["machine"]["revision"]["commit"] and result["machine"]["revision"]["dirty"] in (True, False)
    assert result["rates"]["fma_per_s"] > 0 and result["rates"]["dram_bytes_per_s"] > 0
    for case in result["cases"]:
        for key, row in case["rows"].items():
            assert "error" not in row, (case["case"], key, row["error"])
            if "check" in row:
                assert row["check"]["matched"], (case["case"], key, row["check"])
            for metric, value in row.get("pct_bound", {}).items():
                assert value > 0 and case["bound"][metric]["kind"] in ("copy", "compute"), (case["case"], key)
    return result, stdout


def checked(case: dict) -> set[str]:
    """The rows of a case whose output and gradients were compared with the reference."""
    return {key for key, row in case["rows"].items() if row.get("check", {}).get("against")}


def test_suite(runs):
    result, stdout = result_of(runs, "suite")
    names = [c["case"] for c in result["cases"]]
    assert names[:2] == ["branch, contiguous", "layer, contiguous"]
    branch, layer = result["cases"][:2]
    impls = {"fused", "stacked", "kornia", "compile_reference", "compile_shifted", "operators"}
    assert checked(branch) == impls and "reference" in branch["rows"]
    assert checked(layer) == {"fused", "stacked", "kornia"}  # the quick preset compiles the branch stage only
    for metric in ("forward", "backward", "forward_backward"):
        assert metric in branch["rows"]["fused"]["pct_bound"] and metric in layer["rows"]["fused"]["times"]
    # The fused layer keeps nothing new alive for backward: it saves only x, the weight and the bank.
    assert layer["rows"]["fused"]["saved_tensors"]["new_bytes"] == 0
    assert layer["rows"]["reference"]["saved_tensors"]["new_bytes"] > 0
    assert all(checked(c) for c in result["cases"][2:])
    assert "| fused |" in stdout and "| FixedBranchConv2d |" in stdout and "**Sweeps**" in stdout


def test_blocks(runs):
    result, stdout = result_of(runs, "blocks")
    from benchmarks.studies import blocks

    assert [c["case"] for c in result["cases"]] == list(blocks.CASES)
    for case in result["cases"]:
        assert checked(case) == {"blocks"}, case["case"]
        for row in case["rows"].values():
            assert set(row["times"]) == {"forward_nograd", "forward_backward"}, case["case"]
    paths = {c["case"]: c["params"]["fused"] for c in result["cases"]}
    assert paths["harmonic 3x3 block"] and paths["PFM, f=16"] and not paths["PFM, f=1"]
    assert not paths["harmonic 3x3, use_bn=False"] and not paths["harmonic 3x3, dilation 2"]
    assert "| harmonic 3x3 block |" in stdout


def test_docs_blocks_render_the_committed_results():
    stale = report.update_docs(STUDIES, check=True)
    assert not stale, f"run `python -m benchmarks docs`: {stale}"


def test_docs_blocks_name_known_studies():
    for doc in report.DOCS:
        for match in report.MARKER.finditer(doc.read_text()):
            assert match.group(2) in STUDIES or match.group(2) in {"blocks", "wavelets"}, match.group(1)
