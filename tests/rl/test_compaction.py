"""Compacting an update to the chains with signal (rl/compaction.py): the buckets, the chosen
chains, and the gradient: exactly the whole batch's for the policy-gradient terms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import bagel_grpo
from unigrpo_jax.loading import factory
from unigrpo_jax.parallel.mesh import make_mesh
from unigrpo_jax.rl import advantages, compaction, objective, replay
from unigrpo_jax.rollout import rollout as R
from unigrpo_jax.train import settings


def test_bucket_sizes_are_multiples_of_the_unit_up_to_the_batch():
    assert compaction.bucket_sizes(64, 4, 8) == (16, 32, 48, 64)
    assert compaction.bucket_sizes(12, 4, 4) == (4, 8, 12)  # 3 -> 4, 6 -> 8, 9 -> 12
    assert compaction.bucket_sizes(64, 1, 8) == (64,)
    with pytest.raises(ValueError, match='not a multiple'):
        compaction.bucket_sizes(64, 4, 24)


def test_select_keeps_the_signal_in_order_and_pads_with_dropped_chains():
    signal = np.array([False, True, False, False, True, True, False, False])
    chains, in_update = compaction.select(signal, (2, 4, 8))
    np.testing.assert_array_equal(chains, [1, 4, 5, 0])
    np.testing.assert_array_equal(in_update, [1, 1, 1, 0])
    chains, in_update = compaction.select(np.zeros(8, bool), (2, 4, 8))  # nothing to learn
    assert len(chains) == 2 and not in_update.any()
    np.testing.assert_array_equal(
        compaction.has_signal(np.array([0.5, 0.0, -1.0]), np.array([1.0, 1.0, 0.0])),
        [True, False, False])


@pytest.fixture(scope='module')
def rollout_batch():
    """A rollout of 4 prompts x 2 chains of the tiny model; groups 1 and 3 are constant."""
    cfg = bagel_grpo.get_config('tiny')
    cfg.rollout.group_size = 2
    config, params, ae = factory.build_model(cfg.model)
    rc = settings.rollout_config(cfg)
    t = config.tokens
    prompts = np.random.default_rng(0).integers(0, 100, (4, 6)).astype(np.int32)
    prompts[:, 0], prompts[:, -1] = t.bos, t.eos
    out = R.make_rollout_fn(config, rc, make_mesh((1, 1, 1), jax.devices()[:1]))(
        params, ae, None, jnp.asarray(prompts), jnp.full((4,), 6, jnp.int32),
        jax.random.key(0))
    return cfg, config, params, out


@pytest.mark.parametrize('skip_zero_variance_groups', [True, False])
def test_a_skipped_chain_changes_no_policy_gradient(rollout_batch, skip_zero_variance_groups):
    """Gradients of the policy-gradient terms (regulariser off) on the whole batch and on its
    chains with signal are equal; with the velocity MSE on, they are equal when the dropped
    chains have weight 0 (``skip_zero_variance_groups``), and differ otherwise (the whole
    batch's MSE also pulls the zero-advantage chains)."""
    cfg, config, params, out = rollout_batch
    rewards = np.array([1.0, 0.0, 0.5, 0.5, 0.2, 0.9, 1.0, 1.0], np.float32)
    adv, weight = advantages.chain_advantages(
        rewards, np.ones(8, bool), 2, truncated_think='keep',
        skip_zero_variance_groups=skip_zero_variance_groups, std='group', eps=1e-4, clip=5.0)
    batch = replay.train_batch(out, jnp.zeros((0,), jnp.int32), jnp.asarray(adv),
                               jnp.asarray(weight))
    chains, in_update = compaction.select(compaction.has_signal(adv, weight), (2, 4, 6, 8))
    assert len(chains) == 4 and in_update.all()  # groups 0 and 2
    moved = jax.tree.map(lambda x: x * 1.01, params)  # policy != reference
    for regularizer, equal in (('none', True), ('velocity_mse', skip_zero_variance_groups)):
        cfg.objective.update(regularizer=regularizer, velocity_mse_weight=1.0)
        obj = settings.objective_config(cfg, settings.schedule(cfg))
        whole = objective.prepare(params, config, batch, obj, jax.random.key(0))
        kept = compaction.compact(whole, jnp.asarray(chains), jnp.asarray(in_update), obj)

        def grads(b):
            return jax.grad(lambda p: objective.loss_fn(p, b, config, obj)[0])(moved)

        g_whole, g_kept = grads(whole), grads(kept)
        diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in
                   zip(jax.tree.leaves(g_whole), jax.tree.leaves(g_kept)))
        scale = max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(g_whole))
        assert scale > 0
        assert (diff <= 1e-5 * scale) == equal, (regularizer, diff, scale)
