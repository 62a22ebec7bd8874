"""Replaying a rollout under the current (or the reference) params.

The context is rebuilt exactly as the rollout built it (system, prompt and reasoning segments
prefilled into a KV cache); the reasoning segment's hidden states give the text logits of every
sampled token, and the W window steps are one packed forward of W image blocks that attend to
the context but not to each other (``context.image_velocities``). ``think_logprobs`` and
``window_logp`` are the one computation of the replayed log-probs (the loss and the tests call
them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from unigrpo_jax.model import bagel, context, latents
from unigrpo_jax.model.config import BagelConfig
from unigrpo_jax.model.kv_cache import KVCache, init_cache
from unigrpo_jax.parallel import sharding
from unigrpo_jax.rollout import sde, trajectory
from unigrpo_jax.rollout.rollout import RolloutConfig, rollout_shapes, think_segment
from unigrpo_jax.rollout.sampling import TokenSampler, token_logprobs
from unigrpo_jax.rollout.schedule import Schedule
from unigrpo_jax.rollout.trajectory import Rollout, Trajectory, shared_field


@struct.dataclass
class TrainBatch:
    """What the loss needs of ``B`` chains: their trajectory, advantages, weights and the
    frozen reference's outputs on them.

    ``system_ids [S]`` is shared by all chains (``[0]`` without a system segment); the rest is
    per chain (``trajectory.select_chains`` takes a minibatch). ``extras`` holds what the
    objective's terms prepare once per rollout batch (``rl.objective.prepare``: the frozen
    reference's outputs, points a term trains on), not per update; empty until then.
    """

    trajectory: Trajectory
    advantages: jax.Array       # [B] float32
    sample_weight: jax.Array    # [B] float32, 0: the chain is not in the loss
    final_latents: jax.Array    # [B, N, F] float32, the clean latents of the drawn images
    extras: dict                # {name: [B, ...]} the terms' preparations (objective.prepare)
    # [B] float32: 1 where the terms' old values (log-probs, step means) are the loss's own
    # forward (stop-gradient: the ratio is exactly 1, in every dtype: a chain's first update,
    # with the params it was sampled with), 0 where they are recorded (``objective.record_old``).
    fresh_old: jax.Array
    system_ids: jax.Array = shared_field()
    # [] float32 each: the whole rollout batch's policy-gradient denominators over this batch's
    # (chain weights; reasoning tokens), 1 unless the batch holds only the chains with signal
    # (``rl.compaction``): the policy-gradient terms then divide as the whole batch would.
    weight_scale: jax.Array = shared_field()
    token_scale: jax.Array = shared_field()


def train_batch(rollout: Rollout, system_ids: jax.Array, advantages: jax.Array,
                sample_weight: jax.Array, fresh_old: jax.Array | None = None) -> TrainBatch:
    """The batch before its terms' preparations (``extras`` empty until then); ``fresh_old``
    defaults to every chain (all of them in the first update)."""
    traj = rollout.trajectory
    b = traj.x_t.shape[0]
    return TrainBatch(trajectory=traj, system_ids=system_ids, advantages=advantages,
                      sample_weight=sample_weight,
                      final_latents=rollout.final_latents, extras={},
                      fresh_old=(jnp.ones((b,), jnp.float32) if fresh_old is None
                                 else fresh_old.astype(jnp.float32)),
                      weight_scale=jnp.float32(1.0), token_scale=jnp.float32(1.0))


def train_batch_shapes(config: BagelConfig, rc: RolloutConfig, system_len: int, prompt_len: int,
                       chains: int, reference: Callable | None = None) -> TrainBatch:
    """A ``TrainBatch`` of ``chains`` chains as ``ShapeDtypeStruct``s: ``jax.eval_shape`` of the
    builders a batch goes through (``rollout.rollout_shapes`` of one prompt, ``train_batch``,
    ``reference(params, batch) -> batch`` (``objective.prepare``) when given,
    ``trajectory.select_chains``), so no field's shape is written by hand."""
    out = rollout_shapes(config, dataclasses.replace(rc, decode_images=False), system_len,
                         prompt_len, 1)
    sds = jax.ShapeDtypeStruct
    group = trajectory.num_chains(out)
    batch = jax.eval_shape(train_batch, out, sds((system_len,), jnp.int32),
                           sds((group,), jnp.float32), sds((group,), jnp.float32))
    if reference is not None:
        batch = jax.eval_shape(reference, nn.unbox(bagel.abstract_params(config)), batch)
    return jax.eval_shape(trajectory.select_chains, batch, sds((chains,), jnp.int32))


