"""Reproducible benchmarks with JSON output (`python -m bench.latency`)."""
