"""Benchmarks: each reports its figures beside a baseline measured in the same run (a ratio)."""
