"""The explicit KV cache pytree of Bagel's context (Bagel's ``NaiveCache`` + counters).

Per layer and sample the cache holds keys after k-norm and RoPE and raw values, rows in token
order, in a buffer of fixed size (so loops over it never recompile). Two counters per sample
(bagel.md §4.1): ``length`` = valid cached rows, ``rope`` = the next RoPE position id.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from unigrpo_jax.model.config import LLMConfig


@struct.dataclass
class KVCache:
    """Keys/values ``[layers, batch, size, kv_heads, head_dim]``; ``length``/``rope`` ``[batch]``."""

    k: jax.Array
    v: jax.Array
    length: jax.Array
    rope: jax.Array

    @property
    def size(self) -> int:
        return self.k.shape[2]

    @property
    def batch(self) -> int:
        return self.k.shape[1]


def init_cache(config: LLMConfig, batch: int, size: int, dtype=jnp.float32) -> KVCache:
    """An empty cache of ``size`` rows per sample (length 0, rope 0)."""
    shape = (config.num_hidden_layers, batch, size, config.num_key_value_heads, config.head_dim)
    zeros = jnp.zeros((batch,), jnp.int32)
    return KVCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype), length=zeros, rope=zeros)


def write_rows(buffer: jax.Array, rows: jax.Array, start: jax.Array) -> jax.Array:
    """Writes ``rows [batch, seq, ...]`` into ``buffer [batch, size, ...]`` at ``start [batch]``.

    The caller guarantees ``start + seq <= size`` (``dynamic_update_slice`` would clamp).
    """
    def one(buf, new, s):
        return jax.lax.dynamic_update_slice_in_dim(buf, new.astype(buf.dtype), s, axis=0)
    return jax.vmap(one)(buffer, rows, start)

