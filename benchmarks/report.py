"""The markdown report (headline tables, sweeps, machine facts, method) and the JSON file."""

from __future__ import annotations

import json
from pathlib import Path

from .baselines import LABELS
from .presets import SWEEP_LABELS

MB = 1 << 20


def fmt_ms(timing: dict | None) -> str:
    if not timing:
        return "-"
    return f"{timing['median_s'] * 1e3:.3g} ± {timing['iqr_s'] * 1e3:.2g}"


def fmt_ms_best(timing: dict | None) -> str:
    """Median and, in parentheses, best repetition, in ms."""
    if not timing:
        return "-"
    return f"{timing['median_s'] * 1e3:.3g} ({timing['min_s'] * 1e3:.3g})"


def fmt_num(value, fmt: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, fmt) + suffix


def fmt_matched(entry: dict) -> str:
    if "error" in entry:
        return "error"
    check = entry.get("check")
    if check is None:
        return "-"
    return "yes" if check["matched"] else f"NO ({max(check['max_rel_err'].values()):.1e})"


def _mem(entry: dict) -> str:
    mem = entry.get("forward_memory")
    return "-" if not mem else f"{mem['peak_bytes'] / MB:.1f}"


def _load(avg) -> str:
    return "-" if not avg else f"{avg[0]:.2f}"


def _point_title(point: dict) -> str:
    return (f"{point['dtype']}, N={point['n']}, C={point['c']}, {point['h']}x{point['w']}, K={point['k']} "
            f"{point['s']}x{point['s']} filters, {point['padding_mode']} padding, {point['memory_format']}")


def _speedups(sp: dict) -> str:
    if not sp:
        return "-"
    return " / ".join(fmt_num(sp.get(m), ".2f", "x") for m in ("forward", "backward", "forward_backward"))


def _branch_row(label: str, entry: dict, memory: str, matched: str) -> str:
    pct = entry.get("pct_copy_bound", {})
    gbs = entry.get("bytes_per_s", {}).get("forward")
    return (
        f"| {label} | {fmt_ms(entry.get('forward'))} | {fmt_num(gbs and gbs / 1e9, '.3g')} "
        f"| {fmt_num(pct.get('forward'), '.1f')} | {fmt_ms(entry.get('backward'))} "
        f"| {fmt_num(pct.get('backward'), '.1f')} "
        f"| {fmt_ms(entry.get('forward_backward'))} | {fmt_num(pct.get('forward_backward'), '.1f')} "
        f"| {_speedups(entry.get('fused_speedup'))} | {memory} | {matched} |"
    )


