"""The one writer: a run's JSON, markdown and PNG, the cells every table shares, and the docs' benchmark blocks.

A result file is ``<out>/<study>/<stem>.json`` (and ``.md``, ``.png``), ``<stem>`` the device type, then the
allocator unless it is the default, then the preset unless it is "full": ``banks/cpu.json``,
``banks/cpu-warm-malloc.json``, ``suite/cpu-quick.json``. The committed results are those under
``benchmarks/results/``.

Docs. README.md and docs/design.md hold blocks between ``<!-- bench:<study>:<stem>[:<view>] begin -->`` and
``<!-- bench:<study>:<stem>[:<view>] end -->``. ``python -m benchmarks docs`` rewrites each from the committed
``benchmarks/results/<study>/<stem>.json`` (the study's ``docs(result, view)``, its table by default), and
tests/test_benchmarks.py fails when a block differs from what the committed results render.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCS = (ROOT / "README.md", ROOT / "docs" / "design.md")
MARKER = re.compile(r"(<!-- bench:([\w-]+):([\w-]+)(?::([\w-]+))? begin -->\n)(.*?)(<!-- bench:\2:\3(?::\4)? end -->)",
                    re.S)
MB = 1e6


def log(msg: str) -> None:
    """Progress, on stderr: stdout carries the markdown."""
    print(msg, file=sys.stderr, flush=True)


def stem(device_type: str, allocator: str, preset: str) -> str:
    return "-".join([device_type] + ([allocator] if allocator != "default" else []) + ([preset] if preset != "full"
                                                                                     else []))


# ---------------------------------------------------------------------------------------------------------------
# Cells.


def ms(timing: dict | None) -> str:
    """Best repetition (median), in ms."""
    return "-" if not timing else f"{timing['min_s'] * 1e3:.3g} ({timing['median_s'] * 1e3:.3g})"


def num(value, fmt: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, fmt) + suffix


def matched(row: dict) -> str:
    if "error" in row:
        return "error: " + row["error"][:60].replace("|", "/")
    check = row.get("check")
    if check is None:
        return "-"
    return "yes" if check["matched"] else f"NO ({check['max_rel_err']:.1e})"


def pct(case: dict, row: dict, metric: str) -> str:
    """``% of the bound`` of a row with the bound's kind: ``74% copy``."""
    value = row.get("pct_bound", {}).get(metric)
    return "-" if value is None else f"{value:.0f}% {case['bound'][metric]['kind']}"


def ratio(row: dict, base: dict | None, metric: str) -> str:
    """Time of ``base`` over time of ``row`` (best repetitions): the row's speed-up over ``base``."""
    a, b = row.get("times", {}).get(metric), (base or {}).get("times", {}).get(metric)
    return "-" if not a or not b else f"{b['min_s'] / a['min_s']:.2f}×"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def machine_line(result: dict) -> str:
    m, r, rates = result["machine"], result["machine"]["revision"], result["rates"]
    rev = f"{r['commit']}{' + uncommitted changes' if r['dirty'] else ''}" if r["commit"] else "no git"
    return (f"{m.get('gpu_name') or m['cpu_model']} ({m['cpu_isa'] or m['torch_cpu_capability']}, {m['logical_cpus']} "
            f"CPUs), {result['settings']['threads']} thread{'s' * (result['settings']['threads'] != 1)}, torch {m['torch_version']}, {m['allocator']} allocator, "
            f"{result['settings']['dtype']}; torch.mm {rates['fma_per_s'] / 1e9:.1f} G multiply-adds/s, DRAM copy "
            f"{rates['dram_bytes_per_s'] / 1e9:.1f} GB/s; revision {rev}, {m['date_utc']} UTC, preset "
            f"{result['preset']}")


LEGEND = "ms: best repetition (median); %: of the bound, max(copy bound, compute bound), its kind named."
METHOD = """\
Times: best repetition (median in parentheses) of blocks of back-to-back calls, the rows of a case timed in turn,
repetition by repetition. Every row's output and gradients were compared with the eager reference's
(fixedbranch.reference) before timing. % = percent of the bound, max(copy bound, compute bound), from best
repetitions, its kind named: the copy bound is the time `dst.copy_(src)` takes to move the bytes the pass must move,
src as large as the case's output, timed in turn with the rows; the compute bound is the bank plan's multiply-adds at
torch.mm's rate in the same run. The machine line gives the DRAM copy (256 MiB) beside it. Compare ratios within one
run, never times across runs."""


# ---------------------------------------------------------------------------------------------------------------
# Files.


def to_markdown(result: dict, study) -> str:
    title = f"# {result['study']}: {result['machine'].get('gpu_name') or result['machine']['cpu_model']}"
    return "\n\n".join([title, study.__doc__.strip(), study.table(result), machine_line(result), METHOD]) + "\n"


