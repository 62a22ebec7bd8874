"""The MoT decoder beyond the fixture: logical axes, bf16, remat, cache consistency, padding."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unigrpo_jax.loading.bagel import load_bagel
from unigrpo_jax.loading.checkpoint import flatten
from unigrpo_jax.model import bagel, context
from unigrpo_jax.model.kv_cache import init_cache


@pytest.fixture(scope='module')
def model(fixture_dir):
    config, params, _ = load_bagel(fixture_dir, dtype=np.float32)
    return config, jax.device_put(params)


def test_every_param_has_logical_axis_names(model):
    config, _ = model
    boxed = bagel.abstract_params(config)
    shapes = flatten(nn.unbox(boxed))
    specs = flatten(nn.get_partition_spec(boxed))
    assert set(shapes) == set(specs)
    for path, spec in specs.items():
        assert len(spec) == len(shapes[path].shape), path
        assert any(name is not None for name in spec), path
        if '/layers/' in path or path.startswith('language_model/layers'):
            assert spec[0] == 'layers', path


def _ids(config, n, seed):
    rng = np.random.default_rng(seed)
    body = rng.integers(0, config.tokens.bos - 10, n)
    return np.concatenate([[config.tokens.bos], body, [config.tokens.eos]]).astype(np.int32)


def test_two_segments_equal_one_causal_segment(model):
    """Prefilling a+b in two calls gives the same hidden/cache rows as one call of a+b."""
    config, params = model
    a, b = _ids(config, 5, 0), _ids(config, 6, 1)
    cache, _ = context.prefill_text(params, config, init_cache(config.llm, 1, 32), a[None])
    cache, h_two = context.prefill_text(params, config, cache, b[None])
    whole, h_one = context.prefill_text(params, config, init_cache(config.llm, 1, 32),
                                        np.concatenate([a, b])[None])
    np.testing.assert_allclose(h_two[0], h_one[0, len(a):], atol=2e-5)
    n = len(a) + len(b)
    np.testing.assert_allclose(cache.k[:, :, :n], whole.k[:, :, :n], atol=2e-5)
    assert int(cache.length[0]) == int(cache.rope[0]) == n


def test_right_padded_batch_matches_separate_samples(model):
    """Two prompts of different lengths in one padded batch behave like two separate runs."""
    config, params = model
    p0, p1, nxt = _ids(config, 3, 2), _ids(config, 7, 3), _ids(config, 4, 4)
    batch = np.zeros((2, len(p1)), np.int32)
    batch[0, :len(p0)], batch[1] = p0, p1
    cache, _ = context.prefill_text(params, config, init_cache(config.llm, 2, 32), batch,
                                    jnp.array([len(p0), len(p1)]))
    cache, h = context.prefill_text(params, config, cache, np.stack([nxt, nxt]))
    for i, p in enumerate((p0, p1)):
        single, _ = context.prefill_text(params, config, init_cache(config.llm, 1, 32), p[None])
        single, hs = context.prefill_text(params, config, single, nxt[None])
        np.testing.assert_allclose(h[i], hs[0], atol=2e-5)
        assert int(cache.rope[i]) == len(p) + len(nxt)


def test_bfloat16_compute_is_close_to_float32(model):
    config, params = model
    ids = _ids(config, 10, 5)[None]
    _, h32 = context.prefill_text(params, config, init_cache(config.llm, 1, 16), ids)
    cfg16 = config.replace(dtype='bfloat16')
    _, h16 = context.prefill_text(params, cfg16, init_cache(config.llm, 1, 16, jnp.bfloat16), ids)
    assert h16.dtype == jnp.float32
    scale = float(jnp.max(jnp.abs(h32)))
    err = float(jnp.max(jnp.abs(h16 - h32)))
    assert 0 < err < 5e-2 * scale


def test_compute_params_give_the_float32_masters_forward_bitwise(model):
    """The rollout's compute-dtype copy (``bagel.compute_params``) computes exactly what the
    trainer computes from the float32 master: text logits and velocities equal bitwise in
    bfloat16; casting every param (the float32 modules too) does not."""
    config, params = model
    cfg16 = config.replace(dtype='bfloat16')
    ids = jnp.asarray(_ids(config, 6, 7))[None]
    x_t = jax.random.normal(jax.random.key(0), (1, 4, config.latent_token_dim))
    pos = jnp.arange(4)[None]
    forward = jax.jit(lambda p: bagel.Bagel(cfg16).apply({'params': p}, ids, x_t,
                                                         jnp.full((1,), 0.7), pos))
    logits, v = forward(params)
    copy = bagel.compute_params(params, jnp.bfloat16)
    assert copy['language_model']['lm_head']['kernel'].dtype == jnp.float32
    assert copy['language_model']['norm']['scale'].dtype == jnp.bfloat16
    logits_c, v_c = forward(copy)
    np.testing.assert_array_equal(logits_c, logits)
    np.testing.assert_array_equal(v_c, v)
    logits_all, v_all = forward(jax.tree.map(lambda x: x.astype(jnp.bfloat16), params))
    assert float(jnp.max(jnp.abs(logits_all - logits))) > 0
    assert float(jnp.max(jnp.abs(v_all - v))) > 0


def test_remat_policy_gives_the_same_hidden(model):
    config, params = model
    ids = jnp.asarray(_ids(config, 6, 6))[None]
    n = ids.shape[1]
    x = bagel.Bagel(config).apply({'params': params}, ids, method=bagel.Bagel.embed_text)
    pos = jnp.arange(n)[None]
    mask = jnp.tril(jnp.ones((1, n, n), bool))

    def run(policy):
        return bagel.Bagel(config).apply({'params': params}, x, pos, mask, n_und=n,
                                         remat_policy=policy, method=bagel.Bagel.decode)[0]
    np.testing.assert_allclose(run('nothing_saveable'), run(None), atol=1e-6)


def test_segment_longer_than_cache_is_refused(model):
    config, params = model
    with pytest.raises(ValueError, match='does not fit a KV cache of 4 rows'):
        context.prefill_text(params, config, init_cache(config.llm, 1, 4), _ids(config, 5, 0)[None])


def test_flash_attention_matches_the_parity_path(model):
    """The fused path of image blocks (here jax.nn.dot_product_attention over the keys
    reordered [new; cache], as cuDNN gets them) gives the einsum path's results: a prefill on
    top of a cache and an image block (full mask, GQA); 'flash' picks the kernel per platform."""
    from unigrpo_jax.model import attention
    assert [attention.kernel_for('flash', p, 'bfloat16') for p in ('tpu', 'gpu', 'cpu')] == [
        'pallas', 'cudnn', 'dot_product']
    assert attention.kernel_for('flash', 'gpu', 'float32') == 'dot_product'
    assert attention.kernel_for('xla', 'tpu', 'bfloat16') == 'xla'
    config, params = model
    fast = config.replace(attention='dot_product')
    a, b = _ids(config, 5, 7), _ids(config, 4, 8)
    out = {}
    for name, cfg in (('xla', config), ('flash', fast)):
        cache, _ = context.prefill_text(params, cfg, init_cache(cfg.llm, 1, 16), a[None])
        _, h = context.prefill_text(params, cfg, cache, b[None])
        x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 4, cfg.latent_token_dim)),
                        jnp.float32)
        v, _ = context.image_velocity(params, cfg, cache, x, jnp.array([0.5]),
                                      jnp.array([0, 1, 8, 9]))
        out[name] = (h, v)
    for got, want in zip(out['flash'], out['xla']):
        np.testing.assert_allclose(got, want, atol=2e-5)


def test_window_velocities_are_the_rollout_s_one_block_velocities(model):
    """The replay's W images per sample (``image_velocities``) are computed like the rollout's
    one image per step (``image_velocity``): same velocities, not a packed approximation."""
    config, params = model
    cache, _ = context.prefill_text(params, config, init_cache(config.llm, 2, 16),
                                    jnp.stack([_ids(config, 5, 7), _ids(config, 5, 3)]))
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 3, 4, config.latent_token_dim)), jnp.float32)
    t = jnp.asarray([[0.9, 0.6, 0.3], [0.8, 0.5, 0.2]], jnp.float32)
    pos = jnp.array([0, 1, 8, 9])
    v, _ = context.image_velocities(params, config, cache, x, t, pos)
    for j in range(3):
        one, _ = context.image_velocity(params, config, cache, x[:, j], t[:, j], pos)
        np.testing.assert_allclose(v[:, j], one, atol=1e-6, rtol=1e-6)
