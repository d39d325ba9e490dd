"""Benchmarks of the fused fixed-filter branches against the eager, stacked, compiled and kornia baselines and the
copy bound. Run ``python -m benchmarks --preset quick|full``; see ``benchmarks/__main__.py``."""
