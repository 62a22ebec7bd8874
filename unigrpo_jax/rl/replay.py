"""Replaying a rollout under the current (or the reference) params.

The context is rebuilt exactly as the rollout built it (system, prompt and reasoning segments
prefilled into a KV cache); the reasoning segment's hidden states give the text logits of every
sampled token, and the W window steps are one packed forward of W image blocks that attend to
the context but not to each other (``context.image_velocities``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from unigrpo_jax.model import context, latents
from unigrpo_jax.model.config import BagelConfig
from unigrpo_jax.model.kv_cache import KVCache, init_cache
from unigrpo_jax.rollout.rollout import Rollout, think_segment


@struct.dataclass
class TrainBatch:
    """What the loss needs of a rollout (a minibatch of chains), plus advantages.

    Shapes as ``Rollout``: ``[B, ...]`` per chain; ``system_ids [S]``, ``t``/``t_next`` ``[W]``.
    """

    system_ids: jax.Array
    prompt_ids: jax.Array
    prompt_lengths: jax.Array
    think_tokens: jax.Array
    think_logprobs: jax.Array
    think_mask: jax.Array
    think_closed: jax.Array
    t: jax.Array
    t_next: jax.Array
    x_t: jax.Array
    x_next: jax.Array
    logp: jax.Array
    mean: jax.Array
    advantages: jax.Array
    sample_weight: jax.Array


def train_batch(rollout: Rollout, system_ids: jax.Array, advantages: jax.Array,
                sample_weight: jax.Array) -> TrainBatch:
    return TrainBatch(
        system_ids=system_ids, prompt_ids=rollout.prompt_ids,
        prompt_lengths=rollout.prompt_lengths, think_tokens=rollout.think_tokens,
        think_logprobs=rollout.think_logprobs, think_mask=rollout.think_mask,
        think_closed=rollout.think_closed, t=rollout.t, t_next=rollout.t_next,
        x_t=rollout.x_t, x_next=rollout.x_next, logp=rollout.logp, mean=rollout.mean,
        advantages=advantages, sample_weight=sample_weight)


def select_chains(batch: TrainBatch, idx: jax.Array) -> TrainBatch:
    """The minibatch of chains ``idx [M]`` (shared fields: system ids and the window times)."""
    shared = {'system_ids', 't', 't_next'}
    return batch.replace(**{f.name: getattr(batch, f.name)[idx]
                            for f in dataclasses.fields(batch) if f.name not in shared})


def rebuild_context(params, config: BagelConfig, batch: TrainBatch,
                    think: bool) -> tuple[KVCache, jax.Array | None]:
    """The rollout's context cache; with ``think`` also the reasoning segment's hidden states
    ``[B, T + 2, embed]`` (row k predicts reasoning token k + 1 for k < T)."""
    b, t_max = batch.think_tokens.shape
    s = batch.system_ids.shape[0] if think else 0
    cache = init_cache(config.llm, b, s + batch.prompt_ids.shape[1] + (t_max + 2 if think else 0))
    if think and s:
        cache, _ = context.prefill_text(params, config, cache,
                                        jnp.broadcast_to(batch.system_ids, (b, s)))
    cache, _ = context.prefill_text(params, config, cache, batch.prompt_ids, batch.prompt_lengths)
    if not think:
        return cache, None
    ids, lengths = think_segment(batch.think_tokens, batch.think_mask, batch.think_closed,
                                 config.tokens.bos, config.tokens.eos)
    return context.prefill_text(params, config, cache, ids, lengths)


def window_velocities(params, config: BagelConfig, cache: KVCache, batch: TrainBatch,
                      image_size: tuple[int, int]) -> jax.Array:
    """Velocities ``[B, W, N, F]`` of the stored window states, one packed forward."""
    h, w = latents.token_grid(*image_size, config.latent_downsample)
    pos = jnp.asarray(latents.position_ids(h, w, config.max_latent_size))
    t = jnp.broadcast_to(batch.t, batch.x_t.shape[:2])
    return context.image_velocities(params, config, cache, batch.x_t, t, pos)[0]


def text_logits(params, config: BagelConfig, think_hidden: jax.Array, t_max: int) -> jax.Array:
    """Logits ``[B, T, vocab]`` predicting each sampled reasoning token."""
    return context.text_logits(params, config, think_hidden[:, :t_max])
