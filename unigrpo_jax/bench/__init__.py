"""Benchmarks and checks: the top layer, imports any layer below, nothing imports it."""
