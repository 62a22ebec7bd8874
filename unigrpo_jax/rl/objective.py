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
from unigrpo_jax.rl import losses, replay
from unigrpo_jax.rl.replay import (TrainBatch, rebuild_context, think_logprobs, window_logp,
                                   window_std, window_velocities)
from unigrpo_jax.rollout.rollout import RolloutConfig
from unigrpo_jax.rollout.schedule import Schedule

MODES = ('unigrpo', 'flowgrpo', 'textgrpo')
REGULARIZERS = ('velocity_mse', 'latent_kl', 'none')
# The loss's per-chain outputs among its metrics (``replay.record_old`` takes them as the old
# values of later updates; ``train.step.make_train_step`` returns them with ``recorded=True``).
RECORDED = 'recorded'


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


def reference_outputs(ref_params, config: BagelConfig, batch: TrainBatch,
                      obj: ObjectiveConfig) -> TrainBatch:
    """``batch`` with the frozen reference's outputs its terms need: the reasoning tokens'
    log-probs (text KL) and the window velocities (velocity MSE, latent KL). They depend only
    on the rollout, so one forward per rollout batch serves every epoch and minibatch."""
    traj = batch.trajectory
    need_text = obj.text_term and obj.text_kl_weight > 0
    need_image = obj.flow_term and obj.regularizer != 'none'
    if not (need_text or need_image):
        return batch
    cache, hidden = rebuild_context(ref_params, config, batch, obj.think)
    if need_text:
        _, ref_logp = think_logprobs(ref_params, config, hidden, traj, obj.schedule.tokens)
        batch = batch.replace(ref_think_logprobs=ref_logp)
    if need_image:
        batch = batch.replace(ref_velocities=window_velocities(ref_params, config, cache, traj,
                                                               obj.schedule))
    return jax.lax.stop_gradient(batch)


def batch_shapes(config: BagelConfig, rc: RolloutConfig, obj: ObjectiveConfig,
                 system_len: int, prompt_len: int, chains: int) -> TrainBatch:
    """``replay.train_batch_shapes`` of ``chains`` chains with the reference outputs of this
    objective's terms."""
    return replay.train_batch_shapes(
        config, rc, system_len, prompt_len, chains,
        reference=lambda params, batch: reference_outputs(params, config, batch, obj))


def loss_totals(batch: TrainBatch, obj: ObjectiveConfig) -> dict[str, jax.Array]:
    """The minibatch-wide denominators of the terms (see ``losses``): the loss of a
    micro-batch divided by them is its share, and the shares add up to the minibatch's loss.
    ``weight`` and ``text`` (the policy-gradient terms') are scaled by the batch's
    ``weight_scale`` / ``token_scale`` (``rl.compaction``); ``reg_weight`` and ``reg_text``
    (the regularisers') and ``tokens`` (the weighted reasoning tokens the text diagnostics
    average over; the image diagnostics use ``reg_weight``) are this batch's own."""
    w = batch.sample_weight
    reg_weight = jnp.maximum(jnp.sum(w), 1.0)
    totals = {'chains': jnp.float32(w.shape[0]), 'weight': reg_weight * batch.weight_scale,
              'reg_weight': reg_weight}
    if obj.text_term:
        mask = batch.trajectory.think_mask
        reg_text = losses.token_denominator(mask, obj.text_aggregation, w)
        totals.update(text=reg_text * batch.token_scale, reg_text=reg_text,
                      tokens=losses.token_denominator(mask, 'token_mean', w))
    return totals


