"""Benchmarks of qaic_assets (not tests): run them as `python -m benchmarks.<name>`; see docs/BENCHMARKS.md."""
