"""Benchmarks: run on demand (``python -m benchmarks.<name>``), results in docs/benchmarks.md."""
