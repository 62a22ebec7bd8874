"""The flow sampler's steps: Euler ODE and FlowGRPO's SDE step with its Gaussian log-prob.

algorithm.md §4. Time convention: ``x_t = (1 - t) x_0 + t eps``, velocity ``v = eps - x_0``,
t = 1 is noise, ``dt = t_next - t < 0``. All math in float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def ode_step(x: jax.Array, v: jax.Array, t: jax.Array, t_next: jax.Array) -> jax.Array:
    """Euler step ``x + v * dt`` (Bagel's ``x - v * (t - t_next)``)."""
    return x + v * (t_next - t)


def sde_std(t: jax.Array, t_next: jax.Array, t_second: jax.Array, noise_level: float):
    """``(std_t, s)``: FlowGRPO's ``std_t = a sqrt(sigma / (1 - sigma'))`` and the step std
    ``s = std_t sqrt(-dt)``; ``sigma' = sigma`` except at ``sigma == 1`` where the second grid
    point ``t_second`` is used (avoids the division by zero)."""
    sigma = t.astype(jnp.float32)
    sigma_safe = jnp.where(sigma == 1.0, t_second, sigma)
    std_t = noise_level * jnp.sqrt(sigma / (1.0 - sigma_safe))
    return std_t, std_t * jnp.sqrt(-(t_next - t))


def sde_mean(x: jax.Array, v: jax.Array, t: jax.Array, t_next: jax.Array,
             std_t: jax.Array) -> jax.Array:
    """Mean of the Gaussian SDE step (reduces to ``ode_step`` at ``std_t = 0``)."""
    dt = t_next - t
    return (x * (1.0 + std_t ** 2 / (2.0 * t) * dt)
            + v * (1.0 + std_t ** 2 * (1.0 - t) / (2.0 * t)) * dt)


def gaussian_logp(x_next: jax.Array, mean: jax.Array, s: jax.Array) -> jax.Array:
    """Mean over the latent elements (all axes but the first) of the Gaussian log-density.

    Args:
      x_next, mean: ``[batch, ...]``; s: scalar or ``[batch]`` step std.
    Returns: ``[batch]`` float32.
    """
    s = jnp.reshape(s, (-1,) + (1,) * (x_next.ndim - 1))
    logp = -((x_next - mean) ** 2) / (2.0 * s ** 2) - jnp.log(s) - 0.5 * math.log(2 * math.pi)
    return jnp.mean(logp, axis=tuple(range(1, x_next.ndim)))


def sde_step(x: jax.Array, v: jax.Array, t, t_next, t_second, noise_level: float,
             noise: jax.Array):
    """One stochastic step ``x_next = mean + s * noise``.

    Args:
      x, v, noise: ``[batch, tokens, features]`` float32 (noise ~ N(0, I)).
      t, t_next: this and the next grid time; t_second: the grid's second point.
    Returns:
      ``(x_next, mean, logp [batch], s)``.
    """
    std_t, s = sde_std(t, t_next, t_second, noise_level)
    mean = sde_mean(x, v, t, t_next, std_t)
    x_next = mean + s * noise
    return x_next, mean, gaussian_logp(x_next, mean, s), s