def loss_fn(params, batch: TrainBatch, config: BagelConfig, obj: ObjectiveConfig,
            totals: dict[str, jax.Array] | None = None) -> tuple[jax.Array, dict]:
    """The loss (to minimise) of ``batch``, a minibatch or one micro-batch of it, and metrics.

    ``totals``: ``loss_totals`` of the whole minibatch (default: of ``batch``); the loss is
    then this micro-batch's share, and the loss terms among the metrics are scaled to
    minibatch estimates (their mean over equal micro-batches is the minibatch's value). The
    reference's outputs come with the batch (``reference_outputs``). The ratios' old values
    are this forward's own (stop-gradient) for the chains with ``batch.fresh_old``, else the
    trajectory's; ``metrics[RECORDED]`` holds this forward's per-chain values
    (``replay.record_old``), the ``parity/rollout_*`` metrics how far they are from the
    rollout's.
    """
    if totals is None:
        totals = loss_totals(batch, obj)
    share = batch.sample_weight.shape[0] / totals['chains']  # this micro-batch's fraction
    metrics = {}
    loss = jnp.float32(0.0)
    w = batch.sample_weight
    traj = batch.trajectory
    cache, think_hidden = rebuild_context(params, config, batch, obj.think)
    fresh = batch.fresh_old > 0  # [B]: the old values are this forward's own
    recorded = {}
    if obj.text_term:
        logits, logp = think_logprobs(params, config, think_hidden, traj, obj.schedule.tokens)
        mask = traj.think_mask
        recorded['think_logprobs'] = jax.lax.stop_gradient(logp)
        logp_old = jnp.where(fresh[:, None], recorded['think_logprobs'], traj.think_logprobs)
        text_loss, m = losses.text_policy_loss(
            logp, logp_old, mask, batch.advantages, eps=obj.text_clip,
            aggregation=obj.text_aggregation, sample_weight=w, denominator=totals['text'],
            tokens=totals['tokens'])
        loss += text_loss
        metrics.update({k: v / share for k, v in m.items()})  # shares -> minibatch estimates
        metrics['text/loss'] = text_loss / share
        metrics['text/entropy'] = losses.entropy(logits, mask, w, totals['tokens']) / share
        metrics['parity/text_max_abs_logp_diff'] = _masked_max(jnp.abs(logp - logp_old), mask)
        metrics['parity/rollout_text_max_abs_logp_diff'] = _masked_max(
            jnp.abs(logp - traj.think_logprobs), mask)
        if obj.text_kl_weight > 0:
            if batch.ref_think_logprobs.shape != logp.shape:
                raise ValueError('objective.text_kl_weight > 0 needs the reference log-probs; '
                                 'run rl.objective.reference_outputs on the batch first')
            kl = losses.text_kl_k3(logp, batch.ref_think_logprobs, mask, obj.text_aggregation,
                                   w, totals['reg_text'])
            loss += obj.text_kl_weight * kl
            metrics['text/kl_ref'] = kl / share
    if obj.flow_term:
        std_t, s = window_std(traj, obj.schedule)  # [W]
        image_cache = cache if obj.image_grad_to_context else jax.lax.stop_gradient(cache)
        v = window_velocities(params, config, image_cache, traj, obj.schedule)
        logp, mean = window_logp(traj, v, obj.schedule)
        recorded['logp'], recorded['mean'] = jax.lax.stop_gradient((logp, mean))
        logp_old = jnp.where(fresh[:, None], recorded['logp'], traj.logp)
        mean_old = jnp.where(fresh.reshape((-1,) + (1,) * (mean.ndim - 1)), recorded['mean'],
                             traj.mean)
        log_ratio = losses.ratio_norm_log_ratio(logp, logp_old, mean, mean_old, s[None])
        step_weight = None
        if obj.dt_reweight:
            inv = 1.0 / jnp.abs(traj.t_next - traj.t)
            step_weight = inv / jnp.mean(inv)
        flow_loss, m = losses.flow_policy_loss(log_ratio, batch.advantages, eps=obj.flow_clip,
                                               step_weight=step_weight, sample_weight=w,
                                               denominator=totals['weight'],
                                               diagnostic_weight=totals['reg_weight'])
        loss += obj.flow_weight * flow_loss
        metrics.update({k: v / share for k, v in m.items()})  # shares -> minibatch estimates
        metrics['image/loss'] = flow_loss / share
        metrics['parity/image_max_abs_logp_diff'] = jnp.max(jnp.abs(logp - logp_old),
                                                            initial=0.0)
        metrics['parity/rollout_image_max_abs_logp_diff'] = jnp.max(
            jnp.abs(logp - traj.logp), initial=0.0)
        if obj.regularizer != 'none':
            v_ref = batch.ref_velocities
            if v_ref.shape != v.shape:
                raise ValueError(f'objective.regularizer={obj.regularizer!r} needs the '
                                 f'reference velocities {v.shape}; the batch has '
                                 f'{v_ref.shape}: run rl.objective.reference_outputs '
                                 '(train.step.make_reference_fn) on it first')
            mse = losses.velocity_mse(v, v_ref, w, totals['reg_weight'])
            metrics['image/velocity_mse'] = mse / share
            if obj.regularizer == 'velocity_mse':
                loss += obj.velocity_mse_weight * mse
            else:
                _, mean_ref = window_logp(traj, v_ref, obj.schedule)
                kl = losses.latent_kl(mean, mean_ref, std_t, w, totals['reg_weight'])
                loss += obj.latent_kl_weight * kl
                metrics['image/latent_kl'] = kl / share
    metrics['loss'] = loss / share
    metrics['think/length'] = jnp.mean(traj.think_lengths.astype(jnp.float32))
    metrics[RECORDED] = recorded
    return loss, metrics
