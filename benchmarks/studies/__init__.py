"""The studies ``python -m benchmarks STUDY`` runs, by name (see benchmarks/__init__.py to add one)."""

from . import allocation, banks, options, overhead, suite

STUDIES = {
    "suite": suite,
    "banks": banks,
    "options": options,
    "overhead": overhead,
    "allocation": allocation,
}
