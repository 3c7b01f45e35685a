"""Benchmark scripts (run as `python -m bench.<name>`); results are recorded in BENCHMARKS.md."""
