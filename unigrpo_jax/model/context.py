"""Bagel's context operations as pure functions of explicit params and KV caches.

These are the segment types of bagel.md §4.2; each takes and returns a ``KVCache`` and keeps its
two counters per sample (``length`` = cached rows, ``rope`` = next position id):

=====================  ==========================  ============  ==========  ====================
function               tokens                      positions     mask        cache after
=====================  ==========================  ============  ==========  ====================
``prefill_text``       ``[bos] ids [eos]`` (given)  rope + i      causal      written, both += L
``decode_step``        one token                   rope          (sees all)  written, both += 1
``prefill_vit_image``  soi, ViT tokens, eoi        all rope      full        written, rope += 1
``prefill_vae_image``  soi, latents (t=0), eoi     all rope      full        written, rope += 1
``image_velocities``   W x (soi, latents, eoi)     all rope      per block   not written
=====================  ==========================  ============  ==========  ====================

(``image_velocity`` is the one-block case.)

Inside a call the und tokens are laid out first (markers before latents); attention is
permutation-invariant given positions and masks, so only the order of the written cache rows
differs from Bagel's (``[soi, eoi, latents]``), never a result.
"""

from __future__ import annotations

import functools

import einops
import jax
import jax.numpy as jnp

from unigrpo_jax.model import attention
from unigrpo_jax.model.bagel import Bagel
from unigrpo_jax.model.config import BagelConfig
from unigrpo_jax.model.kv_cache import KVCache
from unigrpo_jax.parallel import sharding


def _apply(config: BagelConfig, params, *args, method, **kwargs):
    return Bagel(config).apply({'params': params}, *args, method=method, **kwargs)


def _run_segment(config: BagelConfig, params, cache: KVCache, x, positions, new_mask, n_und,
                 write: bool):
    """Runs a new segment against the cache; returns (hidden, cache_kv or segment kv)."""
    return _apply(config, params, x, positions, new_mask, n_und=n_und,
                  cache=(cache.k, cache.v), cache_len=cache.length, write_cache=write,
                  method=Bagel.decode)


def _check_capacity(cache: KVCache, rows: int) -> None:
    """Raises if ``rows`` new rows cannot fit even an empty cache (static check)."""
    if rows > cache.size:
        raise ValueError(f'a segment of {rows} tokens does not fit a KV cache of {cache.size} rows')


@functools.partial(jax.jit, static_argnames=('config',))
def prefill_text(params, config: BagelConfig, cache: KVCache, ids: jax.Array,
                 lengths: jax.Array | None = None) -> tuple[KVCache, jax.Array]:
    """Prefills a text segment (und expert, causal) and writes it to the cache.

    Args:
      ids: ``[batch, seq]`` token ids, already wrapped as ``[bos] + text + [eos]``; rows shorter
        than ``seq`` are right-padded and give their true length in ``lengths``.
      lengths: ``[batch]`` valid tokens per row (default: all ``seq``). Padding rows are written
        past the valid length and overwritten by the next segment.
    Returns:
      ``(cache, hidden [batch, seq, embed])``: counters advanced by ``lengths``.
    """
    b, seq = ids.shape
    _check_capacity(cache, seq)
    lengths = jnp.full((b,), seq, jnp.int32) if lengths is None else lengths.astype(jnp.int32)
    x = sharding.constrain_batch(_apply(config, params, ids, method=Bagel.embed_text))
    positions = cache.rope[:, None] + jnp.arange(seq, dtype=jnp.int32)
    hidden, (k, v) = _run_segment(config, params, cache, x, positions,
                                  attention.causal_mask(seq), seq, True)
    cache = KVCache(k=k, v=v, length=cache.length + lengths, rope=cache.rope + lengths)
    return cache, hidden


@functools.partial(jax.jit, static_argnames=('config',))
def decode_step(params, config: BagelConfig, cache: KVCache,
                tokens: jax.Array) -> tuple[KVCache, jax.Array]:
    """Feeds one token per sample at position ``rope``; returns the cache and float32 logits.

    Args:
      tokens: ``[batch]`` int.
    Returns:
      ``(cache, logits [batch, vocab])``.
    """
    cache, hidden = prefill_text(params, config, cache, tokens[:, None])
    return cache, _apply(config, params, hidden[:, 0], method=Bagel.lm_logits)


@functools.partial(jax.jit, static_argnames=('config',))
def text_logits(params, config: BagelConfig, hidden: jax.Array) -> jax.Array:
    """The AR head on final hidden states ``[..., embed]`` -> ``[..., vocab]``."""
    return _apply(config, params, hidden, method=Bagel.lm_logits)


def _image_block(config: BagelConfig, params, cache: KVCache, inner: jax.Array, *,
                 inner_is_gen: bool, write: bool):
    """Runs one image block ``[soi, eoi] + inner`` per sample at its position ``rope``.

    The block attends to the cache and fully to itself (``new_mask=None``: the fused kernel of
    ``attention.joint_attention``). ``inner [b, n, embed]``; returns ``(hidden [b, 2 + n,
    embed]`` in that layout, kv)``.
    """
    b, n, _ = inner.shape
    if write:
        _check_capacity(cache, n + 2)
    t = config.tokens
    markers = jnp.broadcast_to(jnp.array([t.start_of_image, t.end_of_image], jnp.int32), (b, 2))
    x = jnp.concatenate([_apply(config, params, markers, method=Bagel.embed_text), inner], 1)
    positions = jnp.broadcast_to(cache.rope[:, None], x.shape[:2])
    return _run_segment(config, params, cache, x, positions, None,
                        2 if inner_is_gen else x.shape[1], write)


