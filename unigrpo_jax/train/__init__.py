"""Optimizer, train state and the sharded train step."""
