"""Next-token sampling with temperature, top-k and top-p, and the log-prob RL needs.

The recorded log-probability of a sampled token is taken under the distribution sampling
actually used: ``log_softmax(filter(logits) / temperature)``. Replaying it (the GRPO ratio)
must use the same temperature and filters; ``token_logprobs`` is that shared computation.
``temperature == 0`` means greedy decoding (log-probs then come from temperature 1).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class TokenSampler:
    """Built and checked from a config's ``rollout`` section by ``train.settings``."""

    temperature: float  # 0: greedy
    top_k: int          # 0: off
    top_p: float        # in (0, 1]; 1: off


def filtered_logits(logits: jax.Array, sampler: TokenSampler) -> jax.Array:
    """``[..., vocab]`` float32 logits with temperature applied and filtered tokens at -inf."""
    logits = logits.astype(jnp.float32)
    if sampler.temperature > 0:
        logits = logits / sampler.temperature
    neg = jnp.full_like(logits, -jnp.inf)
    if sampler.top_k > 0:
        kth = jax.lax.top_k(logits, sampler.top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, neg, logits)
    if sampler.top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # Keep a token if the mass before it is < top_p (the top token is always kept).
        keep_sorted = (jnp.cumsum(probs, axis=-1) - probs) < sampler.top_p
        keep = jnp.zeros_like(keep_sorted).at[
            tuple(jnp.indices(order.shape)[:-1]) + (order,)].set(keep_sorted)
        logits = jnp.where(keep, logits, neg)
    return logits


def token_logprobs(logits: jax.Array, tokens: jax.Array, sampler: TokenSampler) -> jax.Array:
    """Log-probs ``[...]`` of ``tokens [...]`` under the sampling distribution of ``logits``."""
    logp = jax.nn.log_softmax(filtered_logits(logits, sampler), axis=-1)
    return jnp.take_along_axis(logp, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]


def sample_tokens(rng: jax.Array, logits: jax.Array,
                  sampler: TokenSampler) -> tuple[jax.Array, jax.Array]:
    """Samples one token per row of ``logits [batch, vocab]``.

    Args:
      rng: ``[batch]`` keys (one per row, so results do not depend on how rows are sharded).
    Returns:
      ``(tokens [batch] int32, logprobs [batch] float32)``.
    """
    if sampler.temperature == 0:
        tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    else:
        filtered = filtered_logits(logits, sampler)
        tokens = jax.vmap(jax.random.categorical)(rng, filtered).astype(jnp.int32)
    return tokens, token_logprobs(logits, tokens, sampler)
