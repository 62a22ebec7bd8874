"""Each loss term against an independent NumPy computation (algorithm.md §2-§5)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unigrpo_jax.rl import advantages, losses

RNG = np.random.default_rng(0)


def test_group_advantages():
    r = np.array([1., 2., 3., 5., 5., 5.], np.float32)
    adv, informative = advantages.group_advantages(jnp.asarray(r), 3)
    g = r[:3]
    np.testing.assert_allclose(adv[:3], (g - g.mean()) / (g.std() + 1e-4), rtol=1e-5)
    np.testing.assert_array_equal(adv[3:], 0.0)
    np.testing.assert_array_equal(informative, [1, 1, 1, 0, 0, 0])
    adv, _ = advantages.group_advantages(jnp.asarray(r), 3, std='global', clip=0.5)
    expected = np.clip((g - g.mean()) / (r.std() + 1e-4), -0.5, 0.5)
    np.testing.assert_allclose(adv[:3], expected, rtol=1e-5)
    with pytest.raises(ValueError, match='std'):
        advantages.group_advantages(jnp.asarray(r), 3, std='batch')


def test_dropped_truncated_chains_are_out_of_the_group_statistics():
    r = np.array([1., 2., 3., 100., 4., 4., 4., 9.], np.float32)
    closed = np.array([1, 1, 1, 0, 1, 1, 1, 0], bool)
    adv, weight = advantages.chain_advantages(
        r, closed, 4, truncated_think='drop', skip_zero_variance_groups=True, std='group',
        eps=1e-4, clip=5.0)
    g = r[:3]
    np.testing.assert_allclose(adv[:3], (g - g.mean()) / (g.std() + 1e-4), rtol=1e-5)
    np.testing.assert_array_equal(adv[4:7], 0.0)  # the closed chains of group 2 agree
    np.testing.assert_array_equal(weight, [1, 1, 1, 0, 0, 0, 0, 0])
    adv, _ = advantages.chain_advantages(
        r, closed, 4, truncated_think='drop', skip_zero_variance_groups=False, std='global',
        eps=1e-4, clip=5.0)
    np.testing.assert_allclose(adv[:3], (g - g.mean()) / (r[closed].std() + 1e-4), rtol=1e-5)


def _np_surrogate(ratio, adv, eps):
    return np.minimum(ratio * adv, np.clip(ratio, 1 - eps, 1 + eps) * adv)


@pytest.mark.parametrize('aggregation', ['seq_mean_token_mean', 'token_mean'])
def test_text_policy_loss(aggregation):
    b, t = 4, 6
    logp_old = RNG.normal(size=(b, t)).astype(np.float32) - 2
    # ratios on both sides of the clip range and exactly at its boundaries
    ratio = np.array([[0.5, 0.8, 1.0, 1.2, 1.5, 1.0]] * b, np.float32)
    logp = np.log(ratio) + logp_old
    mask = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0], [1] * 6, [0] * 6], bool)
    adv = np.array([1.0, -2.0, 0.5, 3.0], np.float32)
    loss, m = losses.text_policy_loss(jnp.asarray(logp), jnp.asarray(logp_old), jnp.asarray(mask),
                                      jnp.asarray(adv), eps=0.2, aggregation=aggregation)
    obj = _np_surrogate(np.exp(logp - logp_old), adv[:, None], 0.2)
    if aggregation == 'token_mean':
        expected = -(obj * mask).sum() / mask.sum()
    else:
        per = (obj * mask).sum(1)[:3] / mask.sum(1)[:3]  # sample 3 has no tokens
        expected = -per.mean()
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    # 0.5 and 1.5 are clipped; 0.8 and 1.2 sit on the boundary (float rounding decides)
    clearly = (np.abs(ratio - 1) > 0.21)[mask].mean()
    boundary = (np.abs(ratio - 1) > 0.19)[mask].mean()
    assert clearly - 1e-6 <= float(m['text/clip_fraction']) <= boundary + 1e-6


def test_ratio_norm_and_flow_loss():
    b, w, n = 3, 2, 5
    s = np.array([0.3, 0.1], np.float32)
    logp, logp_old = RNG.normal(size=(2, b, w)).astype(np.float32)
    mean, mean_old = RNG.normal(size=(2, b, w, n)).astype(np.float32)
    log_r = losses.ratio_norm_log_ratio(*map(jnp.asarray, (logp, logp_old, mean, mean_old)),
                                        jnp.asarray(s)[None])
    expected = s * ((logp - logp_old) + ((mean - mean_old) ** 2).mean(-1) / (2 * s ** 2))
    np.testing.assert_allclose(log_r, expected, rtol=1e-5)
    adv = np.array([1.0, -1.0, 0.5], np.float32)
    eps = 0.05
    log_r = np.log(np.array([[0.9, 1.0], [1.04, 1.2], [1.05, 0.95]], np.float32))
    weight = np.array([0.5, 1.5], np.float32)
    loss, m = losses.flow_policy_loss(jnp.asarray(log_r), jnp.asarray(adv), eps=eps,
                                      step_weight=jnp.asarray(weight))
    obj = _np_surrogate(np.exp(log_r), adv[:, None], eps) * weight
    np.testing.assert_allclose(loss, -obj.mean(1).mean(), rtol=1e-5)
    assert float(m['image/clip_fraction']) == pytest.approx(3 / 6)


def test_regularisers():
    v, v_ref = RNG.normal(size=(2, 3, 2, 4, 5)).astype(np.float32)  # [B, W, N, F]
    np.testing.assert_allclose(losses.velocity_mse(v, v_ref), ((v - v_ref) ** 2).mean(), rtol=1e-5)
    assert float(losses.velocity_mse(v, v)) == 0.0
    std_t = np.array([0.5, 0.2], np.float32)
    kl = losses.latent_kl(jnp.asarray(v), jnp.asarray(v_ref), jnp.asarray(std_t))
    expected = (((v - v_ref) ** 2).mean((2, 3)) / (2 * std_t ** 2)).mean()
    np.testing.assert_allclose(kl, expected, rtol=1e-5)
    logp, ref = RNG.normal(size=(2, 3, 4)).astype(np.float32)
    mask = np.ones((3, 4), bool)
    k3 = losses.text_kl_k3(jnp.asarray(logp), jnp.asarray(ref), jnp.asarray(mask),
                           'token_mean')
    np.testing.assert_allclose(k3, (np.exp(ref - logp) - (ref - logp) - 1).mean(), rtol=1e-5)


def test_regularisers_average_over_the_samples_in_the_loss_only():
    v, v_ref = RNG.normal(size=(2, 3, 2, 4, 5)).astype(np.float32)  # [B, W, N, F]
    weight = np.array([1.0, 0.0, 1.0], np.float32)  # chain 1 is out of the loss (weight 0)
    keep = weight > 0
    np.testing.assert_allclose(losses.velocity_mse(v, v_ref, weight),
                               ((v[keep] - v_ref[keep]) ** 2).mean(), rtol=1e-5)
    std_t = np.array([0.5, 0.2], np.float32)
    kl = losses.latent_kl(jnp.asarray(v), jnp.asarray(v_ref), jnp.asarray(std_t), weight)
    expected = (((v[keep] - v_ref[keep]) ** 2).mean((2, 3)) / (2 * std_t ** 2)).mean()
    np.testing.assert_allclose(kl, expected, rtol=1e-5)


def test_gradient_at_ratio_one_is_advantage_times_grad_logp():
    """At theta = theta_old the clipped surrogate's gradient is -mean(A grad logp) (text) and,
    with RatioNorm, -mean(A s grad logp) (image: the squared-mean term has zero gradient)."""
    logits0 = jnp.asarray(RNG.normal(size=(2, 3, 7)), jnp.float32)
    tokens = jnp.asarray(RNG.integers(0, 7, (2, 3)))
    adv = jnp.array([1.5, -0.5])
    mask = jnp.ones((2, 3), bool)

    def logp_of(logits):
        lp = jax.nn.log_softmax(logits)
        return jnp.take_along_axis(lp, tokens[..., None], -1)[..., 0]

    old = jax.lax.stop_gradient(logp_of(logits0))
    g = jax.grad(lambda lg: losses.text_policy_loss(logp_of(lg), old, mask, adv, eps=0.2,
                                                    aggregation='token_mean')[0])(logits0)
    manual = jax.grad(lambda lg: -jnp.mean(adv[:, None] * logp_of(lg)))(logits0)
    np.testing.assert_allclose(g, manual, atol=1e-6)

    mean0 = jnp.asarray(RNG.normal(size=(2, 1, 4)), jnp.float32)
    x_next = jnp.asarray(RNG.normal(size=(2, 1, 4)), jnp.float32)
    s = jnp.array([0.3])

    def gauss(mean):
        return jnp.mean(-((x_next - mean) ** 2) / (2 * s ** 2) - jnp.log(s), -1)

    def flow(mean):
        lr = losses.ratio_norm_log_ratio(gauss(mean), gauss(mean0), mean, mean0, s[None])
        return losses.flow_policy_loss(lr, adv, eps=1e-6)[0]

    manual = jax.grad(lambda m: -jnp.mean(adv[:, None] * s * gauss(m)))(mean0)
    np.testing.assert_allclose(jax.grad(flow)(mean0), manual, atol=1e-6)


def test_diagnostics_count_only_the_chains_in_the_loss():
    """A chain of weight 0 changes no diagnostic: every metric equals that of the others alone
    (the same holds for the signal statistics of ``advantages.signal_metrics``)."""
    logp_old = RNG.normal(size=(3, 5)).astype(np.float32) - 2
    logp = logp_old + RNG.normal(scale=0.3, size=(3, 5)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], bool)
    adv = np.array([1.0, -0.5, 2.0], np.float32)
    w = np.array([1.0, 0.0, 1.0], np.float32)
    keep = np.array([0, 2])
    _, with_zero = losses.text_policy_loss(logp, logp_old, mask, adv, eps=0.1,
                                           aggregation='token_mean', sample_weight=w)
    _, alone = losses.text_policy_loss(logp[keep], logp_old[keep], mask[keep], adv[keep],
                                       eps=0.1, aggregation='token_mean')
    log_ratio = RNG.normal(scale=1e-3, size=(3, 2)).astype(np.float32)
    _, flow_zero = losses.flow_policy_loss(log_ratio, adv, eps=5e-4, sample_weight=w)
    _, flow_alone = losses.flow_policy_loss(log_ratio[keep], adv[keep], eps=5e-4)
    for got, want in ((with_zero, alone), (flow_zero, flow_alone)):
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-6, err_msg=k)
    logits = RNG.normal(size=(3, 5, 7)).astype(np.float32)
    np.testing.assert_allclose(losses.entropy(logits, mask, w),
                               losses.entropy(logits[keep], mask[keep]), rtol=1e-6)
    # Group statistics over the counted (closed) chains, advantages over the weighted ones.
    r = np.array([1., 2., 3., 100., 4., 4., 4., 9.])
    closed = np.array([1, 1, 1, 0, 1, 1, 1, 0], bool)
    a, weight = advantages.chain_advantages(
        r, closed, 4, truncated_think='drop', skip_zero_variance_groups=True, std='group',
        eps=1e-4, clip=5.0)
    m = advantages.signal_metrics(r, a, weight, advantages.counted_chains(closed, 'drop'), 4)
    assert m['reward/constant_group_fraction'] == 0.5  # group 2's closed chains all scored 4
    assert advantages.counted_chains(closed, 'zero').all()  # a truncated chain still counts
    np.testing.assert_allclose(m['reward/group_std'], np.std([1., 2., 3.]) / 2)
    np.testing.assert_allclose([m['advantage/mean'], m['advantage/max']],
                               [a[:3].mean(), a[:3].max()], rtol=1e-6)
