"""The sharded train step on a random tiny Bagel (configs/bagel_grpo.py:tiny)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import bagel_grpo
from unigrpo_jax.loading import factory
from unigrpo_jax.errors import ConfigError
from unigrpo_jax.parallel import sharding
from unigrpo_jax.parallel.mesh import make_mesh
from unigrpo_jax.rl import advantages, objective, replay
from unigrpo_jax.rollout import rollout as R
from unigrpo_jax.rollout import trajectory
from unigrpo_jax.train import optimizer as opt_lib
from unigrpo_jax.train import settings
from unigrpo_jax.train import rl_step
from unigrpo_jax.train import step as step_lib


@pytest.fixture(scope='module')
def setup():
    cfg = bagel_grpo.get_config('tiny')
    cfg.rollout.group_size = 2
    config, params, ae = factory.build_model(cfg.model)
    rc = settings.rollout_config(cfg)
    t = config.tokens
    system = jnp.array([t.bos, 5, 6, 7, t.eos], jnp.int32)
    rng = np.random.default_rng(0)
    prompts = rng.integers(0, 100, (4, 6)).astype(np.int32)
    prompts[:, 0], prompts[:, -1] = t.bos, t.eos
    lengths = jnp.full((4,), 6, jnp.int32)
    out = R.make_rollout_fn(config, rc, make_mesh((1, 1, 1), jax.devices()[:1]))(
        params, ae, system, jnp.asarray(prompts), lengths, jax.random.key(0))
    rewards = jnp.asarray([1.0, 0.0, 0.0, 1.0, 0.3, 0.9, 0.5, 0.2])
    adv, informative = advantages.group_advantages(rewards, rc.group_size)
    batch = replay.train_batch(out, system, adv, informative.astype(jnp.float32))
    return cfg, config, params, objective.prepare(params, config, batch, _obj(cfg),
                                                  jax.random.key(0))


def _loss_with_reference(params, ref_params, batch, config, obj):
    """The loss of ``batch`` with ``ref_params``' reference outputs."""
    return objective.loss_fn(params, objective.prepare(ref_params, config, batch, obj,
                                                       jax.random.key(0)),
                             config, obj)


def _obj(cfg, **kw):
    """The objective of ``cfg`` with ``kw`` overriding its objective section (cfg unchanged)."""
    cfg = cfg.copy_and_resolve_references()
    cfg.objective.update(kw)
    return settings.objective_config(cfg, settings.schedule(cfg))


def test_replay_with_unchanged_params_gives_ratio_one(setup):
    cfg, config, params, batch = setup
    _, m = _loss_with_reference(params, params, batch, config, _obj(cfg))
    assert float(m['parity/text_max_abs_logp_diff']) < 1e-5
    assert float(m['parity/image_max_abs_logp_diff']) < 1e-5
    assert abs(float(m['text/ratio_mean']) - 1) < 1e-5
    assert abs(float(m['image/ratio_mean']) - 1) < 1e-5
    assert float(m['image/velocity_mse']) == 0.0


def test_velocity_mse_pulls_toward_the_reference(setup):
    """Zero at policy == reference; moving the flow head's bias by +0.1 gives mse 0.01 and a
    gradient pointing back (d mse / d bias = 2 * 0.1 / F per element, F = latent_token_dim)."""
    cfg, config, params, batch = setup
    obj = _obj(cfg, velocity_mse_weight=1.0, flow_weight=0.0)
    _, m = _loss_with_reference(params, params, batch, config, obj)
    assert float(m['image/velocity_mse']) == 0.0
    moved = jax.tree.map(lambda x: x, params)
    moved['llm2vae'] = dict(params['llm2vae'], bias=params['llm2vae']['bias'] + 0.1)
    grads = jax.grad(lambda p: _loss_with_reference(p, params, batch, config, obj)[1][
        'image/velocity_mse'])(moved)
    np.testing.assert_allclose(
        _loss_with_reference(moved, params, batch, config, obj)[1]['image/velocity_mse'], 0.01,
        rtol=1e-3)
    np.testing.assert_allclose(grads['llm2vae']['bias'], 0.2 / config.latent_token_dim,
                               rtol=1e-3)


