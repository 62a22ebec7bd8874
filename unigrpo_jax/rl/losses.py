"""The UniGRPO loss terms (algorithm.md §3-§6), each a pure function of float32 arrays.

Conventions: ``B`` samples (chains), ``T`` reasoning tokens, ``W`` window steps. Every term
returns a scalar to be *minimised*, so the surrogate objectives ``J`` enter with a minus sign.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp

TEXT_AGGREGATIONS = ('seq_mean_token_mean', 'token_mean')


def clipped_surrogate(ratio: jax.Array, advantage: jax.Array, eps_low: float,
                      eps_high: float) -> jax.Array:
    """PPO's ``min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)`` elementwise."""
    return jnp.minimum(ratio * advantage,
                       jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high) * advantage)


def _weights(values: jax.Array, sample_weight: jax.Array | None) -> jax.Array:
    """``[B]`` float32 sample weights (all ones when None)."""
    if sample_weight is None:
        return jnp.ones(values.shape[:1], jnp.float32)
    return sample_weight.astype(jnp.float32)


def token_denominator(mask: jax.Array, mode: str,
                      sample_weight: jax.Array | None = None) -> jax.Array:
    """The denominator ``aggregate_tokens`` divides by: the masked tokens (``token_mean``) or
    the samples with tokens (``seq_mean_token_mean``) of the weighted batch, at least 1. A
    minibatch's denominator makes its micro-batches' terms add up to the minibatch's term."""
    if mode not in TEXT_AGGREGATIONS:
        raise ValueError(f'text aggregation {mode!r}; expected one of {TEXT_AGGREGATIONS}')
    mask = mask.astype(jnp.float32)
    w = _weights(mask, sample_weight)
    if mode == 'token_mean':
        return jnp.maximum(jnp.sum(mask * w[:, None]), 1.0)
    return jnp.maximum(jnp.sum(w * (jnp.sum(mask, 1) > 0)), 1.0)


def aggregate_tokens(values: jax.Array, mask: jax.Array, mode: str,
                     sample_weight: jax.Array | None = None,
                     denominator: jax.Array | None = None) -> jax.Array:
    """Mean of per-token ``values [B, T]`` over the ``mask``ed tokens.

    ``seq_mean_token_mean``: mean over each sample's tokens, then over samples (algorithm.md
    §3, GRPO's ``1/G sum_i 1/|y_i| sum_k``); ``token_mean``: mean over all tokens of the batch.
    ``sample_weight [B]`` (0/1) drops samples (e.g. zero-advantage groups). ``denominator``:
    ``token_denominator`` of the whole minibatch when ``values`` are one micro-batch of it
    (default: of these samples).
    """
    if denominator is None:
        denominator = token_denominator(mask, mode, sample_weight)
    mask = mask.astype(jnp.float32)
    w = _weights(values, sample_weight)
    if mode == 'token_mean':
        return jnp.sum(values * mask * w[:, None]) / denominator
    per_sample = jnp.sum(values * mask, 1) / jnp.maximum(jnp.sum(mask, 1), 1.0)
    return jnp.sum(per_sample * w * (jnp.sum(mask, 1) > 0)) / denominator


