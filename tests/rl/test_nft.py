"""DiffusionNFT as the image term (rl/nft.py, docs/nft.md): its points, its gradient against
the hand-derived one, and its invariants on the tiny model (a constant reward moves nothing but
the reference pull; the rollout has no window; what configs it refuses)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import bagel_grpo
from unigrpo_jax.loading import factory
from unigrpo_jax.errors import ConfigError
from unigrpo_jax.rl import losses, nft, objective, replay
from unigrpo_jax.train import settings


def test_forward_points_are_distinct_grid_times_on_the_line_to_x0():
    x0 = jax.random.normal(jax.random.key(1), (3, 4, 2))
    grid = jnp.array([1.0, 0.8, 0.5, 0.2])
    x_t, t = nft.forward_points(x0, grid, 3, jax.random.key(2))
    assert x_t.shape == (3, 3, 4, 2) and t.shape == (3, 3)
    for row in np.asarray(t):
        assert len(set(row.tolist())) == 3 and set(row.tolist()) <= set(grid.tolist())
    # x_t - (1 - t) x0 is t * eps: the same eps scale on every point.
    eps = (x_t - (1 - t[..., None, None]) * x0[:, None]) / t[..., None, None]
    assert 0.3 < float(jnp.std(eps)) < 3.0


def _point_inputs(seed=0):
    k = jax.random.split(jax.random.key(seed), 4)
    v = jax.random.normal(k[0], (4, 2, 6, 3))
    x_t = jax.random.normal(k[1], (4, 2, 6, 3))
    x0 = jax.random.normal(k[2], (4, 6, 3))
    t = jax.random.uniform(k[3], (4, 2), minval=0.1, maxval=1.0)
    return v, x_t, t, x0


@pytest.mark.parametrize('beta', [1.0, 0.1])
def test_on_policy_gradient_is_the_advantage_weighted_flow_matching_gradient(beta):
    """At v = v_old: d loss / d v = A_clip * (-2 t) (x0(v) - x0) / (d * elements * K), for
    every beta (the positive and negative parts' gradients combine into the advantage)."""
    v, x_t, t, x0 = _point_inputs()
    adv = jnp.array([2.0, -1.0, 0.0, 9.0])  # 9 is clipped to c = 5
    c = 5.0
    grad = jax.grad(lambda u: jnp.sum(nft.point_losses(u, v, x_t, t, x0, adv, beta, c)))(v)
    err = x_t - t[..., None, None] * v - x0[:, None]
    d = jnp.mean(jnp.abs(err), axis=(2, 3), keepdims=True)
    n, k = err.shape[2] * err.shape[3], err.shape[1]
    expected = (jnp.clip(adv, -c, c)[:, None, None, None] * -2 * t[..., None, None] * err
                / (d * n * k))
    np.testing.assert_allclose(grad, expected, rtol=2e-4, atol=1e-7)
    assert float(jnp.abs(grad[2]).max()) < 1e-6  # A = 0: no pull at all


def test_off_policy_the_zero_advantage_loss_pulls_back_to_the_old_velocity():
    """After the first update (v != v_old) a chain with A = 0 is pulled towards v_old: a
    gradient step from v_old + delta moves back along -delta (a trust region of the implicit
    policies), for every chain."""
    v, x_t, t, x0 = _point_inputs()
    zero = jnp.zeros((4,))
    delta = 0.05 * jax.random.normal(jax.random.key(7), v.shape)
    grad = jax.grad(lambda u: jnp.sum(nft.point_losses(u, v, x_t, t, x0, zero, 1.0, 5.0)))(
        v + delta)
    assert (jnp.sum(grad * delta, axis=(1, 2, 3)) > 0).all()


@pytest.fixture(scope='module')
def nft_setup(tiny_rollout):
    cfg = bagel_grpo.get_config('tiny')
    cfg.rollout.group_size = 2
    cfg.objective.image_term = 'nft'
    config, params, ae = factory.build_model(cfg.model)
    out, system = tiny_rollout(cfg, config, params, ae)
    return cfg, config, params, settings.rollout_config(cfg), out, system


def _obj(cfg, **kw):
    cfg = cfg.copy_and_resolve_references()
    cfg.objective.update(kw)
    return settings.objective_config(cfg, settings.schedule(cfg))


def test_nft_rollout_has_no_window_and_the_batch_its_points(nft_setup):
    cfg, config, params, rc, out, system = nft_setup
    assert rc.schedule.window_size == 0 and out.trajectory.x_t.shape[1] == 0
    obj = _obj(cfg)
    assert [t.name for t in obj.terms] == ['text_grpo', 'nft'] and obj.image_blocks == 3
    batch = replay.train_batch(out, system, jnp.ones((4,)), jnp.ones((4,)))
    batch = objective.prepare(params, config, batch, obj, jax.random.key(3))
    assert batch.extras[nft.X_T].shape == (4, 3) + out.final_latents.shape[1:]
    example = objective.batch_shapes(config, rc, obj, len(system), 6, 4)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), example) == jax.tree.map(
        lambda x: (x.shape, x.dtype), batch)