def _per_sample_logp(params, config, batch, obj):
    """Mean text and image log-prob per chain, by the replay's own functions."""
    cache, hidden = replay.rebuild_context(params, config, batch, True)
    traj = batch.trajectory
    _, lp = replay.think_logprobs(params, config, hidden, traj, obj.schedule.tokens)
    m = traj.think_mask
    text = jnp.sum(lp * m, 1) / jnp.maximum(jnp.sum(m, 1), 1)
    v = replay.window_velocities(params, config, cache, traj, obj.schedule)
    image, _ = replay.window_logp(traj, v, obj.schedule)
    return np.asarray(text), np.asarray(image.mean(1))


def test_positive_advantage_logprob_rises_negative_falls(setup):
    """One step on a single chain (the others weighted 0): its text and image log-probs rise
    with a positive advantage and fall with a negative one. The image loss is kept out of the
    context so each expert sees one term (text: und expert, image: gen expert). Plain SGD keeps
    the step first order (Adam's first step moves even zero-gradient weights by the full lr)."""
    import optax
    cfg, config, params, batch = setup
    obj = _obj(cfg, flow_clip=10.0, image_grad_to_context=False)
    optimizer = optax.sgd(0.05)
    place = step_lib.placement(config, optimizer, make_mesh((1, 1, 1), jax.devices()[:1]),
                               sharding.strategy_rules('dp'), batch)
    ref = step_lib.reference_params(params, place)
    fn = step_lib.make_train_step(rl_step.rl_loss(config, obj), optimizer, place)
    before = _per_sample_logp(params, config, batch, obj)
    adv = np.asarray(batch.advantages)
    for chain in (int(np.argmax(adv)), int(np.argmin(adv))):
        weight = jnp.zeros_like(batch.sample_weight).at[chain].set(1.0)
        state = step_lib.init_state(params, optimizer, place)
        state, m = fn(state, ref, batch.replace(sample_weight=weight))
        assert float(m['skipped']) == 0.0 and int(state.step) == 1
        after = _per_sample_logp(state.params, config, batch, obj)
        for b, a in zip(before, after):
            assert np.sign(a[chain] - b[chain]) == np.sign(adv[chain]), (chain, a - b, adv)


# Every strategy shards for real; fsdp_tp on both 3-axis and 2-axis meshes.
STRATEGY_MESHES = [('dp', (8, 1, 1)), ('fsdp', (1, 8, 1)), ('fsdp_tp', (2, 2, 2)),
                   ('fsdp_tp', (1, 2, 4)),
                   ('tp', (4, 1, 2))]


@pytest.fixture(scope='module')
def one_device_step(setup):
    cfg, config, params, batch = setup
    return _run_step(cfg, config, params, batch, 'dp', (1, 1, 1), jax.devices()[:1])


def _run_step(cfg, config, params, batch, strategy, shape, devices=None, micro_batches=1,
              steps=1, split_terms=False, **objective_kw):
    optimizer = opt_lib.make_optimizer(cfg.optimizer, steps)
    mesh = make_mesh(shape, devices)
    place = step_lib.placement(config, optimizer, mesh, sharding.strategy_rules(strategy), batch)
    state = step_lib.init_state(params, optimizer, place)
    ref = step_lib.reference_params(params, place)
    obj = _obj(cfg, **objective_kw)
    fn = step_lib.make_train_step(rl_step.rl_loss(config, obj, split_terms=split_terms),
                                  optimizer, place, micro_batches,
                                  functools.partial(objective.loss_totals, obj=obj))
    for _ in range(steps):
        state, metrics = fn(state, ref, jax.device_put(batch, place.batch))
    return state, metrics


@pytest.mark.parametrize('strategy,shape', STRATEGY_MESHES)
def test_same_update_on_one_and_eight_devices(setup, one_device_step, strategy, shape):
    cfg, config, params, batch = setup
    state, metrics = _run_step(cfg, config, params, batch, strategy, shape)
    ref_state, ref_metrics = one_device_step
    q = state.params['language_model']['layers']['gen']['q_proj']['kernel']
    if strategy != 'dp':
        assert len(q.sharding.device_set) == 8 and not q.sharding.is_fully_replicated
        # Adam's moments are sharded like their params
        moments = [x for x in jax.tree.leaves(state.opt_state) if x.shape == q.shape]
        assert moments and all(m.sharding.is_equivalent_to(q.sharding, q.ndim)
                               for m in moments)
    # Adam's first step is g / (|g| + eps): where |g| ~ 1e-8 a float32 difference in the
    # gradient's reduction order changes that element's update by a few 1e-6 (lr is 1e-3).
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(metrics['loss'], ref_metrics['loss'], atol=1e-6)


