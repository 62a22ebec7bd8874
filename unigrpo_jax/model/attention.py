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
from jax.sharding import PartitionSpec as P


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


IMPLS = ('xla', 'flash')  # what a config asks for (``model.attention``)
KERNELS = ('xla', 'pallas', 'cudnn', 'dot_product')  # what a BagelConfig runs (``kernel_for``)
FLASH_BLOCK = 128  # the Pallas TPU kernel's sequence tile: q and kv are padded to multiples


def kernel_for(impl: str, platform: str, dtype: str) -> str:
    """The kernel of image blocks for ``model.attention=impl`` on ``platform`` ('tpu', 'gpu' /
    'cuda', 'cpu') in compute ``dtype``: 'flash' is Pallas flash attention on TPU, cuDNN on
    NVIDIA GPUs in bf16/f16, ``jax.nn.dot_product_attention`` (XLA) elsewhere; 'xla' is the
    parity path everywhere."""
    if impl not in IMPLS:
        raise ValueError(f'model.attention={impl!r}; expected one of {IMPLS}')
    if impl == 'xla':
        return 'xla'
    if platform == 'tpu':
        return 'pallas'
    if platform in ('gpu', 'cuda') and dtype in ('bfloat16', 'float16'):
        return 'cudnn'
    return 'dot_product'


def joint_attention(q: jax.Array, k: jax.Array, v: jax.Array, new_mask: jax.Array | None,
                    cache_k: jax.Array | None = None, cache_v: jax.Array | None = None,
                    cache_len: jax.Array | None = None, impl: str = 'xla') -> jax.Array:
    """Softmax attention of new queries over cached keys and the new segment's keys.

    GQA: query head j uses kv head ``j // (heads / kv_heads)``. ``impl`` (``KERNELS``;
    ``kernel_for`` picks one): ``'xla'``: explicit einsums, logits and softmax in float32 (the
    parity path, every segment); the others run segments with full attention among themselves
    (``new_mask=None``: image blocks) through a fused kernel: Pallas flash attention (TPU),
    cuDNN (NVIDIA GPUs, bf16/f16) or ``jax.nn.dot_product_attention``'s XLA path; causal text
    segments keep the einsum path.

    Args:
      q: ``[batch, seq, heads, head_dim]`` (after q-norm and RoPE).
      k, v: ``[batch, seq, kv_heads, head_dim]`` of the new segment.
      new_mask: ``[batch or 1, seq, seq]`` bool, which new keys each new query may see; None:
        all of them (a full block).
      cache_k, cache_v: ``[batch, cache_size, kv_heads, head_dim]`` or None for no cache.
      cache_len: ``[batch]`` int, number of valid cached rows per sample.
    Returns:
      ``[batch, seq, heads, head_dim]`` in q's dtype.
    """
    if impl not in KERNELS:
        raise ValueError(f'attention kernel {impl!r}; expected one of {KERNELS}')
    if impl != 'xla' and new_mask is None:
        return _fused_full(q, k, v, cache_k, cache_v, cache_len, impl)
    if new_mask is None:
        new_mask = full_mask(q.shape[1])
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


def _new_then_cache(k, v, cache_k, cache_v, cache_len):
    """Keys ``[new; cache]`` and the valid length of each row: the new segment's ``seq`` keys
    and the cache's valid prefix are then one prefix (attention is invariant to key order)."""
    seq = k.shape[1]
    if cache_k is None:
        return k, v, jnp.full((k.shape[0],), seq, jnp.int32)
    return (jnp.concatenate([k, cache_k.astype(k.dtype)], axis=1),
            jnp.concatenate([v, cache_v.astype(v.dtype)], axis=1),
            (seq + cache_len).astype(jnp.int32))


def _fused_full(q, k, v, cache_k, cache_v, cache_len, kernel: str):
    keys, values, valid = _new_then_cache(k, v, cache_k, cache_v, cache_len)
    if kernel == 'pallas':
        return _pallas_tpu(q, keys, values, valid)
    return jax.nn.dot_product_attention(q, keys, values, key_value_seq_lengths=valid,
                                        implementation='cudnn' if kernel == 'cudnn' else 'xla')


def _pad_to(x: jax.Array, axis: int, multiple: int, value=0) -> jax.Array:
    pad = -x.shape[axis] % multiple
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths, constant_values=value)


def _pallas_tpu(q, keys, values, valid):
    """Pallas TPU flash attention, split over the batch by a ``shard_map`` on the abstract mesh
    the program is traced on (``parallel.sharding.traced_on``; a Mosaic kernel is not
    partitioned automatically): the batch goes over the mesh axes whose sizes divide it."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return _pallas_local(q, keys, values, valid)
    axes, size = [], 1
    for name in mesh.axis_names:
        if mesh.shape[name] > 1 and q.shape[0] % (size * mesh.shape[name]) == 0:
            axes.append(name)
            size *= mesh.shape[name]
    batch = P(tuple(axes) or None)
    return jax.shard_map(_pallas_local, mesh=mesh, in_specs=(batch,) * 4, out_specs=batch,
                         check_vma=False)(q, keys, values, valid)


def _pallas_local(q, keys, values, valid):
    """Pallas TPU flash attention: kv heads repeated to the query heads, sequences padded to
    the kernel's tile; padded and invalid keys get segment id 0, every query segment 1 (padded
    query rows are computed and dropped)."""
    from jax.experimental.pallas.ops.tpu import flash_attention as pallas_flash
    b, lq, heads, d = q.shape
    groups = heads // keys.shape[2]
    to_heads = lambda x: _pad_to(einops.repeat(x, 'b s k d -> b (k g) s d', g=groups),  # noqa
                                 2, FLASH_BLOCK)
    kv_ids = (jnp.arange(keys.shape[1])[None] < valid[:, None]).astype(jnp.int32)
    ids = pallas_flash.SegmentIds(q=jnp.ones((b, lq + (-lq % FLASH_BLOCK)), jnp.int32),
                                  kv=_pad_to(kv_ids, 1, FLASH_BLOCK))
    out = pallas_flash.flash_attention(
        _pad_to(einops.rearrange(q, 'b s h d -> b h s d'), 2, FLASH_BLOCK), to_heads(keys),
        to_heads(values), segment_ids=ids, sm_scale=d ** -0.5)
    return einops.rearrange(out[:, :, :lq], 'b h s d -> b s h d').astype(q.dtype)
