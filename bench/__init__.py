"""Benchmarks and fault-injection runs of riskscore against real processes."""