def branch_table(res: dict) -> list[str]:
    lines = [
        f"Branch stage, {_point_title(res['point'])}; bank {', '.join(res['bank'])}. Times in ms, median ± IQR; "
        "% = percent of the copy bound; speed-up = time of the row / time of fused (forward / backward / fwd+bwd).",
        "",
        "| implementation | forward | fwd GB/s | fwd % | backward | bwd % | forward+backward | fwd+bwd % "
        "| fused speed-up | fwd peak MB | output matches fused |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in res["impls"].values():
        if "error" in entry:
            lines.append(f"| {entry['label']} | error: {entry['error'][:80]} |" + " |" * 9)
        else:
            lines.append(_branch_row(entry["label"], entry, _mem(entry), fmt_matched(entry)))
    if res.get("fused_op_alone"):
        lines.append(_branch_row("fused operators alone (no autograd)", res["fused_op_alone"], "", ""))
    cb = res["copy_bound_s"]
    lines.append(
        f"| copy bound ({res['bytes_moved']['forward'] / MB:.1f} MiB per pass) | {cb['forward'] * 1e3:.3g} | | 100 "
        f"| {cb['backward'] * 1e3:.3g} | 100 | {cb['forward_backward'] * 1e3:.3g} | 100 | | | |"
    )
    return lines


def layer_table(res: dict) -> list[str]:
    p = res["point"]
    lines = [
        f"Layer (conv {p['in_channels']}->{p['c']} 3x3 + branches), {_point_title(p)}. Times in ms, median ± IQR.",
        "",
        "| implementation | forward | backward | forward+backward | fused speed-up fwd+bwd | fwd peak MB "
        "| held for backward MB (new) | output and grads match fused |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for entry in res["impls"].values():
        if "error" in entry:
            lines.append(f"| {entry['label']} | error: {entry['error'][:80]} |" + " |" * 6)
            continue
        saved = entry.get("saved_tensors")
        sp = entry.get("fused_speedup", {})
        lines.append(
            f"| {entry['label']} | {fmt_ms(entry.get('forward'))} | {fmt_ms(entry.get('backward'))} "
            f"| {fmt_ms(entry.get('forward_backward'))} | {fmt_num(sp.get('forward_backward'), '.2f', 'x')} "
            f"| {_mem(entry)} "
            f"| {fmt_num(saved and saved['new_bytes'] / MB, '.1f')} | {fmt_matched(entry)} |"
        )
    return lines


def sweep_table(sweep: dict) -> list[str]:
    labels = {}
    for res in sweep["results"]:
        labels.update({k: e["label"] for k, e in res["impls"].items()})
    keys = [k for k in LABELS if k in labels]
    metric = "forward_backward" if any("forward_backward" in e for r in sweep["results"] for e in r["impls"].values()) \
        else "forward"
    lines = [
        f"Sweep over {SWEEP_LABELS[sweep['param']]}: {metric.replace('_', '+')} time in ms (median); fused % of the "
        f"copy bound, {metric.replace('_', '+')} through autograd and forward, backward of the operators alone; "
        "`-` = not measured at this point.",
        "",
        f"| {sweep['param']} | MiB per pass | " + " | ".join(labels[k] for k in keys)
        + " | fused % | operators alone % |",
        "|---" * (len(keys) + 4) + "|",
    ]
    for value, res in zip(sweep["values"], sweep["results"]):
        cells = []
        for k in keys:
            e = res["impls"].get(k, {})
            cells.append(f"{e[metric]['median_s'] * 1e3:.3g}" if metric in e else ("error" if "error" in e else "-"))
        pct = res["impls"].get("fused", {}).get("pct_copy_bound", {})
        alone = res.get("fused_op_alone", {}).get("pct_copy_bound", {})
        lines.append(
            f"| {value} | {res['bytes_moved']['forward'] / MB:.1f} | " + " | ".join(cells)
            + f" | {fmt_num(pct.get(metric), '.0f')} "
            + f"| {fmt_num(alone.get('forward'), '.0f')}, {fmt_num(alone.get('backward'), '.0f')} |"
        )
    return lines


def machine_lines(results: dict, extra: tuple[tuple[str, str], ...] = ()) -> list[str]:
    """The machine table: device, versions, copy bandwidth (when measured), allocator, load; ``extra`` rows go
    before the date."""
    m, s, cb = results["machine"], results["settings"], results.get("copy_bandwidth")
    rows = [
        ("device", m.get("gpu_name", m["cpu_model"]) if s["device"].startswith("cuda") else m["cpu_model"]),
        ("CPU", f"{m['cpu_model']}, {m['logical_cpus']} logical CPUs, {m['physical_cores']} physical cores"),
        ("torch", f"{m['torch_version']} ({m['torch_parallel_backend']}), {m['torch_threads']} threads"),
        ("kornia / python", f"{m['kornia_version']} / {m['python_version']}"),
    ]
    if m.get("fixedbranch_source"):
        rows.append(("fixedbranch source", m["fixedbranch_source"]))
    if cb:
        best = f", best {cb['best_bytes_per_s'] / 1e9:.1f} GB/s" if "best_bytes_per_s" in cb else ""
        rows.append(("copy bandwidth", f"{cb['bytes_per_s'] / 1e9:.1f} GB/s{best} (dst.copy_(src), "
                                       f"{cb['tensor_bytes'] / MB:.0f} MiB tensors, read + write bytes); into a fresh "
                                       f"allocation: {cb['fresh_alloc_bytes_per_s'] / 1e9:.1f} GB/s"))
    rows += [
        ("memory allocator", m.get("allocator", "-")),
        ("preset / dtype", f"{s['preset']} / {s['dtype']}"),
        ("wall time", f"{results['wall_time_s']:.0f} s"),
        ("load average (1 min) at start / end", f"{_load(m.get('load_average_1_5_15'))} / "
                                                f"{_load(m.get('load_average_at_end'))}"),
        ("CPU busy with other work just before the run", fmt_num(m.get("cpu_busy_fraction_before_run"), ".0%")),
        *extra,
        ("date (UTC)", m["date_utc"]),
    ]
    if "gpu_name" in m:
        rows.insert(1, ("GPU", f"{m['gpu_name']}, sm_{m['gpu_capability'].replace('.', '')}, "
                               f"{m['gpu_multiprocessors']} SMs, CUDA {m['cuda_version']}"))
    return ["| machine | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]


METHOD = """\
Method. Times are the median and inter-quartile range over repetitions of a block of back-to-back calls (warm-up
excluded; CUDA: events around the block after a synchronize); the best repetition is in the JSON (`min_s`). Forward
runs with autograd recording (inputs require grad), backward is `torch.autograd.grad` alone (its forward untimed),
forward+backward both. Before timing, every implementation's output and gradients are compared with the fused op's
(max |difference| over max |fused|, at the tolerance of the dtype). Copy bound: the fewest bytes a pass must move
(forward: read y, write the K+1 maps; backward: read the K+1 gradient maps, write dL/dy; itemsize x elements) over
the bandwidth of a plain `dst.copy_(src)` measured in the same run on tensors larger than the caches (a
memory-bandwidth bound: a problem small enough to stay in the last-level cache can beat it, >100%). Peak memory:
bytes allocated during the forward above what existed before (CUDA: max_memory_allocated; CPU: the allocation events
of torch.profiler(profile_memory=True) replayed in order); held for backward: the storages autograd saved
(saved_tensors_hooks) that did not exist before the forward. torch.compile runs are compiled (forward and backward)
before timing; compile time is in the JSON. The implementations of a point are timed in turn, repetition by
repetition, so that a change of the machine's load hits them alike; still, on a machine with few cores any other
busy process slows every multi-threaded kernel (a parallel region waits for its slowest thread's time slice): read
the load rows above before trusting small differences. The memory allocator row says whether freed memory is kept
(warm) or returned to the system, in which case every new output pays page faults (python -m benchmarks
--warm-malloc reruns under glibc settings that keep it and writes into the warm-malloc subfolder)."""


def to_markdown(results: dict) -> str:
    dev = results["machine"].get("gpu_name") if results["settings"]["device"].startswith("cuda") else None
    lines = [f"# fixedbranch benchmarks: {dev or results['machine']['cpu_model']}", ""]
    lines += machine_lines(results) + [""]
    lines += ["## Headline: branch stage", ""]
    for res in results["standard"]:
        if res["stage"] == "branch":
            lines += branch_table(res) + [""]
    lines += ["## Headline: layer", ""]
    for res in results["standard"]:
        if res["stage"] == "layer":
            lines += layer_table(res) + [""]
    if results["sweeps"]:
        lines += ["## Sweeps (branch stage)", ""]
        for sweep in results["sweeps"]:
            lines += sweep_table(sweep) + [""]
    lines += [METHOD, ""]
    return "\n".join(lines)


def write(results: dict, out_dir: Path, stem: str, markdown: str | None = None) -> dict[str, Path]:
    """Writes ``<stem>.json`` and ``<stem>.md`` (``markdown``, by default the suite's report of ``results``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{stem}.json", "md": out_dir / f"{stem}.md"}
    paths["json"].write_text(json.dumps(results, indent=1, default=str) + "\n")
    paths["md"].write_text(to_markdown(results) if markdown is None else markdown)
    return paths
