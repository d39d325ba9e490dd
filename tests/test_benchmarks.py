"""The benchmark suite end to end on its quick preset: every baseline computes what the fused op computes (checked
by the suite before it times anything), and the JSON, markdown and PNG are written. No timing is asserted."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMPLS = {"fused", "reference", "stacked", "compile_reference", "compile_shifted", "kornia"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--preset", "quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, proc.stdout


def _all_points(results):
    yield from results["standard"]
    for sweep in results["sweeps"]:
        yield from sweep["results"]


@pytest.mark.slow
def test_files_are_named_by_device_and_written(quick_run):
    out, stdout = quick_run
    names = sorted(p.name for p in out.iterdir())
    stems = {Path(n).stem for n in names}
    assert len(stems) == 1 and stems.pop().startswith("cpu-"), names
    assert {Path(n).suffix for n in names} == {".json", ".md", ".png"}
    png = next(out.glob("*.png")).read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert "## Headline: branch stage" in stdout and "| fused |" in stdout and "| FixedBranchConv2d |" in stdout


@pytest.mark.slow
def test_json_holds_machine_settings_and_every_measurement(quick_run):
    out, _ = quick_run
    results = json.loads(next(out.glob("*.json")).read_text())
    assert {"machine", "settings", "copy_bandwidth", "standard", "sweeps", "wall_time_s"} <= results.keys()
    assert {"cpu_model", "logical_cpus", "torch_version", "torch_threads"} <= results["machine"].keys()
    assert results["copy_bandwidth"]["bytes_per_s"] > 0
    assert [r["stage"] for r in results["standard"]] == ["branch", "layer"]
    assert {s["param"] for s in results["sweeps"]} == {"k", "c", "h", "s", "n"}
    for res in results["standard"]:
        assert set(res["impls"]) == IMPLS, res["stage"]
        for key, entry in res["impls"].items():
            assert {"forward", "backward", "forward_backward", "forward_memory", "saved_tensors"} <= entry.keys(), key
            if key != "fused":
                assert set(entry["fused_speedup"]) == {"forward", "backward", "forward_backward"}
    branch = results["standard"][0]
    assert {"bytes_moved", "copy_bound_s"} <= branch.keys()
    assert {"bytes_per_s", "pct_copy_bound"} <= branch["impls"]["fused"].keys()
    layer = results["standard"][1]["impls"]
    # The fused layer keeps nothing new alive for backward: it saves only x, the weight and the bank.
    assert layer["fused"]["saved_tensors"]["new_bytes"] == 0
    assert layer["reference"]["saved_tensors"]["new_bytes"] > 0


@pytest.mark.slow
def test_every_baseline_matched_the_fused_op_before_timing(quick_run):
    out, _ = quick_run
    results = json.loads(next(out.glob("*.json")).read_text())
    checked = 0
    for res in _all_points(results):
        assert res["compared_against"] == "fused"
        for key, entry in res["impls"].items():
            assert "error" not in entry, (res["point"], key, entry.get("error"))
            assert entry["check"]["matched"], (res["point"], key, entry["check"])
            checked += 1
    assert checked >= 2 * len(IMPLS)