@pytest.mark.parametrize('aggregation', ['seq_mean_token_mean', 'token_mean'])
@pytest.mark.parametrize('shape,micro_batches', [((1, 1, 1), 4), ((1, 1, 1), 8),
                                                 ((1, 4, 1), 2)])
def test_micro_batches_give_the_minibatch_update(setup, aggregation, shape, micro_batches):
    """Gradient accumulation over micro-batches is the same update as the whole minibatch
    (2 Adam steps at lr 1e-3, float32; a wrong normalisation moves params by about the lr),
    with zero-weight chains and both text aggregations, on 1 device and 4."""
    cfg, config, params, batch = setup
    batch = batch.replace(sample_weight=batch.sample_weight.at[1].set(0.0))
    devices = jax.devices()[:math.prod(shape)]
    whole, whole_m = _run_step(cfg, config, params, batch, 'fsdp', (1, 1, 1), devices[:1],
                               steps=2, text_aggregation=aggregation)
    split, split_m = _run_step(cfg, config, params, batch, 'fsdp', shape, devices,
                               micro_batches=micro_batches, steps=2,
                               text_aggregation=aggregation)
    moved = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(whole.params),
                                                           jax.tree.leaves(params)))
    assert moved > 5e-4  # the update is real
    for a, b in zip(jax.tree.leaves(split.params), jax.tree.leaves(whole.params)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # The diagnostics too: weighted like the loss, their micro-batch shares add up to the
    # minibatch's value (chain 1, weight 0, is in neither).
    for key in ('loss', 'text/loss', 'image/loss', 'image/velocity_mse', 'text/ratio_mean',
                'text/clip_fraction', 'text/approx_kl', 'text/entropy', 'image/ratio_mean',
                'image/clip_fraction', 'image/approx_kl'):
        np.testing.assert_allclose(split_m[key], whole_m[key], rtol=1e-4, atol=1e-7,
                                   err_msg=key)


def test_terms_differentiated_apart_give_the_same_update(setup):
    """``split_terms`` (the text and the image term on their own replays, one after the other
    in every micro-step, the memory of the larger) is the joint update: 2 Adam steps over 2
    micro-batches with fsdp on 4 devices, params and every metric."""
    cfg, config, params, batch = setup
    devices = jax.devices()[:4]
    joint, joint_m = _run_step(cfg, config, params, batch, 'fsdp', (1, 4, 1), devices,
                               micro_batches=2, steps=2)
    split, split_m = _run_step(cfg, config, params, batch, 'fsdp', (1, 4, 1), devices,
                               micro_batches=2, steps=2, split_terms=True)
    parts = rl_step.rl_loss(config, _obj(cfg), split_terms=True)
    assert isinstance(parts, tuple) and len(parts) == 2
    for a, b in zip(jax.tree.leaves(split.params), jax.tree.leaves(joint.params)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert split_m.keys() == joint_m.keys()
    for key in joint_m:
        np.testing.assert_allclose(split_m[key], joint_m[key], rtol=1e-4, atol=1e-6,
                                   err_msg=key)


def test_loss_without_the_prepared_reference_is_an_error(setup):
    cfg, config, params, batch = setup
    empty = batch.replace(extras={})
    with pytest.raises(ValueError, match='reference velocities'):
        objective.loss_fn(params, empty, config, _obj(cfg))


def test_non_finite_loss_skips_the_update(setup):
    cfg, config, params, batch = setup
    bad = batch.replace(advantages=batch.advantages.at[0].set(jnp.nan))
    optimizer = opt_lib.make_optimizer(cfg.optimizer, 1)
    place = step_lib.placement(config, optimizer, make_mesh((1, 1, 1), jax.devices()[:1]),
                               sharding.strategy_rules('dp'), batch)
    state = step_lib.init_state(params, optimizer, place)
    before = jax.tree.map(np.asarray, state.params)
    state, m = step_lib.make_train_step(rl_step.rl_loss(config, _obj(cfg)), optimizer, place)(
        state, step_lib.reference_params(params, place), bad)
    assert float(m['skipped']) == 1.0
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(before)):
        np.testing.assert_array_equal(a, b)


def test_expert_groups():
    assert opt_lib.expert_of('language_model/layers/gen/q_proj/kernel') == 'gen'
    assert opt_lib.expert_of('llm2vae/kernel') == 'gen'
    assert opt_lib.expert_of('language_model/embed_tokens/embedding') == 'und'
    assert opt_lib.expert_of('language_model/layers/und/q_proj/kernel') == 'und'


def test_learning_rates_decay_per_expert():
    """final_lr_fraction < 1: each expert's step shrinks along a cosine to that fraction."""
    c = bagel_grpo.get_config().optimizer
    c.update(lr_und=1e-3, lr_gen=1e-2, final_lr_fraction=0.1, grad_clip=0.0)
    params = {'language_model': {'layers': {'gen': {'w': jnp.zeros(3)},
                                            'und': {'w': jnp.zeros(3)}}}}
    grads = jax.tree.map(jnp.ones_like, params)
    opt = opt_lib.make_optimizer(c, total_updates=10)
    state = opt.init(params)
    steps = []
    for _ in range(11):
        updates, state = opt.update(grads, state, params)
        steps.append({k: float(-v['w'][0]) for k, v in updates['language_model']['layers'].items()})
    # Adam's first step is lr * g / |g| = lr; the last at lr * 0.1; halfway at lr * 0.55.
    np.testing.assert_allclose([steps[0]['und'], steps[0]['gen']], [1e-3, 1e-2], rtol=1e-4)
    np.testing.assert_allclose([steps[5]['und'], steps[5]['gen']], [5.5e-4, 5.5e-3], rtol=1e-3)
    np.testing.assert_allclose([steps[10]['und'], steps[10]['gen']], [1e-4, 1e-3], rtol=1e-3)
    constant = opt_lib.make_optimizer(_with(c, final_lr_fraction=1.0), 0)
    updates, _ = constant.update(grads, constant.init(params), params)
    gen_step = float(-updates['language_model']['layers']['gen']['w'][0])
    assert gen_step == pytest.approx(1e-2, rel=1e-4)
    with pytest.raises(ValueError, match='needs the number of updates'):
        opt_lib.make_optimizer(c, 0)


def test_warmup_then_cosine_per_expert():
    """warmup_steps > 0 (the SFT schedule): a linear ramp from 0, then the cosine decay."""
    c = _with(bagel_grpo.get_config().optimizer, lr_und=1e-3, lr_gen=1e-2, warmup_steps=4,
              final_lr_fraction=0.1)
    rates = [float(opt_lib.learning_rate(c, 1e-2, 20)(k)) for k in (0, 2, 4, 20)]
    np.testing.assert_allclose(rates, [0.0, 5e-3, 1e-2, 1e-3], rtol=1e-5)


def test_params_ema_tracks_every_update_and_is_what_evaluation_reads():
    """ema_decay > 0: the optimizer state keeps ema <- d * ema + (1 - d) * params after each
    update, from the initial params; evaluated_params reads it (the params without one)."""
    c = _with(bagel_grpo.get_config().optimizer, lr_und=1e-2, lr_gen=1e-1, ema_decay=0.5)
    params = {'language_model': {'layers': {'gen': {'w': jnp.ones(3)}, 'und': {'w': jnp.ones(3)}}}}
    opt = opt_lib.make_optimizer(c, total_updates=3)
    state = opt.init(params)
    assert opt_lib.evaluated_params(params, state) is not params
    want = jax.tree.map(np.asarray, params)
    for k in range(3):
        grads = jax.tree.map(lambda p: jnp.full_like(p, k + 1.0), params)
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        want = jax.tree.map(lambda e, p: 0.5 * e + 0.5 * np.asarray(p), want, params)
    got = opt_lib.evaluated_params(params, state)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, want)
    assert not np.allclose(got['language_model']['layers']['gen']['w'],
                           params['language_model']['layers']['gen']['w'])
    plain = opt_lib.make_optimizer(_with(c, ema_decay=0.0), total_updates=3)
    assert opt_lib.evaluated_params(params, plain.init(params)) is params
    with pytest.raises(ConfigError, match='optimizer.ema_decay'):
        settings.check_optimizer(_with(c, ema_decay=1.0))


