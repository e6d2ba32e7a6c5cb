"""Benchmarks: they print numbers and never gate CI."""
