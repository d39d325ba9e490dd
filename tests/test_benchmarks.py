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
    assert "USDT" not in (out / "stderr").read_text()
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


def test_banks(runs):
    from benchmarks.studies import banks

    result, stdout = result_of(runs, "banks")
    seen = {(c["params"]["bank"], c["params"]["stride"]) for c in result["cases"]}
    assert seen == {(b, 1) for b in banks.BANKS} | {(b, 2) for b in banks.STRIDED}
    for case in result["cases"]:
        p = case["params"]
        assert {"operators", "fill", "sum"} <= case["rows"].keys() and "operators" in checked(case), case["case"]
        for metric in ("forward", "backward"):
            b = case["bound"][metric]
            assert b["s"] == max(b["copy_s"], b["compute_s"]) and b["dram_copy_s"] > 0, (case["case"], b)
            assert metric in case["rows"]["operators"]["pct_bound"]
        # A plan never costs more multiply-adds than the direct correlation; where it costs fewer, both paths run.
        assert p["plan_taps"] <= p["direct_taps"] == p["k"] * p["s"][0] * p["s"][1]
        assert ({"direct", "factored"} <= checked(case)) == (p["stride"] == 1 and p["plan_taps"] < p["direct_taps"])
    dct7 = next(c for c in result["cases"] if c["params"]["bank"] == "DCT 7x7")
    assert dct7["params"]["plan_taps"] * 4 < dct7["params"]["direct_taps"]
    assert sum("kornia" in checked(c) for c in result["cases"]) == len(banks.BANKS)
    assert "| fused operators |" in stdout and "out.fill_(1)" in stdout


def test_options(runs):
    from benchmarks.studies import options

    result, _ = result_of(runs, "options")
    assert [c["params"]["option"] for c in result["cases"]] == list(options.OPTIONS)
    for case in result["cases"]:
        assert "fused" in checked(case) and set(case["rows"]["fused"]["pct_bound"]) == set(options.METRICS)
    # Without the identity the output, and so the copy bound, has K maps instead of K+1; stride 2 a quarter of them.
    no_identity, channel, _, stride = (c["working_set"] for c in result["cases"])
    assert no_identity * 5 == channel * 4 and stride * 4 == channel and "subsample" in checked(result["cases"][3])


def test_overhead(runs):
    from benchmarks.studies import overhead

    result, stdout = result_of(runs, "overhead")
    rows = result["cases"][0]["rows"]
    assert checked(result["cases"][0]) == {"fixed_branch", "fixed_branch_f32", "module", "raw_op", "depthwise_cat",
                                          "conv_layer", "conv_depthwise_cat"}
    assert set(rows["module"]["times"]) == set(overhead.METRICS)
    assert rows["fixed_branch"]["times"]["forward"]["reps"] == 3
    for _, _, label in overhead.RATIOS:
        assert f"| {label} |" in stdout


def test_allocation(runs):
    result, stdout = result_of(runs, "allocation")
    for case in result["cases"]:
        assert checked(case) == {"fused"}
        assert set(case["rows"]["fused"]["times"]) == {"forward", "backward", "forward_backward"}
        assert case["rows"]["fused"]["times"]["forward"]["iters"] == 1  # one call a repetition: every output fresh
    assert "| forward / clone |" in stdout


def test_docs_blocks_render_every_study(runs, monkeypatch):
    """Each study's docs block, from its quick result: the table, its source and the machine line."""
    doc = report.ROOT / "README.md"  # only its place is read: the links are relative to it
    for name in STUDIES:
        monkeypatch.setattr(report, "RESULTS", runs[name][0])
        for view in [None] + (["rates"] if name == "banks" else []) + (["sweeps"] if name == "suite" else []):
            block = report.render_block(name, "cpu-quick", view, doc, STUDIES)
            assert "|---|" in block or view == "rates", (name, view)
            assert "torch.mm" in block and f"(benchmarks/results/{name}/cpu-quick.md)" in block, (name, view)

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


def test_wavelets(runs):
    result, stdout = result_of(runs, "wavelets")
    names = [c["case"] for c in result["cases"]]
    assert names == ["transform db1", "inverse db1", "transform db2", "inverse db2", "WTConv2d, 1 level",
                     "WTConv2d, 2 levels"]
    for case in result["cases"]:
        assert checked(case) == ({"blocks"} if case["case"].startswith("WTConv2d") else {"fused"}), case["case"]
        assert "forward_backward" in case["rows"]["reference"]["times"]
    assert all("forward_backward" in c["rows"]["fused"]["pct_bound"] for c in result["cases"][:4])
    assert all("forward_backward" in c["rows"]["convs"]["times"] for c in result["cases"][4:])
    assert "| transform db1 |" in stdout


def test_docs_blocks_render_the_committed_results():
    stale = report.update_docs(STUDIES, check=True)
    assert not stale, f"run `python -m benchmarks docs`: {stale}"


def test_docs_blocks_name_known_studies():
    for doc in report.DOCS:
        for match in report.MARKER.finditer(doc.read_text()):
            assert match.group(2) in STUDIES or match.group(2) in {"blocks", "wavelets"}, match.group(1)
