"""The benchmark programs end to end on their quick presets: every baseline computes what the fused op computes
(checked by each program before it times anything), and the JSON, markdown and PNG are written. No timing is
asserted.

The four programs run at once, as subprocesses (the suite with its torch.compile baselines on 2 threads, the others
on 1), so that the module takes about as long as the slowest of them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMPLS = {"fused", "reference", "stacked", "compile_reference", "compile_shifted", "kornia"}
pytestmark = pytest.mark.slow

RUNS = {
    "suite": ["benchmarks", "--preset", "quick"],
    # --warm-malloc restarts the program under the warm allocator and writes into the warm-malloc/ subfolder.
    "options": ["benchmarks.options", "--preset", "quick", "--threads", "1", "--warm-malloc"],
    "banks": ["benchmarks.banks", "--preset", "quick", "--threads", "1", "--no-compile"],
    "blocks": ["benchmarks.blocks", "--preset", "quick", "--threads", "1"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    procs = {}
    logs = tmp_path_factory.mktemp("logs")
    for name, args in RUNS.items():
        out = tmp_path_factory.mktemp(name)
        # Into files, not pipes: a pipe nobody reads yet would stall its writer once full.
        with open(logs / f"{name}.out", "w") as stdout, open(logs / f"{name}.err", "w") as stderr:
            proc = subprocess.Popen([sys.executable, "-m", *args, "--out", str(out)], cwd=ROOT, stdout=stdout,
                                    stderr=stderr)
        procs[name] = (out, proc)
    done = {}
    for name, (out, proc) in procs.items():
        returncode = proc.wait(timeout=1200)
        done[name] = (out, (logs / f"{name}.out").read_text(), returncode, (logs / f"{name}.err").read_text())
    return done


def _result(runs, name, subfolder=""):
    out, stdout, returncode, stderr = runs[name]
    assert returncode == 0, stderr[-4000:]
    folder = out / subfolder
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    stems = {Path(n).stem for n in names}
    assert len(stems) == 1 and stems.pop().startswith("cpu-"), names
    assert {Path(n).suffix for n in names} == {".json", ".md", ".png"}, names
    png = next(folder.glob("*.png")).read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    return json.loads(next(folder.glob("*.json")).read_text()), stdout, names


def _all_points(results):
    yield from results["standard"]
    for sweep in results["sweeps"]:
        yield from sweep["results"]


def test_suite_files_are_named_by_device_and_written(runs):
    _, stdout, names = _result(runs, "suite")
    assert names[0].endswith("-quick.json"), names
    assert "## Headline: branch stage" in stdout and "| fused |" in stdout and "| FixedBranchConv2d |" in stdout
    assert "| memory allocator | default:" in stdout


def test_suite_json_holds_machine_settings_and_every_measurement(runs):
    results, _, _ = _result(runs, "suite")
    assert {"machine", "settings", "copy_bandwidth", "standard", "sweeps", "wall_time_s"} <= results.keys()
    assert {"cpu_model", "logical_cpus", "torch_version", "torch_threads", "allocator"} <= results["machine"].keys()
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
    # The registered operators timed on their own, forward and backward.
    assert {"forward", "backward"} <= branch["fused_op_alone"].keys()
    layer = results["standard"][1]["impls"]
    # The fused layer keeps nothing new alive for backward: it saves only x, the weight and the bank.
    assert layer["fused"]["saved_tensors"]["new_bytes"] == 0
    assert layer["reference"]["saved_tensors"]["new_bytes"] > 0


def test_suite_every_baseline_matched_the_fused_op_before_timing(runs):
    results, _, _ = _result(runs, "suite")
    checked = 0
    for res in _all_points(results):
        assert res["compared_against"] == "fused"
        for key, entry in res["impls"].items():
            assert "error" not in entry, (res["point"], key, entry.get("error"))
            assert entry["check"]["matched"], (res["point"], key, entry["check"])
            checked += 1
    assert checked >= 2 * len(IMPLS)


def test_options_rows_match_their_counterparts_and_run_under_the_warm_allocator(runs):
    from benchmarks import options

    results, stdout, names = _result(runs, "options", "warm-malloc")
    assert names[0].endswith("-options-quick.json"), names
    assert results["machine"]["allocator"].startswith("warm"), results["machine"]["allocator"]
    assert "## Output layout, contiguous" in stdout and f"## Stride {options.STRIDE}, contiguous" in stdout
    expected = {f"layout/{impl}/{key}" for key in options.LAYOUTS for impl in ("fused", "reference")}
    expected |= {f"stride/{key}" for key in options.STRIDED}
    for res in results["results"]:
        assert set(res["impls"]) == expected
        for key, entry in res["impls"].items():
            assert "error" not in entry, (key, entry.get("error"))
            assert entry["check"]["matched"], (key, entry["check"])
            assert set(entry["pct_copy_bound_best"]) == set(options.METRICS), key
        impls = res["impls"]
        # Without the identity the output, and so the copy bound, has K maps instead of K+1.
        k = results["point"]["k"]
        full, short = (impls[f"layout/fused/{key}"]["bytes_moved"]["forward"] for key in ("default", "no_identity"))
        itemsize_y = full - short  # one map: numel(y) * itemsize
        assert full == (k + 2) * itemsize_y and short == (k + 1) * itemsize_y
        assert impls["layout/fused/default"]["ratio"]["forward"] == 1.0


def test_banks_cover_every_bank_with_direct_factored_and_baselines(runs):
    from benchmarks import banks

    results, stdout, names = _result(runs, "banks")
    assert names[0].endswith("-banks-quick.json"), names
    assert results["matmul"]["fma_per_s"] > 0 and results["copy_bandwidth"]["best_bytes_per_s"] > 0
    assert [b["bank"] for b in results["banks"]] == list(banks.BANKS)
    for b in results["banks"]:
        assert set(b["impls"]) == {"direct", "factored", "reference", "kornia"}, b["bank"]
        k, s1, s2 = b["shape"]
        # A plan never costs more multiply-adds than the direct correlation (a tie goes direct).
        assert b["plan"]["direct_taps"] == k * s1 * s2 and b["plan"]["plan_taps"] <= k * s1 * s2
        assert b["auto"] in ("direct", "factored") or b["auto"].startswith("either"), b["auto"]
        for key, entry in b["impls"].items():
            assert "error" not in entry, (b["bank"], key, entry.get("error"))
            assert entry["check"]["matched"], (b["bank"], key, entry["check"])
            for kind in ("pct_copy_bound_best", "pct_roofline_best"):
                assert set(entry[kind]) == set(banks.METRICS), (b["bank"], key, kind)
            # The roofline is never below the copy bound, so its percentage is never below the copy bound's.
            assert entry["pct_roofline_best"]["forward"] >= entry["pct_copy_bound_best"]["forward"] * (1 - 1e-9)
    # The DCT 7x7 basis is separable filter by filter: its plan needs far fewer taps than the direct correlation.
    dct7 = next(b for b in results["banks"] if b["bank"] == "DCT 7x7")
    assert dct7["plan"]["plan_taps"] * 4 < dct7["plan"]["direct_taps"]
    assert "| DCT 7x7 | fused, factored |" in stdout


def test_blocks_time_both_formulations_after_their_checks(runs):
    from benchmarks import blocks

    results, stdout, names = _result(runs, "blocks")
    assert names[0].endswith("-blocks-quick.json"), names
    assert [b["block"] for b in results["blocks"]] == list(blocks.BLOCKS)
    for b in results["blocks"]:
        assert b["check"]["matched"], b["check"]
        assert len(b["rows"]) == 4 * len(b["cases"]), b["rows"]
        for row in b["rows"]:
            assert min(row["best_s"].values()) > 0 and row["speedup_best"] > 0 and row["speedup_median"] > 0
    assert "| harmonic (DCT) |" in stdout and "| pre-defined filters |" in stdout
