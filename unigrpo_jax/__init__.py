"""unigrpo-jax: UniGRPO (think-then-draw RL) for Bagel in JAX/Flax."""

__version__ = '0.1.0'
