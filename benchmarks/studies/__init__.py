"""The studies ``python -m benchmarks STUDY`` runs, by name (see benchmarks/__init__.py to add one)."""

from . import allocation, banks, blocks, options, overhead, suite, wavelets

STUDIES = {
    "suite": suite,
    "banks": banks,
    "options": options,
    "blocks": blocks,
    "wavelets": wavelets,
    "overhead": overhead,
    "allocation": allocation,
}