def _with(c, **changes):
    c = c.copy_and_resolve_references()
    c.update(changes)
    return c


@pytest.mark.parametrize('mode', ['flowgrpo', 'textgrpo'])
def test_baseline_modes_use_only_their_term(setup, mode):
    """FlowGRPO: no thinking, image term only; TextGRPO: text term only, ODE images (W = 0),
    both derived from objective.mode alone."""
    cfg, config, params, _ = setup
    cfg = cfg.copy_and_resolve_references()
    cfg.objective.mode = mode
    s = settings.settings(cfg, 1)
    assert s.rollout.think == (mode == 'textgrpo')
    assert (s.schedule.window_size == 0) == (mode == 'textgrpo')
    assert s.objective.schedule is s.rollout.schedule
    t = config.tokens
    prompts = jnp.asarray(np.tile(np.array([[t.bos, 3, 4, 5, t.eos]], np.int32), (2, 1)))
    out = R.make_rollout_fn(config, s.rollout, make_mesh((1, 1, 1), jax.devices()[:1]))(
        params, factory.build_model(cfg.model)[2], None, prompts,
        jnp.full((2,), 5, jnp.int32), jax.random.key(1))
    adv = jnp.tile(jnp.array([1.0, -1.0]), 2)
    batch = replay.train_batch(out, jnp.zeros((0,), jnp.int32), adv, jnp.ones(4))
    loss, m = _loss_with_reference(params, params, batch, config, s.objective)
    assert np.isfinite(float(loss))
    assert ('text/loss' in m) == (mode == 'textgrpo')
    assert ('image/loss' in m) == (mode == 'flowgrpo')