def text_policy_loss(logp: jax.Array, logp_old: jax.Array, mask: jax.Array,
                     advantages: jax.Array, *, eps: float, aggregation: str,
                     sample_weight: jax.Array | None = None,
                     denominator: jax.Array | None = None,
                     tokens: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """``-J_text``: clipped GRPO surrogate over reasoning tokens.

    Args:
      logp, logp_old: ``[B, T]`` log-probs of the sampled tokens, current and rollout.
      mask: ``[B, T]`` sampled tokens; advantages: ``[B]``.
      denominator: see ``aggregate_tokens``.
      tokens: the weighted token count the diagnostics divide by (``sum(mask * w)``, at least
        1; of the whole minibatch when this is one micro-batch of it; default: of these).
    Returns:
      ``(loss, metrics)`` with the mean ratio, the clip fraction and the k3 KL(old || new)
      over the tokens of the chains in the loss (weighted by ``sample_weight``).
    """
    ratio = jnp.exp(logp - logp_old)
    adv = advantages[:, None]
    objective = clipped_surrogate(ratio, adv, eps, eps)
    loss = -aggregate_tokens(objective, mask, aggregation, sample_weight, denominator)
    m = mask.astype(jnp.float32) * _weights(logp, sample_weight)[:, None]
    n = jnp.maximum(jnp.sum(m), 1.0) if tokens is None else tokens
    clipped = (jnp.abs(ratio - 1.0) > eps).astype(jnp.float32)
    delta = logp_old - logp
    return loss, {
        'text/ratio_mean': jnp.sum(ratio * m) / n,
        'text/clip_fraction': jnp.sum(clipped * m) / n,
        # k3 estimator of KL(old || new) over the sampled tokens
        'text/approx_kl': jnp.sum((jnp.exp(-delta) - 1.0 + delta) * m) / n,
    }


def ratio_norm_log_ratio(logp: jax.Array, logp_old: jax.Array, mean: jax.Array,
                         mean_old: jax.Array, s: jax.Array) -> jax.Array:
    """GRPO-Guard's RatioNorm: ``s * ((logp - logp_old) + mean_d((mean - mean_old)^2) / (2 s^2))``.

    Args:
      logp, logp_old: ``[B, W]`` element-mean Gaussian log-probs of the stored ``x_next``.
      mean, mean_old: ``[B, W, ...]`` means of the Gaussian step.
      s: ``[W]`` (or broadcastable to ``[B, W]``) step std ``std_t sqrt(-dt)``.
    Returns: ``[B, W]`` normalised log-ratio.
    """
    sq = jnp.mean((mean - mean_old) ** 2, axis=tuple(range(2, mean.ndim)))
    return s * ((logp - logp_old) + sq / (2.0 * s ** 2))


def flow_policy_loss(log_ratio: jax.Array, advantages: jax.Array, *, eps: float,
                     step_weight: jax.Array | None = None,
                     sample_weight: jax.Array | None = None,
                     denominator: jax.Array | None = None,
                     diagnostic_weight: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """``-J_flow``: clipped surrogate on the (RatioNorm) ratio, mean over window steps and
    samples. ``step_weight [W]`` (mean 1) reweights steps, e.g. GRPO-Guard's ``1/|dt|``.
    ``denominator``: the summed sample weight of the whole minibatch when this is one
    micro-batch of it (default: of these samples, at least 1). The diagnostics (mean ratio,
    clip fraction, KL) are over the window steps of the chains in the loss, weighted by
    ``sample_weight`` and divided by ``diagnostic_weight`` (the samples' summed weight, of the
    minibatch or of these, as ``denominator`` but never rescaled by ``rl.compaction``)."""
    ratio = jnp.exp(log_ratio)
    objective = clipped_surrogate(ratio, advantages[:, None], eps, eps)
    if step_weight is not None:
        objective = objective * step_weight[None, :]
    w = _weights(ratio, sample_weight)
    if denominator is None:
        denominator = jnp.maximum(jnp.sum(w), 1.0)
    if diagnostic_weight is None:
        diagnostic_weight = jnp.maximum(jnp.sum(w), 1.0)
    loss = -jnp.sum(jnp.mean(objective, 1) * w) / denominator

    def mean(x):  # [B, W] -> the weighted mean over the chains in the loss
        return jnp.sum(jnp.mean(x, 1) * w) / diagnostic_weight

    return loss, {
        'image/ratio_mean': mean(ratio),
        'image/clip_fraction': mean((jnp.abs(ratio - 1.0) > eps).astype(jnp.float32)),
        'image/approx_kl': mean(jnp.exp(log_ratio) - 1.0 - log_ratio),
    }


def _sample_mean(per_sample: jax.Array, sample_weight: jax.Array | None,
                 denominator: jax.Array | None) -> jax.Array:
    """``sum_i w_i x_i / denominator`` (default: the mean over the samples in the loss)."""
    if sample_weight is None:
        sample_weight = jnp.ones_like(per_sample)
    if denominator is None:
        denominator = jnp.maximum(jnp.sum(sample_weight), 1.0)
    return jnp.sum(sample_weight * per_sample) / denominator


def velocity_mse(v: jax.Array, v_ref: jax.Array, sample_weight: jax.Array | None = None,
                 denominator: jax.Array | None = None) -> jax.Array:
    """``mean over samples of mean over window steps and elements of (v - v_ref)^2``
    (algorithm.md §5). ``v [B, W, ...]``; only the samples in the loss count
    (``sample_weight [B]``, e.g. 0 for a dropped truncated chain); ``denominator``: their
    weight over the whole minibatch when ``v`` is one micro-batch of it."""
    sq = jnp.mean((v - jax.lax.stop_gradient(v_ref)) ** 2, axis=tuple(range(1, v.ndim)))
    return _sample_mean(sq, sample_weight, denominator)


def latent_kl(mean: jax.Array, mean_ref: jax.Array, std_t: jax.Array,
              sample_weight: jax.Array | None = None, denominator: jax.Array | None = None
              ) -> jax.Array:
    """FlowGRPO's latent KL: ``mean_d (mean - mean_ref)^2 / (2 std_t^2)`` averaged over steps
    and samples. ``mean [B, W, ...]``, ``std_t [W]``; the samples as in ``velocity_mse``."""
    sq = jnp.mean((mean - jax.lax.stop_gradient(mean_ref)) ** 2, axis=tuple(range(2, mean.ndim)))
    per_sample = jnp.mean(sq / (2.0 * std_t[None, :] ** 2), axis=1)
    return _sample_mean(per_sample, sample_weight, denominator)


def text_kl_k3(logp: jax.Array, logp_ref: jax.Array, mask: jax.Array, aggregation: str,
               sample_weight: jax.Array | None = None,
               denominator: jax.Array | None = None) -> jax.Array:
    """Schulman's k3 estimator of KL(policy || ref) on the sampled tokens:
    ``exp(ref - logp) - (ref - logp) - 1``, aggregated like the text term."""
    d = jax.lax.stop_gradient(logp_ref) - logp
    return aggregate_tokens(jnp.exp(d) - d - 1.0, mask, aggregation, sample_weight, denominator)


def entropy(logits: jax.Array, mask: jax.Array, sample_weight: jax.Array | None = None,
            tokens: jax.Array | None = None) -> jax.Array:
    """Mean entropy of the token distributions ``logits [B, T, V]`` over the masked tokens of
    the chains in the loss (weighted by ``sample_weight``; ``tokens`` as in
    ``text_policy_loss``)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    h = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    m = mask.astype(jnp.float32) * _weights(logits, sample_weight)[:, None]
    return jnp.sum(h * m) / (jnp.maximum(jnp.sum(m), 1.0) if tokens is None else tokens)