def rebuild_context(params, config: BagelConfig, batch: TrainBatch,
                    think: bool) -> tuple[KVCache, jax.Array | None]:
    """The rollout's context cache; with ``think`` also the reasoning segment's hidden states
    ``[B, T + 2, embed]`` (row k predicts reasoning token k + 1 for k < T)."""
    traj = batch.trajectory
    b, t_max = traj.think_tokens.shape
    s = batch.system_ids.shape[0] if think else 0
    cache = init_cache(config.llm, b, s + traj.prompt_ids.shape[1] + (t_max + 2 if think else 0))
    if think and s:
        cache, _ = context.prefill_text(params, config, cache,
                                        jnp.broadcast_to(batch.system_ids, (b, s)))
    cache, _ = context.prefill_text(params, config, cache, traj.prompt_ids, traj.prompt_lengths)
    if not think:
        return cache, None
    ids, lengths = think_segment(traj.think_tokens, traj.think_mask, traj.think_closed,
                                 config.tokens.bos, config.tokens.eos)
    return context.prefill_text(params, config, cache, ids, lengths)


def think_logprobs(params, config: BagelConfig, think_hidden: jax.Array, traj: Trajectory,
                   sampler: TokenSampler) -> tuple[jax.Array, jax.Array]:
    """``(logits [B, T, vocab], logp [B, T])`` of each sampled reasoning token, under the
    rollout's sampling distribution."""
    logits = sharding.constrain_batch(context.text_logits(
        params, config, sharding.constrain_batch(think_hidden[:, :traj.think_tokens.shape[1]])))
    return logits, token_logprobs(logits, traj.think_tokens, sampler)


def velocities(params, config: BagelConfig, cache: KVCache, x_t: jax.Array, t: jax.Array,
               schedule: Schedule) -> jax.Array:
    """Velocities ``[B, K, N, F]`` of ``K`` noisy latents per chain ``x_t [B, K, N, F]`` at flow
    times ``t [B, K]``, each attending to its chain's context, one packed forward."""
    h, w = schedule.token_grid(config)
    pos = jnp.asarray(latents.position_ids(h, w, config.max_latent_size))
    return context.image_velocities(params, config, cache, x_t, t, pos)[0]


def window_velocities(params, config: BagelConfig, cache: KVCache, traj: Trajectory,
                      schedule: Schedule) -> jax.Array:
    """Velocities ``[B, W, N, F]`` of the stored window states, one packed forward."""
    return velocities(params, config, cache, traj.x_t,
                      jnp.broadcast_to(traj.t, traj.x_t.shape[:2]), schedule)


def window_std(traj: Trajectory, schedule: Schedule) -> tuple[jax.Array, jax.Array]:
    """``(std_t [W], s [W])`` of the window steps (``sde.sde_std``)."""
    return sde.sde_std(traj.t, traj.t_next, schedule.timesteps()[1], schedule.noise_level)


def window_logp(traj: Trajectory, v: jax.Array, schedule: Schedule
                ) -> tuple[jax.Array, jax.Array]:
    """``(logp [B, W], mean [B, W, N, F])``: the Gaussian log-prob (element mean) of each stored
    ``x_next`` under the SDE step that velocities ``v [B, W, N, F]`` give."""
    std_t, s = window_std(traj, schedule)
    per_step = lambda x: x[None, :, None, None]  # noqa: E731  [W] -> [1, W, 1, 1]
    mean = sde.sde_mean(traj.x_t, v, per_step(traj.t), per_step(traj.t_next), per_step(std_t))
    logp = jax.vmap(sde.gaussian_logp, in_axes=(1, 1, 0), out_axes=1)(traj.x_next, mean, s)
    return logp, mean
