"""Benchmarks and profiling scripts (run as modules: ``python -m bench.<name>``)."""