def _grads(params, config, batch, obj):
    return jax.grad(lambda p: objective.loss_fn(p, batch, config, obj)[0])(params)


def test_with_the_reward_constant_the_gradient_is_the_reference_pull_only(nft_setup):
    """All advantages 0 (a constant reward, every chain weighted): regulariser 'none' moves
    nothing; with the velocity MSE on, the gradient is the velocity MSE's alone."""
    cfg, config, params, rc, out, system = nft_setup
    moved = jax.tree.map(lambda x: x + 1e-2 * jax.random.normal(jax.random.key(5), x.shape),
                         params)  # a policy away from the reference
    ones = jnp.ones((4,))
    for mode in ('flowgrpo', 'unigrpo'):
        obj_none = _obj(cfg, mode=mode, regularizer='none')
        obj_mse = _obj(cfg, mode=mode, velocity_mse_weight=0.5)
        batch = replay.train_batch(out, system, 0 * ones, ones)
        if mode == 'flowgrpo':  # the same chains, without their reasoning
            batch = batch.replace(trajectory=batch.trajectory.replace(
                think_tokens=batch.trajectory.think_tokens[:, :0],
                think_logprobs=batch.trajectory.think_logprobs[:, :0],
                think_mask=batch.trajectory.think_mask[:, :0]))
        signal = replay.train_batch(out, system, jnp.array([1.0, -1.0, 0.5, -0.5]), ones)
        scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(_grads(
            moved, config, objective.prepare(params, config, signal, _obj(cfg),
                                             jax.random.key(3)), _obj(cfg))))
        none = _grads(moved, config, objective.prepare(params, config, batch, obj_none,
                                                       jax.random.key(3)), obj_none)
        assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(none)) < 1e-5 * scale
        prepared = objective.prepare(params, config, batch, obj_mse, jax.random.key(3))
        with_mse = _grads(moved, config, prepared, obj_mse)

        def mse_only(p):
            ctx = replay.rebuild_context(p, config, prepared, obj_mse.think)[0]
            v = replay.velocities(p, config, ctx, prepared.extras[nft.X_T],
                                  prepared.extras[nft.T], obj_mse.schedule)
            return 0.5 * losses.velocity_mse(v, prepared.extras[nft.REF_VELOCITIES], ones)

        expected = jax.grad(mse_only)(moved)
        for a, b in zip(jax.tree.leaves(with_mse), jax.tree.leaves(expected)):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5 * scale)


@pytest.mark.parametrize('overrides, message', [
    (dict(regularizer='latent_kl', latent_kl_weight=0.1),
     "objective.regularizer='latent_kl': expected one of ('velocity_mse', 'none')"),
    (dict(num_minibatches=2), 'objective.image_term=nft needs 1'),
])
def test_nft_refuses_what_it_cannot_do(overrides, message):
    cfg = bagel_grpo.get_config('tiny')
    cfg.objective.image_term = 'nft'
    if 'num_minibatches' in overrides:
        cfg.num_minibatches = overrides.pop('num_minibatches')
    cfg.objective.update(overrides)
    with pytest.raises(ConfigError, match=message.replace('(', r'\(').replace(')', r'\)')):
        settings.settings(cfg, 1)
