"""The SDE step (algorithm.md §4): a = 0 is the ODE, its moments and its log-density."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from unigrpo_jax.model import latents
from unigrpo_jax.rollout import sde

GRID = np.asarray(latents.timesteps(25, 3.0))


def _xv(seed, shape=(2, 3, 4)):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.normal(size=shape), jnp.float32),
            jnp.asarray(rng.normal(size=shape), jnp.float32))


def test_zero_noise_level_is_the_ode_step():
    x, v = _xv(0)
    for k in (0, 5, 20):
        t, tn = GRID[k], GRID[k + 1]
        x_next, mean, _, s = sde.sde_step(x, v, t, tn, GRID[1], 0.0, jnp.ones_like(x))
        np.testing.assert_allclose(x_next, sde.ode_step(x, v, t, tn), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(mean, x + v * (tn - t), rtol=1e-6, atol=1e-7)
        assert float(s) == 0.0


def test_empirical_mean_and_std_match_the_stated_ones():
    x, v = _xv(1, (1, 4, 8))
    t, tn, a = GRID[3], GRID[4], 0.8
    noise = jax.random.normal(jax.random.key(0), (20000,) + x.shape[1:])
    x_next, mean, _, s = jax.vmap(
        lambda xi: sde.sde_step(x[0], v[0], t, tn, GRID[1], a, xi))(noise)
    s = float(s[0])
    np.testing.assert_allclose(jnp.mean(x_next, 0), mean[0], atol=4 * s / math.sqrt(2e4))
    np.testing.assert_allclose(jnp.std(x_next, 0), jnp.full(x.shape[1:], s), rtol=0.03)
    std_t = a * math.sqrt(t / (1 - t))
    np.testing.assert_allclose(s, std_t * math.sqrt(t - tn), rtol=1e-5)


def test_first_step_uses_the_second_grid_point():
    x, v = _xv(2)
    _, s = sde.sde_std(jnp.float32(1.0), GRID[1], GRID[1], 0.8)
    expected = 0.8 * math.sqrt(1.0 / (1.0 - GRID[1])) * math.sqrt(1.0 - GRID[1])
    np.testing.assert_allclose(float(s), expected, rtol=1e-5)
    out = sde.sde_step(x, v, jnp.float32(1.0), GRID[1], GRID[1], 0.8, jnp.zeros_like(x))
    assert all(np.isfinite(np.asarray(o)).all() for o in out)


def test_logp_is_the_gaussian_density_element_mean():
    x, v = _xv(3)
    t, tn = GRID[2], GRID[3]
    noise = jax.random.normal(jax.random.key(1), x.shape)
    x_next, mean, logp, s = sde.sde_step(x, v, t, tn, GRID[1], 0.8, noise)
    xn, mu, sd = (np.asarray(a, np.float64) for a in (x_next, mean, s))
    dens = np.exp(-((xn - mu) ** 2) / (2 * sd ** 2)) / (sd * np.sqrt(2 * np.pi))
    np.testing.assert_allclose(logp, np.log(dens).reshape(2, -1).mean(1), rtol=1e-5)
