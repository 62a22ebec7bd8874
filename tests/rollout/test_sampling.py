import jax
import jax.numpy as jnp
import numpy as np

from unigrpo_jax.rollout.sampling import TokenSampler, filtered_logits, sample_tokens, token_logprobs

LOGITS = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))


def test_top_k_and_top_p_keep_the_right_tokens():
    assert np.isfinite(filtered_logits(LOGITS, TokenSampler(1.0, 2, 1.0))).sum() == 2
    # mass before token: 0, .5, .8, .95 -> top_p .7 keeps the first two
    kept = np.isfinite(filtered_logits(LOGITS, TokenSampler(1.0, 0, 0.7)))[0]
    np.testing.assert_array_equal(kept, [True, True, False, False])
    kept = np.isfinite(filtered_logits(LOGITS, TokenSampler(1.0, 0, 0.1)))[0]
    np.testing.assert_array_equal(kept, [True, False, False, False])


def test_logprob_is_under_the_sampling_distribution():
    lp = token_logprobs(LOGITS, jnp.array([1]), TokenSampler(1.0, 2, 1.0))
    np.testing.assert_allclose(lp, np.log(0.3 / 0.8), rtol=1e-6)
    lp = token_logprobs(LOGITS, jnp.array([0]), TokenSampler(2.0, 0, 1.0))
    p = np.sqrt([0.5, 0.3, 0.15, 0.05])
    np.testing.assert_allclose(lp, np.log(p[0] / p.sum()), rtol=1e-6)


def test_sampled_frequencies_follow_the_filtered_distribution():
    logits = jnp.repeat(LOGITS, 20000, 0)
    keys = jax.random.split(jax.random.key(0), 20000)
    tokens, _ = sample_tokens(keys, logits, TokenSampler(1.0, 3, 1.0))
    freq = np.bincount(np.asarray(tokens), minlength=4) / 20000
    np.testing.assert_allclose(freq, [0.5 / .95, 0.3 / .95, 0.15 / .95, 0], atol=0.015)


def test_greedy():
    tokens, _ = sample_tokens(jax.random.split(jax.random.key(0), 1), LOGITS,
                              TokenSampler(0.0, 0, 1.0))
    assert int(tokens[0]) == 0
