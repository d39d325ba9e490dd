"""One PNG of four panels from a run's results: time and % of the copy bound against bytes moved, and the fused
op's speed-up against K and against the filter size."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
from matplotlib.ticker import FuncFormatter  # noqa: E402

from .baselines import LABELS  # noqa: E402

COLORS = {
    "fused": "tab:red",
    "reference": "tab:blue",
    "stacked": "tab:cyan",
    "compile_reference": "tab:green",
    "compile_shifted": "tab:olive",
    "kornia": "tab:purple",
}
METRIC = "forward_backward"


def _size_points(results: dict) -> list[dict]:
    """Branch results that differ only in size (K and S as the standard point's), one per byte count."""
    std = next(r for r in results["standard"] if r["stage"] == "branch")
    pts = {std["bytes_moved"][METRIC]: std}
    for sweep in results["sweeps"]:
        if sweep["param"] in ("c", "h", "n"):
            for r in sweep["results"]:
                pts.setdefault(r["bytes_moved"][METRIC], r)
    return [pts[b] for b in sorted(pts)]


def _series(points: list[dict], key: str, value) -> tuple[list, list]:
    xs, ys = [], []
    for r in points:
        e = r["impls"].get(key, {})
        v = value(r, e)
        if v is not None:
            xs.append(r["bytes_moved"][METRIC] / 1e6)
            ys.append(v)
    return xs, ys


def _time(r, e):
    return e[METRIC]["median_s"] * 1e3 if METRIC in e else None


def _pct(metric):
    return lambda r, e: e.get("pct_copy_bound", {}).get(metric)


def _speedup(r, e):
    return e.get("fused_speedup", {}).get(METRIC)


def _plot_speedup(ax, sweep: dict | None, xlabel: str) -> None:
    if sweep is None:
        ax.set_visible(False)
        return
    for key in LABELS:
        if key == "fused":
            continue
        xs = [v for v, r in zip(sweep["values"], sweep["results"]) if _speedup(r, r["impls"].get(key, {}))]
        ys = [_speedup(r, r["impls"][key]) for r in sweep["results"] if _speedup(r, r["impls"].get(key, {}))]
        if xs:
            ax.plot(xs, ys, "o-", color=COLORS[key], label=f"over {LABELS[key]}")
    ax.axhline(1.0, color="gray", lw=1, ls=":")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}×" if f"{v:g}"[0] in "25" else ""))
    ax.set_xticks(sweep["values"])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("speed-up of fused (×, forward+backward)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def draw(results: dict, path: Path) -> Path:
    s = results["settings"]
    std = next(r for r in results["standard"] if r["stage"] == "branch")["point"]
    fig, axes = plt.subplots(2, 2, figsize=(15, 11))
    threads = "" if s["device"].startswith("cuda") else f", {results['machine']['torch_threads']} threads"
    fig.suptitle(
        f"fixedbranch branch stage on {results['device_name']} ({s['dtype']}, {std['memory_format']}{threads}): "
        "forward+backward unless noted",
        fontsize=13,
    )
    points = _size_points(results)
    bw = results["copy_bandwidth"]["bytes_per_s"]

    ax = axes[0, 0]
    for key in LABELS:
        xs, ys = _series(points, key, _time)
        if xs:
            ax.plot(xs, ys, "o-", color=COLORS[key], label=LABELS[key])
    xs = [r["bytes_moved"][METRIC] / 1e6 for r in points]
    ax.plot(xs, [x * 1e6 / bw * 1e3 for x in xs], "k--", label=f"copy bound ({bw / 1e9:.1f} GB/s)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("bytes moved, forward+backward (MB)")
    ax.set_ylabel("time (ms, median)")
    ax.set_title("Time vs bytes moved (K=4, 3x3; C, H=W and N varied)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)

    ax = axes[0, 1]
    for key in LABELS:
        xs, ys = _series(points, key, _pct(METRIC))
        if xs:
            ax.plot(xs, ys, "o-", color=COLORS[key], label=LABELS[key])
    for metric, marker in (("forward", "s--"), ("backward", "^--")):
        pts = [r for r in points if "fused_op_alone" in r]
        xs = [r["bytes_moved"][METRIC] / 1e6 for r in pts]
        ys = [r["fused_op_alone"]["pct_copy_bound"][metric] for r in pts]
        if xs:
            ax.plot(xs, ys, marker, color=COLORS["fused"], alpha=0.7, label=f"fused operator alone, {metric}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    ax.set_ylim(low, high * 6)  # headroom: the legend sits above the curves
    ax.set_xlabel("bytes moved, forward+backward (MB)")
    ax.set_ylabel("% of copy bound (100 = copy speed)")
    ax.set_title("Fraction of copy speed reached")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=3, loc="upper center")

    sweeps = {sw["param"]: sw for sw in results["sweeps"]}
    _plot_speedup(axes[1, 0], sweeps.get("k"), "number of filters K (3x3)")
    axes[1, 0].set_title("Speed-up of fused vs K")
    _plot_speedup(axes[1, 1], sweeps.get("s"), "filter size S (S x S, K=4)")
    axes[1, 1].set_title("Speed-up of fused vs filter size")

    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
