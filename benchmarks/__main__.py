"""``python -m benchmarks STUDY``: runs one study and writes its results; ``python -m benchmarks docs`` writes the
committed results into the docs' benchmark blocks."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from . import core, machine, report
from .studies import STUDIES

DEFAULT_OUT = report.ROOT / "bench-out"


def parse_args(argv: list[str]) -> argparse.Namespace:
    listing = "\n".join(f"  {name:<11} {study.__doc__.strip().splitlines()[0]}" for name, study in STUDIES.items())
    p = argparse.ArgumentParser(
        prog="python -m benchmarks", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Benchmarks of fixedbranch, one study a run.",
        epilog=f"studies:\n{listing}\n  {'docs':<11} rewrite the docs' benchmark blocks from benchmarks/results/ "
               "(--check: only report stale blocks)")
    p.add_argument("study", choices=[*STUDIES, "docs"], metavar="STUDY", help="a study below, or docs")
    p.add_argument("--preset", choices=("quick", "full"), default="quick",
                   help="quick (default): every row on small sizes, in seconds; full: the reported numbers")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help=f"folder of the results (default {DEFAULT_OUT.name}/, ignored by git; the committed results: "
                        "--out benchmarks/results)")
    p.add_argument("--warm-malloc", action="store_true",
                   help="restart under glibc settings that keep freed memory (files named -warm-malloc)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the study's, else torch's)")
    p.add_argument("--check", action="store_true", help="docs: exit 1 if a block differs, rewrite nothing")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.study == "docs":
        stale = report.update_docs(STUDIES, check=args.check)
        for line in stale:
            report.log(("stale " if args.check else "rewrote ") + line)
        return 1 if args.check and stale else 0
    if args.warm_malloc:
        machine.restart_with_warm_malloc(argv)
    study = STUDIES[args.study]
    threads = args.threads or study.PRESETS[args.preset].get("threads")
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
        torch.cuda.set_device(device)
    result = core.run_study(args.study, study, args.preset, device)
    report.write(result, study, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
