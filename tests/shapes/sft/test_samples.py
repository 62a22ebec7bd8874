"""The SFT sequence is exactly the rollout's context: ids, positions, mask, logits, velocities."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import shapes_sft
from unigrpo_jax.model import bagel, context, latents, packing
from unigrpo_jax.model.kv_cache import init_cache
from unigrpo_jax.rollout import rollout as R
from unigrpo_jax.shapes import plan, tokenizer as shapes_tokenizer
from unigrpo_jax.shapes.sft import objective, samples, train


@pytest.fixture(scope='module')
def setup():
    cfg = shapes_sft.get_config('think,test')
    model = train.model_config(cfg)
    tokenizer = train.load_tokenizer(cfg, model)
    lay = samples.layout(model, cfg.data, think=True)
    params = nn.unbox(bagel.init_params(model, jax.random.key(0)))
    batch = samples.sample_batch(np.random.default_rng(1), tokenizer, model, lay, 4, 0.0)
    batch.prompt_lengths[3] = batch.think_lengths[3] = 0  # one sample with its text dropped
    return cfg, model, tokenizer, lay, params, batch


def test_shipped_tokenizer_is_current():
    tokenizer, tokens = shapes_tokenizer.load()
    assert len(tokenizer) == len(shapes_tokenizer.vocabulary())
    ids = tokenizer.encode('<think> red square at r0c2 ; blue circle at r3c1 </think>',
                           add_special_tokens=False)
    assert tokenizer.unk_token_id not in ids and len(ids) == 11
    assert tokenizer.decode([tokens.bos, *ids, tokens.eos], skip_special_tokens=True).startswith(
        '<think> red square at r0c2 ;')


def test_segments_are_bagel_text_segments(setup):
    _, model, tokenizer, lay, _, batch = setup
    t = model.tokens
    for i in range(3):
        p, q = batch.prompt_lengths[i], batch.think_lengths[i]
        words = batch.metadata[i]['prompt'].split()
        assert batch.prompt_ids[i, :p].tolist() == [t.bos, *tokenizer.convert_tokens_to_ids(words),
                                                    t.eos]
        text = tokenizer.decode(batch.think_ids[i, :q], skip_special_tokens=True)
        assert plan.parse_plan(text) == batch.layouts[i]
        # The rollout's think segment from the sampled tokens (plan words, then eos).
        sampled = batch.think_ids[i, 1:q]
        tokens = np.full((1, lay.think_len - 1), t.eos, np.int32)
        tokens[0, :len(sampled)] = sampled
        ids, length = R.think_segment(jnp.asarray(tokens), jnp.asarray(tokens != t.eos) |
                                      (np.arange(tokens.shape[1]) == len(sampled) - 1),
                                      jnp.array([True]), t.bos, t.eos)
        assert int(length[0]) == q and np.asarray(ids)[0, :q].tolist() == batch.think_ids[i, :q].tolist()


def test_mask_is_bagels_per_sample_mask(setup):
    _, _, _, lay, _, batch = setup
    mask = np.asarray(samples.layout_mask(lay, jnp.asarray(batch.prompt_lengths),
                                          jnp.asarray(batch.think_lengths)))
    pos = np.asarray(samples.positions(lay, jnp.asarray(batch.prompt_lengths),
                                       jnp.asarray(batch.think_lengths)))
    for i in range(4):
        p, q = int(batch.prompt_lengths[i]), int(batch.think_lengths[i])
        keep = np.r_[np.arange(p), lay.prompt_len + np.arange(q),
                     lay.prompt_len + lay.think_len + np.arange(2 + lay.image_tokens)]
        splits = [s for s in (p, q) if s] + [2 + lay.image_tokens]
        modes = ['causal'] * (len(splits) - 1) + ['noise']
        np.testing.assert_array_equal(mask[i][np.ix_(keep, keep)],
                                      packing.sample_mask(splits, modes))
        # Padding keys are never seen by a valid query.
        assert not mask[i][np.ix_(keep, np.setdiff1d(np.arange(lay.length), keep))].any()
        # Positions: consecutive text, the image block at the next position.
        np.testing.assert_array_equal(pos[i, keep[:p + q]], np.arange(p + q))
        assert (pos[i, keep[p + q:]] == p + q).all()


def test_forward_equals_rollout_context(setup):
    """Plan log-probs and image velocities of the packed SFT forward equal those of the
    rollout's cached context (``build_context`` + the think segment + ``image_velocity``)."""
    _, model, _, lay, params, batch = setup
    inputs = jax.tree.map(jnp.asarray, batch.arrays())
    x_t = jax.random.normal(jax.random.key(2), batch.x0.shape)
    t = jnp.array([0.9, 0.5, 0.2, 0.7])
    velocity, logits = objective.forward(params, model, lay, inputs, x_t, t)
    pos = jnp.asarray(latents.position_ids(*lay.image_grid, model.max_latent_size))
    size = lay.prompt_len + lay.think_len + 1
    for i in range(4):
        p, q = int(batch.prompt_lengths[i]), int(batch.think_lengths[i])
        cache = init_cache(model.llm, 1, size)
        if p:
            _, cache = R.build_context(params, model, None, inputs['prompt_ids'][i:i + 1],
                                       inputs['prompt_lengths'][i:i + 1], size)
            cache, hidden = context.prefill_text(params, model, cache,
                                                 inputs['think_ids'][i:i + 1],
                                                 inputs['think_lengths'][i:i + 1])
            ref = context.text_logits(params, model, hidden)[0, :q - 1]
            np.testing.assert_allclose(jax.nn.log_softmax(logits[i, :q - 1]),
                                       jax.nn.log_softmax(ref), atol=2e-4)
        v, _ = context.image_velocity(params, model, cache, x_t[i:i + 1], t[i:i + 1], pos)
        np.testing.assert_allclose(velocity[i], v[0], atol=2e-4)


def test_ce_counts_plan_tokens_and_eos(setup):
    _, _, _, lay, _, batch = setup
    vocab = 7
    logits = jnp.zeros((4, lay.think_len - 1, vocab))
    ids = jnp.asarray(batch.think_ids) % vocab
    ce, count = objective.think_ce(logits, ids, jnp.asarray(batch.think_lengths))
    assert int(count) == int(np.sum(np.maximum(batch.think_lengths - 1, 0)))
    np.testing.assert_allclose(ce, np.log(vocab), rtol=1e-6)
