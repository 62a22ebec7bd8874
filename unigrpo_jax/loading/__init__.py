"""Bagel PyTorch checkpoint <-> Flax params, and the tokenizer."""
