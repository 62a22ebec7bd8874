"""Samplers: the think-then-draw rollout and the evaluation sampler."""
