"""The image term of the paper, FlowGRPO-Fast (algorithm.md §5): the RatioNorm-clipped ratio of
the SDE window's Gaussian steps, with a regulariser to the frozen reference on the window
velocities (``objective.regularizer``: velocity MSE, FlowGRPO's latent KL, or none).

Old values: the window steps' log-probs and means (``Trajectory.logp`` / ``mean``); the first
update of a chain takes its own forward's, later ones the recorded values.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from unigrpo_jax.rl import losses, terms
from unigrpo_jax.rl.replay import window_logp, window_std, window_velocities

REF_VELOCITIES = 'flow_grpo/ref_velocities'  # [B, W, N, F] float32, the reference's velocities
# Rollout vs update on the flow ratio's own scale: max |RatioNorm log-ratio| of a window step
# (the ratio is its exp; the flow clip is objective.flow_clip, 1e-6).
PARITY_METRIC = 'parity/rollout_image_max_abs_log_ratio'


def _uses_reference(obj) -> bool:
    return obj.regularizer != 'none'


def _prepare(ref_params, config, batch, ctx, obj, key):
    del key
    if not _uses_reference(obj):
        return {}
    return {REF_VELOCITIES: window_velocities(ref_params, config, ctx.cache, batch.trajectory,
                                              obj.schedule)}


def _totals(batch, obj):
    del batch, obj
    return {}


def _loss(params, config, batch, ctx, obj, totals, fresh):
    traj = batch.trajectory
    w = batch.sample_weight
    share = w.shape[0] / totals['chains']  # this micro-batch's fraction of the minibatch
    std_t, s = window_std(traj, obj.schedule)  # [W]
    image_cache = ctx.cache if obj.image_grad_to_context else jax.lax.stop_gradient(ctx.cache)
    v = window_velocities(params, config, image_cache, traj, obj.schedule)
    logp, mean = window_logp(traj, v, obj.schedule)
    recorded = dict(zip(('logp', 'mean'), jax.lax.stop_gradient((logp, mean))))
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
    pieces = [obj.flow_weight * flow_loss]
    metrics = {k: v / share for k, v in m.items()}  # shares -> minibatch estimates
    metrics['image/loss'] = flow_loss / share
    metrics['parity/image_max_abs_logp_diff'] = jnp.max(jnp.abs(logp - logp_old), initial=0.0)
    metrics['parity/rollout_image_max_abs_logp_diff'] = jnp.max(jnp.abs(logp - traj.logp),
                                                                initial=0.0)
    # The same on the scale of the clip: the RatioNorm log-ratio of the update's step to the
    # rollout's, what ``flow_clip`` would see with the rollout's values as the old ones.
    metrics[PARITY_METRIC] = jnp.max(jnp.abs(losses.ratio_norm_log_ratio(
        logp, traj.logp, mean, traj.mean, s[None])), initial=0.0)
    if obj.regularizer != 'none':
        v_ref = batch.extras.get(REF_VELOCITIES)
        if v_ref is None or v_ref.shape != v.shape:
            raise ValueError(f'objective.regularizer={obj.regularizer!r} needs the reference '
                             f'velocities {v.shape}; the batch has '
                             f'{None if v_ref is None else v_ref.shape}: run '
                             'rl.objective.prepare on it first')
        mse = losses.velocity_mse(v, v_ref, w, totals['reg_weight'])
        metrics['image/velocity_mse'] = mse / share
        if obj.regularizer == 'velocity_mse':
            pieces.append(obj.velocity_mse_weight * mse)
        else:
            _, mean_ref = window_logp(traj, v_ref, obj.schedule)
            kl = losses.latent_kl(mean, mean_ref, std_t, w, totals['reg_weight'])
            pieces.append(obj.latent_kl_weight * kl)
            metrics['image/latent_kl'] = kl / share
    return pieces, metrics, recorded


TERM = terms.register(terms.Term(
    name='flow_grpo', slot='image', needs_window=True,
    regularizers=('velocity_mse', 'latent_kl', 'none'), parity_metric=PARITY_METRIC,
    image_blocks=lambda obj: obj.schedule.window_size, uses_reference=_uses_reference,
    prepare=_prepare, totals=_totals, loss=_loss,
    record=terms.record_in_trajectory('logp', 'mean')))