def test_select_chains_keeps_shared_fields(setup):
    _, _, _, batch = setup
    idx = jnp.array([3, 0])
    mb = trajectory.select_chains(batch, idx)
    np.testing.assert_array_equal(mb.trajectory.prompt_ids, batch.trajectory.prompt_ids[idx])
    np.testing.assert_array_equal(mb.trajectory.x_t, batch.trajectory.x_t[idx])
    np.testing.assert_array_equal(mb.advantages, batch.advantages[idx])
    np.testing.assert_array_equal(mb.trajectory.t, batch.trajectory.t)
    np.testing.assert_array_equal(mb.system_ids, batch.system_ids)


def test_placement_shards_per_chain_fields_only(setup):
    """The batch shardings follow the schema: per-chain fields over the data axes, shared
    fields replicated."""
    cfg, config, _, batch = setup
    mesh = make_mesh((8, 1, 1))
    place = step_lib.placement(config, opt_lib.make_optimizer(cfg.optimizer, 1), mesh,
                               sharding.strategy_rules('dp'), batch)
    assert place.batch.system_ids.is_fully_replicated
    assert place.batch.trajectory.t.is_fully_replicated
    assert not place.batch.trajectory.x_t.is_fully_replicated
    assert not place.batch.advantages.is_fully_replicated


def test_train_batch_shapes_match_a_real_minibatch(setup):
    """The loop's example minibatch (eval_shape of the rollout and the batch builders) has
    exactly the shapes and dtypes of a minibatch built from a real rollout."""
    cfg, config, _, batch = setup
    cfg = cfg.copy_and_resolve_references()
    cfg.update(batch_size=4, num_minibatches=2)
    s = settings.settings(cfg, 1)
    example = objective.batch_shapes(config, s.rollout, s.objective, batch.system_ids.shape[0],
                                     batch.trajectory.prompt_ids.shape[1], s.minibatch)
    real = trajectory.select_chains(batch, jnp.arange(s.minibatch))
    assert jax.tree.map(lambda x: (x.shape, x.dtype), example) == jax.tree.map(
        lambda x: (x.shape, x.dtype), real)
