"""The think-then-draw rollout on a random tiny Bagel (configs/bagel_grpo.py:tiny)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import bagel_grpo
from unigrpo_jax.loading import factory
from unigrpo_jax.model import context
from unigrpo_jax.model.kv_cache import init_cache
from unigrpo_jax.parallel.mesh import make_mesh
from unigrpo_jax.rollout import rollout as R
from unigrpo_jax.rollout import sde
from unigrpo_jax.rollout.sampling import TokenSampler
from unigrpo_jax.train import settings


@pytest.fixture(scope='module')
def tiny():
    cfg = bagel_grpo.get_config('tiny')
    config, params, ae = factory.build_model(cfg.model)
    rc = settings.rollout_config(cfg)
    rng = np.random.default_rng(0)
    t = config.tokens
    system = jnp.array([t.bos, 5, 6, 7, t.eos], jnp.int32)
    prompts = rng.integers(0, 100, (8, 6)).astype(np.int32)
    prompts[:, 0], prompts[:, -1] = t.bos, t.eos
    lengths = np.full((8,), 6, np.int32)
    prompts[1, 4], prompts[1, 5], lengths[1] = t.eos, 0, 5  # one shorter, right-padded prompt
    return config, params, ae, rc, system, jnp.asarray(prompts), jnp.asarray(lengths)


@pytest.fixture(scope='module')
def one_device_rollout(tiny):
    config, params, ae, rc, system, prompts, lengths = tiny
    fn = R.make_rollout_fn(config, rc, make_mesh((1, 1, 1), jax.devices()[:1]))
    return fn, fn(params, ae, system, prompts, lengths, jax.random.key(0))


def test_shapes_and_masks(tiny, one_device_rollout):
    config, _, _, rc, *_ = tiny
    _, rollout = one_device_rollout
    out, w = rollout.trajectory, rc.schedule.window_size
    b = 8 * rc.group_size
    assert out.think_tokens.shape == (b, rc.max_think_tokens)
    assert out.x_t.shape[:2] == (b, w) and out.logp.shape == (b, w)
    assert rollout.images.shape == (b, 32, 32, 3) and rollout.images.dtype == jnp.uint8
    lengths = np.asarray(out.think_lengths)
    mask = np.asarray(out.think_mask)
    assert (mask == (np.arange(rc.max_think_tokens) < lengths[:, None])).all()  # a prefix
    closed = np.asarray(out.think_closed)
    last = np.asarray(out.think_tokens)[np.arange(b), lengths - 1]
    assert (last[closed] == config.tokens.eos).all() and (lengths[~closed] == rc.max_think_tokens).all()
    assert 0 <= int(rollout.window_start) <= rc.schedule.window_max_start


def _full_forward_logprobs(config, params, ids):
    cache = init_cache(config.llm, 1, len(ids))
    _, hidden = context.prefill_text(params, config, cache, jnp.asarray(ids)[None])
    return jax.nn.log_softmax(context.text_logits(params, config, hidden)[0])


def test_text_logprobs_equal_a_fresh_full_forward(tiny, one_device_rollout):
    config, params, _, rc, system, prompts, lengths = tiny
    out = one_device_rollout[1].trajectory
    for chain in (0, 5, 6, 13):
        p = chain // rc.group_size
        n = int(out.think_lengths[chain])
        tokens = np.asarray(out.think_tokens[chain, :n])
        ctx = np.concatenate([system, prompts[p, :lengths[p]], [config.tokens.bos]])
        logp = _full_forward_logprobs(config, params, np.concatenate([ctx, tokens]))
        expected = logp[len(ctx) - 1 + np.arange(n), tokens]
        np.testing.assert_allclose(out.think_logprobs[chain, :n], expected, atol=1e-5)


def test_greedy_through_the_cache_equals_greedy_by_full_forwards(tiny):
    config, params, _, _, system, prompts, _ = tiny
    steps = 6
    ctx = np.concatenate([system, prompts[0], [config.tokens.bos]])
    seq = list(ctx)
    for _ in range(steps):
        logp = _full_forward_logprobs(config, params, np.array(seq))
        seq.append(int(jnp.argmax(logp[-1])))
    cache = init_cache(config.llm, 1, len(ctx) + steps + 2)
    cache, _ = context.prefill_text(params, config, cache, jnp.asarray(ctx[:-1])[None])
    _, tokens, _, mask, _ = R.generate_think(params, config, cache, jax.random.split(
        jax.random.key(0), 1), TokenSampler(0.0, 0, 1.0), steps)
    n = int(mask.sum())
    assert n >= 1
    np.testing.assert_array_equal(tokens[0, :n], seq[len(ctx):len(ctx) + n])


def test_stopped_chains_do_not_advance(tiny):
    """A chain that samples eos first closes its segment [bos, eos]; its cache stops there."""
    config, params, *_ = tiny
    greedy, keys = TokenSampler(0.0, 0, 1.0), jax.random.split(jax.random.key(0), 2)
    cache = init_cache(config.llm, 2, 16)
    _, first, *_ = R.generate_think(params, config, cache, keys, greedy, 1)
    # Call the greedy first token "eos": both chains must stop at once.
    stop = int(first[0, 0])
    config = config.replace(tokens=dataclasses.replace(config.tokens, eos=stop))
    cache, tokens, _, mask, closed = R.generate_think(params, config, cache, keys, greedy, 5)
    np.testing.assert_array_equal(mask, [[1, 0, 0, 0, 0]] * 2)
    assert bool(closed.all()) and (tokens[:, 0] == stop).all()
    np.testing.assert_array_equal(cache.length, [2, 2])
    np.testing.assert_array_equal(cache.rope, [2, 2])


def test_truncated_chain_segment_is_bos_tokens_eos(tiny):
    """A chain that never samples eos still gets all its tokens plus a closing eos cached."""
    config, params, *_ = tiny
    cache = init_cache(config.llm, 2, 16)
    keys = jax.random.split(jax.random.key(3), 2)
    full, tokens, _, mask, closed = R.generate_think(params, config, cache, keys,
                                                     TokenSampler(1.0, 0, 1.0), 4)
    ids, lengths = R.think_segment(tokens, mask, closed, config.tokens.bos, config.tokens.eos)
    for i in range(2):
        n = int(lengths[i])
        assert int(full.length[i]) == int(full.rope[i]) == n
        if not bool(closed[i]):
            assert n == 4 + 2 and int(ids[i, n - 1]) == config.tokens.eos
        # the cache rows equal a fresh prefill of the segment
        fresh, _ = context.prefill_text(params, config, init_cache(config.llm, 1, 16),
                                        ids[i:i + 1, :n])
        np.testing.assert_allclose(full.k[:, i, :n], fresh.k[:, 0, :n], atol=2e-5)


def test_window_records_are_consistent(tiny, one_device_rollout):
    _, _, _, rc, *_ = tiny
    out, sched = one_device_rollout[1].trajectory, rc.schedule
    np.testing.assert_array_equal(out.x_next[:, :-1], out.x_t[:, 1:])  # consecutive steps
    np.testing.assert_array_equal(out.t[1:], out.t_next[:-1])
    grid = sched.timesteps()
    for j in range(sched.window_size):
        _, s = sde.sde_std(out.t[j], out.t_next[j], grid[1], sched.noise_level)
        np.testing.assert_allclose(sde.gaussian_logp(out.x_next[:, j], out.mean[:, j], s),
                                   out.logp[:, j], rtol=1e-5)


def test_no_recompilation_between_calls(tiny, one_device_rollout):
    from unigrpo_jax.bench import perf
    config, params, ae, _, system, prompts, lengths = tiny
    fn, _ = one_device_rollout
    other = (prompts + 1) % 100
    with perf.count_compiles() as compiled:
        fn(params, ae, system, other, lengths, jax.random.key(9))
    assert compiled == []


def _assert_same_chains(want, got):
    """Same window start and sampled tokens; log-probs and window states within 1e-5."""
    np.testing.assert_array_equal(want.window_start, got.window_start)
    for name in ('think_tokens', 'think_mask', 'think_closed'):
        np.testing.assert_array_equal(getattr(want.trajectory, name),
                                      getattr(got.trajectory, name), err_msg=name)
    for name in ('think_logprobs', 'x_t', 'x_next', 'logp', 'mean'):
        np.testing.assert_allclose(getattr(want.trajectory, name), getattr(got.trajectory, name),
                                   atol=1e-5, err_msg=name)


def test_chunked_sharded_rollout_is_the_same_rollout(tiny, one_device_rollout):
    """Rolled out in 2 calls over 4 devices with the params fsdp-sharded (the 7B settings'
    levers), the batch is the one-call, one-device rollout: same tokens, same window start."""
    from unigrpo_jax.model import bagel
    from unigrpo_jax.parallel import sharding
    config, params, ae, rc, system, prompts, lengths = tiny
    _, one = one_device_rollout
    mesh = make_mesh((1, 4, 1), jax.devices()[:4])
    placed = sharding.param_shardings(bagel.abstract_params(config), mesh,
                                      sharding.strategy_rules('fsdp'))
    out = R.make_rollout_fn(config, rc, mesh, placed, calls=2)(
        params, ae, system, prompts, lengths, jax.random.key(0))
    _assert_same_chains(one, out)


@pytest.mark.parametrize('initial_noise', ['chain', 'group'])
def test_groups_split_over_devices_and_calls_are_the_same_rollout(tiny, initial_noise):
    """Each group of 4 chains rolled out as 4 rows of one chain on 4 devices in 2 calls (a
    device holds a quarter of a group per call, as on a slice with more chips than prompts) is
    the rollout of whole groups on one device, with each chain's own and with shared initial
    noise (``test_group_initial_noise_is_shared_within_groups_only`` checks the sharing)."""
    config, params, ae, rc, system, prompts, lengths = tiny
    rc = dataclasses.replace(rc, initial_noise=initial_noise)
    whole = R.make_rollout_fn(config, rc, make_mesh((1, 1, 1), jax.devices()[:1]))(
        params, ae, system, prompts, lengths, jax.random.key(0))
    split = R.make_rollout_fn(config, rc, make_mesh((4, 1, 1), jax.devices()[:4]), calls=2,
                              group_pieces=4)(params, ae, system, prompts, lengths,
                                              jax.random.key(0))
    _assert_same_chains(whole, split)
    np.testing.assert_array_equal(whole.trajectory.prompt_ids, split.trajectory.prompt_ids)
    np.testing.assert_allclose(whole.final_latents, split.final_latents, atol=1e-5)
    with pytest.raises(ValueError, match='group_pieces=3 must divide the group of 4'):
        R.make_rollout_fn(config, rc, make_mesh((1, 1, 1), jax.devices()[:1]), group_pieces=3)
    with pytest.raises(ValueError, match='the pieces must be a multiple of 8'):
        R.make_rollout_fn(config, rc, make_mesh((8, 1, 1)), group_pieces=2, calls=1)(
            params, ae, system, prompts[:2], lengths[:2], jax.random.key(0))


def test_same_seed_same_rollout_on_one_and_eight_devices(tiny, one_device_rollout):
    config, params, ae, rc, system, prompts, lengths = tiny
    _, one = one_device_rollout
    fn8 = R.make_rollout_fn(config, rc, make_mesh((8, 1, 1)))
    eight = fn8(params, ae, system, prompts, lengths, jax.random.key(0))
    assert len(eight.trajectory.think_tokens.sharding.device_set) == 8
    _assert_same_chains(one, eight)
    np.testing.assert_allclose(one.final_latents, eight.final_latents, atol=1e-5)
    diff = np.abs(np.asarray(one.images, int) - np.asarray(eight.images, int))
    assert diff.max() <= 1  # uint8 rounding boundaries


def test_no_think_variant(tiny):
    config, params, ae, rc, system, prompts, lengths = tiny
    rc = dataclasses.replace(rc, think=False)
    out = R.make_rollout_fn(config, rc, make_mesh((1, 1, 1), jax.devices()[:1]))(
        params, ae, system, prompts, lengths, jax.random.key(0))
    assert out.trajectory.think_tokens.shape == (32, 0) and out.images.shape == (32, 32, 32, 3)


def test_rollout_shapes_are_the_rollouts(tiny, one_device_rollout):
    """``rollout_shapes`` (eval_shape of the rollout itself) gives every field's shape and
    dtype, and the schema marks exactly the window times and start as shared by all chains."""
    from unigrpo_jax.rollout import trajectory
    config, *_, rc, system, prompts, _ = tiny
    _, out = one_device_rollout
    shapes = R.rollout_shapes(config, rc, system.shape[0], prompts.shape[1], prompts.shape[0])
    assert jax.tree.map(lambda x: (x.shape, x.dtype), shapes) == jax.tree.map(
        lambda x: (x.shape, x.dtype), out)
    marks = trajectory.chain_specs(out, 'chain', 'shared')
    assert (marks.window_start, marks.trajectory.t, marks.trajectory.t_next) == ('shared',) * 3
    assert {m for m in jax.tree.leaves(marks.trajectory)} == {'chain', 'shared'}
    assert trajectory.num_chains(out) == 8 * rc.group_size
    picked = trajectory.select_chains(out, jnp.array([3, 0]))
    np.testing.assert_array_equal(picked.trajectory.x_t, out.trajectory.x_t[jnp.array([3, 0])])
    np.testing.assert_array_equal(picked.trajectory.t, out.trajectory.t)


def test_group_initial_noise_is_shared_within_groups_only(tiny, one_device_rollout):
    """With the window at step 0 its first state is the initial noise: 'group' gives every
    chain of a prompt its first chain's noise (the window's own noise still differs), and the
    first chain of each group keeps what 'chain' draws."""
    config, params, ae, rc, system, prompts, lengths = tiny
    g = rc.group_size
    at_zero = dataclasses.replace(rc.schedule, window_min_start=0, window_max_start=0)
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    first = {}
    for mode in ('chain', 'group'):
        fn = R.make_rollout_fn(config, dataclasses.replace(rc, schedule=at_zero,
                                                           initial_noise=mode), mesh)
        out = fn(params, ae, system, prompts, lengths, jax.random.key(0))
        assert int(out.window_start) == 0
        first[mode] = np.asarray(out.trajectory.x_t[:, 0])   # [B, N, F]
        x_next = np.asarray(out.trajectory.x_next[:, 0])
        assert not np.allclose(x_next[0], x_next[1])  # the window's noise is per chain
    groups = first['group'].reshape((-1, g) + first['group'].shape[1:])
    np.testing.assert_array_equal(groups, np.broadcast_to(groups[:, :1], groups.shape))
    assert not np.allclose(groups[0, 0], groups[1, 0])
    np.testing.assert_array_equal(first['group'][::g], first['chain'][::g])
    assert not np.allclose(first['chain'][0], first['chain'][1])


def test_the_window_starts_in_its_configured_range(tiny):
    config, params, ae, rc, system, prompts, lengths = tiny
    late = dataclasses.replace(rc.schedule, window_min_start=2, window_max_start=3)
    fn = R.make_rollout_fn(config, dataclasses.replace(rc, schedule=late, decode_images=False),
                           make_mesh((1, 1, 1), jax.devices()[:1]))
    starts = {int(fn(params, ae, system, prompts[:2], lengths[:2], jax.random.key(k)).window_start)
              for k in range(6)}
    assert starts <= {2, 3} and len(starts) == 2
