"""The studies ``python -m benchmarks STUDY`` runs, by name (see benchmarks/__init__.py to add one)."""

from . import blocks, suite

STUDIES = {
    "suite": suite,
    "blocks": blocks,
}
