"""What the benchmark programs share on the command line: the preset, threads, output folder and allocator options,
the name their files go under, and writing them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from . import machine, report

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def log(msg: str) -> None:
    """Progress, on stderr: stdout carries the markdown report."""
    print(msg, file=sys.stderr, flush=True)


def add_warm_malloc(p: argparse.ArgumentParser) -> None:
    p.add_argument("--warm-malloc", action="store_true",
                   help="rerun under glibc settings that keep freed memory (machine.WARM_MALLOC_TUNABLES), writing "
                        f"into the {machine.WARM_MALLOC_DIR}/ subfolder of --out")


def add_common_args(p: argparse.ArgumentParser, presets, threads: int | None) -> None:
    """--preset (choices ``presets``, default "full"), --threads, --out and --warm-malloc."""
    p.add_argument("--preset", choices=sorted(presets), default="full",
                   help="full: the reported numbers; quick: every row and output file on a tiny size, in seconds")
    default = threads or "torch's, all cores"
    p.add_argument("--threads", type=int, default=threads, help=f"CPU threads (default {default})")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    add_warm_malloc(p)


def start(args: argparse.Namespace, module: str, argv: list[str] | None) -> Path:
    """Restarts under the warm allocator if asked (see machine.reexec_with_warm_malloc), sets the thread count, and
    returns the output folder: ``--out``, or its warm-malloc subfolder."""
    if args.warm_malloc:
        machine.reexec_with_warm_malloc(module, sys.argv[1:] if argv is None else list(argv))
    if args.threads:
        torch.set_num_threads(args.threads)
    return args.out / machine.WARM_MALLOC_DIR if args.warm_malloc else args.out


def stem(device: torch.device, name: str, preset: str) -> str:
    """``<device slug>-<name>``, with ``-<preset>`` unless it is the full preset: a smoke run never overwrites the
    reported results."""
    return "-".join([machine.slug(device), name] + ([] if preset == "full" else [preset]))


def finish(results: dict, out_dir: Path, file_stem: str, markdown: str,
           draw: Callable[[dict, Path], Path] | None) -> None:
    """Writes ``<stem>.json``, ``.md`` and (with ``draw``) ``.png``, prints the markdown, logs the paths."""
    paths = report.write(results, out_dir, file_stem, markdown)
    if draw is not None:
        paths["png"] = draw(results, out_dir / f"{file_stem}.png")
    print(markdown)
    log("wrote " + ", ".join(str(p) for p in paths.values()))
