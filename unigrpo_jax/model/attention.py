"""Rotary position embedding and Bagel's joint attention over a KV cache plus a new segment.

Bagel attends from the tokens of a new segment (a text prefill, a decode token, an image block)
to every cached token of the same sample and, inside the segment, with a causal or a full mask.
``joint_attention`` computes exactly that as one softmax over ``[cache; new]`` keys without
concatenating the cache (the cache may be far larger than the valid prefix, whose length is
``cache_len``).
"""

from __future__ import annotations

import einops
import jax
import jax.numpy as jnp


def rope_tables(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos and sin of Qwen2's default RoPE, float32.

    Args:
      positions: ``[batch, seq]`` integer rope ids (several tokens may share one).
    Returns:
      ``(cos, sin)``, each ``[batch, seq, 1, head_dim]``: ``inv_freq_i = theta^(-2i/head_dim)``,
      angles duplicated over both halves.
    """
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate-half RoPE (dim i paired with i + head_dim/2), computed in float32.

    Args:
      x: ``[batch, seq, heads, head_dim]``.
    """
    xf = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    return (xf * cos + rotated * sin).astype(x.dtype)


def causal_mask(length: int) -> jax.Array:
    """``[1, length, length]`` bool, query i sees key j iff j <= i."""
    return jnp.tril(jnp.ones((length, length), bool))[None]


def full_mask(length: int) -> jax.Array:
    """``[1, length, length]`` bool, every query sees every key (image blocks)."""
    return jnp.ones((1, length, length), bool)


IMPLS = ('xla', 'dot_product')


def joint_attention(q: jax.Array, k: jax.Array, v: jax.Array, new_mask: jax.Array,
                    cache_k: jax.Array | None = None, cache_v: jax.Array | None = None,
                    cache_len: jax.Array | None = None, impl: str = 'xla') -> jax.Array:
    """Softmax attention of new queries over cached keys and the new segment's keys.

    GQA: query head j uses kv head ``j // (heads / kv_heads)``. ``impl='xla'``: explicit
    einsums, logits and softmax in float32 (the parity path); ``'dot_product'``:
    ``jax.nn.dot_product_attention`` (cuDNN flash attention on a GPU in bf16/f16).

    Args:
      q: ``[batch, seq, heads, head_dim]`` (after q-norm and RoPE).
      k, v: ``[batch, seq, kv_heads, head_dim]`` of the new segment.
      new_mask: ``[batch or 1, seq, seq]`` bool, which new keys each new query may see.
      cache_k, cache_v: ``[batch, cache_size, kv_heads, head_dim]`` or None for no cache.
      cache_len: ``[batch]`` int, number of valid cached rows per sample.
    Returns:
      ``[batch, seq, heads, head_dim]`` in q's dtype.
    """
    if impl == 'dot_product':
        return _dot_product_attention(q, k, v, new_mask, cache_k, cache_v, cache_len)
    if impl != 'xla':
        raise ValueError(f'attention impl={impl!r}; expected one of {IMPLS}')
    groups = q.shape[2] // k.shape[2]
    scale = q.shape[-1] ** -0.5
    qg = einops.rearrange(q, 'b q (k g) d -> b k g q d', g=groups)
    logits = jnp.einsum('bkgqd,btkd->bkgqt', qg, k,
                        preferred_element_type=jnp.float32) * scale
    neg = jnp.finfo(jnp.float32).min
    logits = jnp.where(new_mask[:, None, None], logits, neg)
    if cache_k is not None:
        cache_logits = jnp.einsum('bkgqd,bskd->bkgqs', qg, cache_k.astype(q.dtype),
                                  preferred_element_type=jnp.float32) * scale
        valid = jnp.arange(cache_k.shape[1])[None, :] < cache_len[:, None]
        cache_logits = jnp.where(valid[:, None, None, None, :], cache_logits, neg)
        logits = jnp.concatenate([cache_logits, logits], axis=-1)
        v = jnp.concatenate([cache_v.astype(v.dtype), v], axis=1)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum('bkgqt,btkd->bkgqd', probs, v, preferred_element_type=jnp.float32)
    return einops.rearrange(out, 'b k g q d -> b q (k g) d').astype(q.dtype)


def _dot_product_attention(q, k, v, new_mask, cache_k, cache_v, cache_len):
    b, lq = q.shape[:2]
    mask = jnp.broadcast_to(new_mask, (b, lq, lq))
    if cache_k is not None:
        valid = jnp.arange(cache_k.shape[1])[None, :] < cache_len[:, None]
        mask = jnp.concatenate([jnp.broadcast_to(valid[:, None, :], (b, lq, valid.shape[1])),
                                mask], axis=-1)
        k = jnp.concatenate([cache_k.astype(k.dtype), k], axis=1)
        v = jnp.concatenate([cache_v.astype(v.dtype), v], axis=1)
    fused = jax.default_backend() == 'gpu' and q.dtype in (jnp.bfloat16, jnp.float16)
    return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None],
                                        implementation='cudnn' if fused else None)