def plot(result: dict, path: Path) -> Path:
    """% of the bound per case and row (where the rows have one), else the best time, one panel per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "pct_bound" if any("pct_bound" in r for c in result["cases"] for r in c["rows"].values()) else "times"
    metrics = list(dict.fromkeys(m for c in result["cases"] for r in c["rows"].values() for m in r.get(key, {})))
    rows = list(dict.fromkeys(k for c in result["cases"] for k, r in c["rows"].items() if key in r))
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(8, 0.5 * len(result["cases"]) * len(rows) ** 0.5), 4 *
                                                                 len(metrics)), squeeze=False)
    width = 0.8 / max(len(rows), 1)
    for ax, metric in zip(axes[:, 0], metrics):
        for j, row in enumerate(rows):
            xs, ys = [], []
            for i, case in enumerate(result["cases"]):
                value = case["rows"].get(row, {}).get(key, {}).get(metric)
                if value is not None:
                    xs.append(i + (j - (len(rows) - 1) / 2) * width)
                    ys.append(value if key == "pct_bound" else value["min_s"] * 1e3)
            label = next(c["rows"][row]["label"] for c in result["cases"] if row in c["rows"])
            ax.bar(xs, ys, width, label=label)
        ax.set_yscale("log")
        ax.set_ylabel("% of the bound" if key == "pct_bound" else "ms (best)")
        ax.set_title(metric.replace("_", " "))
        ax.set_xticks(range(len(result["cases"])))
        ax.set_xticklabels([c["case"] for c in result["cases"]], rotation=30, ha="right", fontsize=7)
        if key == "pct_bound":
            ax.axhline(100, color="gray", lw=1, ls=":")
        ax.grid(True, axis="y", which="both", alpha=0.3)
    axes[0, 0].legend(fontsize=7, ncol=3)
    fig.suptitle(f"{result['study']} on {result['machine'].get('gpu_name') or result['machine']['cpu_model']}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write(result: dict, study, out: Path) -> list[Path]:
    folder = out / result["study"]
    folder.mkdir(parents=True, exist_ok=True)
    base = folder / stem(result["settings"]["device_type"], result["machine"]["allocator"], result["preset"])
    markdown = to_markdown(result, study)
    paths = [base.with_suffix(".json"), base.with_suffix(".md")]
    paths[0].write_text(json.dumps(result, indent=1, default=str) + "\n")
    paths[1].write_text(markdown)
    paths.append(plot(result, base.with_suffix(".png")))
    print(markdown)
    log("wrote " + ", ".join(str(p) for p in paths))
    return paths


# ---------------------------------------------------------------------------------------------------------------
# Docs.


def render_block(study_name: str, file_stem: str, view: str | None, doc: Path, studies: dict) -> str:
    """The markdown between one marker pair: the study's docs view of the committed result, and where it is from."""
    path = RESULTS / study_name / f"{file_stem}.json"
    if not path.exists():
        flags = " --warm-malloc" * ("warm-malloc" in file_stem) + " --device cuda" * file_stem.startswith("cuda")
        return (f"_No committed result yet: run `python -m benchmarks {study_name} --preset full{flags} --out "
                f"benchmarks/results`, then `python -m benchmarks docs`._\n")
    result = json.loads(path.read_text())
    study = studies[study_name]
    body = study.docs(result, view) if hasattr(study, "docs") else study.table(result)
    up, md = "" if doc.parent == ROOT else "../", f"benchmarks/results/{study_name}/{file_stem}"
    plot_line = f"\n\n![{study_name}]({up}{md}.png)" if view is None and path.with_suffix(".png").exists() else ""
    legend = getattr(study, "LEGEND", LEGEND)
    return (f"{body}\n\n_{legend} From [`{md}.md`]({up}{md}.md): {machine_line(result)}._{plot_line}\n")


def update_docs(studies: dict, check: bool = False) -> list[str]:
    """Rewrites every benchmark block of the docs from the committed results; with ``check``, rewrites nothing and
    returns the blocks that differ (as ``file: marker``)."""
    stale = []
    for doc in DOCS:
        if not doc.exists():
            continue
        text = doc.read_text()

        def fill(m: re.Match) -> str:
            begin, study_name, file_stem, view, old, end = m.groups()
            new = render_block(study_name, file_stem, view, doc, studies)
            if new != old:
                stale.append(f"{doc.relative_to(ROOT)}: {begin.strip()}")
            return begin + new + end

        new_text = MARKER.sub(fill, text)
        if not check and new_text != text:
            doc.write_text(new_text)
    return stale
