"""Benchmarks of fixedbranch: one runner over declarative studies, in the shape of PyTorch's operator_benchmark.

    python -m benchmarks --help                        # every study, one line each
    python -m benchmarks STUDY                         # the quick preset: every row on small sizes, into bench-out/
    python -m benchmarks STUDY --preset full --out benchmarks/results   # the committed numbers
    python -m benchmarks STUDY --warm-malloc           # under an allocator that keeps freed memory
    python -m benchmarks docs                          # the docs' benchmark blocks from benchmarks/results/

Nothing is written into the tree unless ``--out`` says so: the default folder, bench-out/, is ignored by git.

The core owns everything but the cases: core.py the run loop (check against the reference, interleaved timing, the
per-call mode, the bound: max(copy bound at the op's own working set, compute bound at torch.mm's rate), the DRAM
copy and the yardsticks), machine.py the machine facts and the committed revision, report.py the one result schema's
writer (JSON, markdown, PNG) and the docs' blocks, baselines.py the formulations every study compares, memory.py
the memory columns.

Adding a study. Write ``benchmarks/studies/<name>.py`` and add it to ``STUDIES`` in benchmarks/studies/__init__.py.
The module holds only:

- a docstring, whose first line is its line in ``--help`` and whose rest heads its markdown file;
- ``PRESETS = {"quick": {...}, "full": {...}}``: each a dict with ``"budget"`` (a ``core.Budget``) and whatever its
  cases need; optional keys the core reads: ``"threads"`` (default torch threads), ``"dtype"``, ``"mm_size"``,
  ``"dram_bytes"``;
- ``cases(preset, device)``: yields ``core.Case`` objects. A case's ``build()`` returns its implementations, a dict
  of ``core.Impl`` (made with ``core.autograd_impl``, ``core.operator_impl``, ``core.plain_impl`` or
  ``core.yardsticks``), one of them keyed ``"reference"`` (fixedbranch.reference; ``Impl(label, {}, outputs)`` checks
  without being timed), which every other is checked against before anything is timed. ``bytes_moved``, ``macs``
  (``baselines.pass_bytes``, ``baselines.plan_macs``) and ``working_set`` (the output's bytes) give the rows their
  percentage of the bound;
- ``table(result)``: the markdown of its results (``report`` has the shared cells), and optionally ``docs(result,
  view)``, the block the docs show between ``<!-- bench:<name>:<stem>[:<view>] begin/end -->`` markers;
- a quick test in tests/test_benchmarks.py (run it with a tiny preset, check the schema and that the checks ran).
"""