def bagel_block_order(hidden: jax.Array) -> jax.Array:
    """One block's ``[soi, eoi, inner...]`` rows -> Bagel's ``[soi, inner..., eoi]`` (axis 1)."""
    return jnp.concatenate([hidden[:, :1], hidden[:, 2:], hidden[:, 1:2]], axis=1)


def _commit_image(cache: KVCache, kv, rows: int) -> KVCache:
    k, v = kv
    return KVCache(k=k, v=v, length=cache.length + rows, rope=cache.rope + 1)


@functools.partial(jax.jit, static_argnames=('config',))
def prefill_vit_image(params, config: BagelConfig, cache: KVCache, patches: jax.Array,
                      position_ids: jax.Array) -> tuple[KVCache, jax.Array]:
    """Prefills one understanding image per sample (ViT block, und expert).

    Args:
      patches: ``[batch, tokens, p*p*C]`` patchified images (all the same size).
      position_ids: ``[tokens]`` ViT position ids (``row * max_side + col``).
    Returns:
      ``(cache, hidden [batch, tokens + 2, embed])`` in Bagel's order ``[soi, tokens, eoi]``.
    """
    b, n, _ = patches.shape
    seg = jnp.repeat(jnp.arange(b, dtype=jnp.int32), n)
    emb = _apply(config, params, patches.reshape(b * n, -1), jnp.tile(position_ids, b), seg,
                 method=Bagel.embed_vit).reshape(b, n, -1)
    hidden, kv = _image_block(config, params, cache, emb, inner_is_gen=False, write=True)
    return _commit_image(cache, kv, n + 2), bagel_block_order(hidden)


@functools.partial(jax.jit, static_argnames=('config',))
def prefill_vae_image(params, config: BagelConfig, cache: KVCache, latent_tokens: jax.Array,
                      position_ids: jax.Array) -> tuple[KVCache, jax.Array]:
    """Prefills a clean VAE conditioning image per sample (latents on the gen expert, t = 0).

    Args:
      latent_tokens: ``[batch, tokens, latent_token_dim]`` (``latents.patchify`` of the encode).
      position_ids: ``[tokens]`` latent position ids.
    Returns:
      ``(cache, hidden [batch, tokens + 2, embed])`` in Bagel's order.
    """
    b, n, _ = latent_tokens.shape
    emb = _apply(config, params, latent_tokens, jnp.zeros((b,), jnp.float32), position_ids[None],
                 method=Bagel.embed_latents)
    hidden, kv = _image_block(config, params, cache, emb, inner_is_gen=True, write=True)
    return _commit_image(cache, kv, n + 2), bagel_block_order(hidden)


@functools.partial(jax.jit, static_argnames=('config',))
def image_velocities(params, config: BagelConfig, cache: KVCache, x_t: jax.Array, t: jax.Array,
                     position_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Velocities of W noisy images per sample, each attending to the context, not each other.

    The RL replay of a rollout's window steps: the W images of a sample are W rows of one
    batch over the sample's cache repeated W times, so each is computed exactly as the rollout
    computed it (``image_velocity``); the cache is unchanged.

    Args:
      x_t: ``[batch, W, tokens, latent_token_dim]`` noisy latent tokens (row-major).
      t: ``[batch, W]`` flow times (1 = noise).
      position_ids: ``[tokens]`` latent position ids.
    Returns:
      ``(v [batch, W, tokens, latent_token_dim] float32, hidden [batch, W, tokens + 2, embed])``,
      each block's hidden in Bagel's order ``[soi, latents, eoi]``.
    """
    b, w = x_t.shape[:2]
    rows = lambda x: einops.rearrange(x, 'b w ... -> (b w) ...')  # noqa: E731
    per_row = KVCache(k=jnp.repeat(cache.k, w, axis=1), v=jnp.repeat(cache.v, w, axis=1),
                      length=jnp.repeat(cache.length, w), rope=jnp.repeat(cache.rope, w))
    emb = _apply(config, params, rows(x_t), rows(t), position_ids[None],
                 method=Bagel.embed_latents)
    hidden, _ = _image_block(config, params, per_row, emb, inner_is_gen=True, write=False)
    v = _apply(config, params, hidden[:, 2:], method=Bagel.velocity)
    blocks = lambda x: einops.rearrange(x, '(b w) ... -> b w ...', b=b)  # noqa: E731
    return blocks(v), blocks(bagel_block_order(hidden))


def image_velocity(params, config: BagelConfig, cache: KVCache, x_t: jax.Array, t: jax.Array,
                   position_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The flow head's velocity for one noisy image attending to the context (cache unchanged).

    Args:
      x_t: ``[batch, tokens, latent_token_dim]`` noisy latent tokens (row-major).
      t: ``[batch]`` flow time (1 = noise).
      position_ids: ``[tokens]`` latent position ids.
    Returns:
      ``(v [batch, tokens, latent_token_dim] float32, hidden [batch, tokens + 2, embed])``, the
      hidden in Bagel's order ``[soi, latents, eoi]``.
    """
    v, hidden = image_velocities(params, config, cache, x_t[:, None], t[:, None], position_ids)
    return v[:, 0], hidden[:, 0]


@functools.partial(jax.jit, static_argnames=('config', 'n_und'))
def packed_forward(params, config: BagelConfig, x: jax.Array, positions: jax.Array,
                   mask: jax.Array, n_und: int):
    """Training-mode forward of a packed sequence without a cache (jitted).

    Args:
      x: ``[batch, seq, embed]`` input embeddings, the ``n_und`` und tokens first.
      positions: ``[batch, seq]`` rope ids.
      mask: ``[batch, seq, seq]`` bool, query row may attend key column.
    Returns:
      ``hidden [batch, seq, embed]`` float32 (final norms applied per expert).
    """
    hidden, _ = _apply(config, params, x, positions, mask, n_und=n_und, method=Bagel.decode)
    return hidden
