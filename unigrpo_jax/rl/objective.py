"""The total UniGRPO loss of a minibatch (algorithm.md §6) and its diagnostics.

``L = -J_text - lambda * J_flow + w * L_reg (+ beta_text * KL_text)`` with the terms of
``losses.py`` on a replay of the rollout. Modes (algorithm.md §8): ``unigrpo`` (both terms,
think on), ``flowgrpo`` (image term only, think off), ``textgrpo`` (text term only, think on,
images by ODE: the rollout has no SDE window).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from unigrpo_jax.model.config import BagelConfig
from unigrpo_jax.rl import losses
from unigrpo_jax.rl.replay import (TrainBatch, rebuild_context, think_logprobs, window_logp,
                                   window_std, window_velocities)
from unigrpo_jax.rollout.schedule import Schedule

MODES = ('unigrpo', 'flowgrpo', 'textgrpo')
REGULARIZERS = ('velocity_mse', 'latent_kl', 'none')


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """Static loss settings (hashable), built and checked by ``train.settings``. ``schedule``
    is the rollout's own (``RolloutConfig.schedule``): the replay samples nothing, it re-scores
    what the rollout sampled with the same settings."""

    mode: str
    text_clip: float
    flow_clip: float
    text_aggregation: str
    flow_weight: float  # lambda
    regularizer: str
    velocity_mse_weight: float
    latent_kl_weight: float
    text_kl_weight: float
    dt_reweight: bool
    image_grad_to_context: bool
    schedule: Schedule

    @property
    def think(self) -> bool:
        return thinks(self.mode)

    @property
    def text_term(self) -> bool:
        return self.think  # the reasoning tokens are what the text term trains

    @property
    def flow_term(self) -> bool:
        return has_window(self.mode)


def thinks(mode: str) -> bool:
    """Whether the policy reasons before drawing in ``mode`` (all but FlowGRPO)."""
    return mode != 'flowgrpo'


def has_window(mode: str) -> bool:
    """Whether ``mode`` trains the image, so its rollout needs an SDE window (all but
    TextGRPO, whose images are drawn by the ODE alone)."""
    return mode != 'textgrpo'


def _masked_max(x: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.max(jnp.where(mask, x, 0.0), initial=0.0)


def loss_fn(params, ref_params, batch: TrainBatch, config: BagelConfig,
            obj: ObjectiveConfig) -> tuple[jax.Array, dict]:
    """The minibatch loss (to minimise) and its metrics; ``ref_params`` never get gradients."""
    metrics = {}
    loss = jnp.float32(0.0)
    w = batch.sample_weight
    traj = batch.trajectory
    cache, think_hidden = rebuild_context(params, config, batch, obj.think)
    if obj.text_term:
        logits, logp = think_logprobs(params, config, think_hidden, traj, obj.schedule.tokens)
        mask = traj.think_mask
        text_loss, m = losses.text_policy_loss(
            logp, traj.think_logprobs, mask, batch.advantages, eps=obj.text_clip,
            aggregation=obj.text_aggregation, sample_weight=w)
        loss += text_loss
        metrics.update(m)
        metrics['text/loss'] = text_loss
        metrics['text/entropy'] = losses.entropy(logits, mask)
        metrics['parity/text_max_abs_logp_diff'] = _masked_max(
            jnp.abs(logp - traj.think_logprobs), mask)
        if obj.text_kl_weight > 0:
            _, ref_hidden = rebuild_context(ref_params, config, batch, obj.think)
            _, ref_logp = think_logprobs(ref_params, config, ref_hidden, traj,
                                         obj.schedule.tokens)
            kl = losses.text_kl_k3(logp, ref_logp, mask, obj.text_aggregation, w)
            loss += obj.text_kl_weight * kl
            metrics['text/kl_ref'] = kl
    if obj.flow_term:
        std_t, s = window_std(traj, obj.schedule)  # [W]
        image_cache = cache if obj.image_grad_to_context else jax.lax.stop_gradient(cache)
        v = window_velocities(params, config, image_cache, traj, obj.schedule)
        logp, mean = window_logp(traj, v, obj.schedule)
        log_ratio = losses.ratio_norm_log_ratio(logp, traj.logp, mean, traj.mean, s[None])
        step_weight = None
        if obj.dt_reweight:
            inv = 1.0 / jnp.abs(traj.t_next - traj.t)
            step_weight = inv / jnp.mean(inv)
        flow_loss, m = losses.flow_policy_loss(log_ratio, batch.advantages, eps=obj.flow_clip,
                                               step_weight=step_weight, sample_weight=w)
        loss += obj.flow_weight * flow_loss
        metrics.update(m)
        metrics['image/loss'] = flow_loss
        metrics['parity/image_max_abs_logp_diff'] = jnp.max(jnp.abs(logp - traj.logp),
                                                            initial=0.0)
        if obj.regularizer != 'none':
            ref_cache, _ = rebuild_context(ref_params, config, batch, obj.think)
            v_ref = jax.lax.stop_gradient(
                window_velocities(ref_params, config, ref_cache, traj, obj.schedule))
            mse = losses.velocity_mse(v, v_ref)
            metrics['image/velocity_mse'] = mse
            if obj.regularizer == 'velocity_mse':
                loss += obj.velocity_mse_weight * mse
            else:
                _, mean_ref = window_logp(traj, v_ref, obj.schedule)
                kl = losses.latent_kl(mean, mean_ref, std_t)
                loss += obj.latent_kl_weight * kl
                metrics['image/latent_kl'] = kl
    adv = batch.advantages
    metrics.update({
        'loss': loss,
        'advantage/mean': jnp.mean(adv), 'advantage/std': jnp.std(adv),
        'advantage/min': jnp.min(adv), 'advantage/max': jnp.max(adv),
        'think/length': jnp.mean(traj.think_lengths.astype(jnp.float32)),
    })
    return loss, metrics
