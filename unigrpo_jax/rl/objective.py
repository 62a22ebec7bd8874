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

from unigrpo_jax.model import latents
from unigrpo_jax.model.config import BagelConfig
from unigrpo_jax.rl import losses
from unigrpo_jax.rl.replay import TrainBatch, rebuild_context, text_logits, window_velocities
from unigrpo_jax.rollout import sde
from unigrpo_jax.rollout.sampling import TokenSampler, token_logprobs

MODES = ('unigrpo', 'flowgrpo', 'textgrpo')
REGULARIZERS = ('velocity_mse', 'latent_kl', 'none')


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    mode: str = 'unigrpo'
    text_clip: float = 0.2
    flow_clip: float = 1e-6
    text_aggregation: str = 'seq_mean_token_mean'
    flow_weight: float = 1.0  # lambda
    regularizer: str = 'velocity_mse'
    velocity_mse_weight: float = 1.5e-5
    latent_kl_weight: float = 0.0
    text_kl_weight: float = 0.0
    dt_reweight: bool = False
    image_grad_to_context: bool = True
    # Rollout settings the replay must share.
    sampler: TokenSampler = TokenSampler()
    num_timesteps: int = 25
    shift: float = 3.0
    noise_level: float = 0.8
    image_size: tuple[int, int] = (1024, 1024)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f'objective mode={self.mode!r}; expected one of {MODES}')
        if self.regularizer not in REGULARIZERS:
            raise ValueError(f'regularizer={self.regularizer!r}; expected one of {REGULARIZERS}')
        if self.text_aggregation not in losses.TEXT_AGGREGATIONS:
            raise ValueError(f'text_aggregation={self.text_aggregation!r}; expected one of '
                             f'{losses.TEXT_AGGREGATIONS}')

    @property
    def think(self) -> bool:
        return self.mode != 'flowgrpo'

    @property
    def text_term(self) -> bool:
        return self.mode != 'flowgrpo'

    @property
    def flow_term(self) -> bool:
        return self.mode != 'textgrpo'


def _masked_max(x: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.max(jnp.where(mask, x, 0.0), initial=0.0)


def loss_fn(params, ref_params, batch: TrainBatch, config: BagelConfig,
            obj: ObjectiveConfig) -> tuple[jax.Array, dict]:
    """The minibatch loss (to minimise) and its metrics; ``ref_params`` never get gradients."""
    metrics = {}
    loss = jnp.float32(0.0)
    w = batch.sample_weight
    cache, think_hidden = rebuild_context(params, config, batch, obj.think)
    if obj.text_term:
        t_max = batch.think_tokens.shape[1]
        logits = text_logits(params, config, think_hidden, t_max)
        logp = token_logprobs(logits, batch.think_tokens, obj.sampler)
        mask = batch.think_mask
        text_loss, m = losses.text_policy_loss(
            logp, batch.think_logprobs, mask, batch.advantages, eps=obj.text_clip,
            aggregation=obj.text_aggregation, sample_weight=w)
        loss += text_loss
        metrics.update(m)
        metrics['text/loss'] = text_loss
        metrics['text/entropy'] = losses.entropy(logits, mask)
        metrics['parity/text_max_abs_logp_diff'] = _masked_max(
            jnp.abs(logp - batch.think_logprobs), mask)
        if obj.text_kl_weight > 0:
            _, ref_hidden = rebuild_context(ref_params, config, batch, obj.think)
            ref_logp = token_logprobs(text_logits(ref_params, config, ref_hidden, t_max),
                                      batch.think_tokens, obj.sampler)
            kl = losses.text_kl_k3(logp, ref_logp, mask, obj.text_aggregation, w)
            loss += obj.text_kl_weight * kl
            metrics['text/kl_ref'] = kl
    if obj.flow_term:
        grid = latents.timesteps(obj.num_timesteps, obj.shift)
        std_t, s = sde.sde_std(batch.t, batch.t_next, grid[1], obj.noise_level)  # [W]
        image_cache = cache if obj.image_grad_to_context else jax.lax.stop_gradient(cache)
        v = window_velocities(params, config, image_cache, batch, obj.image_size)
        per_step = lambda x: x[None, :, None, None]  # noqa: E731  [W] -> [1, W, 1, 1]
        t, t_next, std4 = per_step(batch.t), per_step(batch.t_next), per_step(std_t)
        mean = sde.sde_mean(batch.x_t, v, t, t_next, std4)
        logp = jax.vmap(sde.gaussian_logp, in_axes=(1, 1, 0), out_axes=1)(
            batch.x_next, mean, s)
        log_ratio = losses.ratio_norm_log_ratio(logp, batch.logp, mean, batch.mean, s[None])
        step_weight = None
        if obj.dt_reweight:
            inv = 1.0 / jnp.abs(batch.t_next - batch.t)
            step_weight = inv / jnp.mean(inv)
        flow_loss, m = losses.flow_policy_loss(log_ratio, batch.advantages, eps=obj.flow_clip,
                                               step_weight=step_weight, sample_weight=w)
        loss += obj.flow_weight * flow_loss
        metrics.update(m)
        metrics['image/loss'] = flow_loss
        metrics['parity/image_max_abs_logp_diff'] = jnp.max(jnp.abs(logp - batch.logp),
                                                            initial=0.0)
        if obj.regularizer != 'none':
            ref_cache, _ = rebuild_context(ref_params, config, batch, obj.think)
            v_ref = jax.lax.stop_gradient(
                window_velocities(ref_params, config, ref_cache, batch, obj.image_size))
            mse = losses.velocity_mse(v, v_ref)
            metrics['image/velocity_mse'] = mse
            if obj.regularizer == 'velocity_mse':
                loss += obj.velocity_mse_weight * mse
            else:
                mean_ref = sde.sde_mean(batch.x_t, v_ref, t, t_next, std4)
                kl = losses.latent_kl(mean, mean_ref, std_t)
                loss += obj.latent_kl_weight * kl
                metrics['image/latent_kl'] = kl
    adv = batch.advantages
    metrics.update({
        'loss': loss,
        'advantage/mean': jnp.mean(adv), 'advantage/std': jnp.std(adv),
        'advantage/min': jnp.min(adv), 'advantage/max': jnp.max(adv),
        'think/length': jnp.mean(jnp.sum(batch.think_mask, -1).astype(jnp.float32)),
    })
    return loss, metrics


def objective_config(config) -> ObjectiveConfig:
    """An ``ObjectiveConfig`` from a whole experiment config (its ``objective`` and ``rollout``
    sections: the replay must use the rollout's sampler and schedule)."""
    o, r = config.objective, config.rollout
    return ObjectiveConfig(
        mode=o.mode, text_clip=o.text_clip, flow_clip=o.flow_clip,
        text_aggregation=o.text_aggregation, flow_weight=o.flow_weight,
        regularizer=o.regularizer, velocity_mse_weight=o.velocity_mse_weight,
        latent_kl_weight=o.latent_kl_weight, text_kl_weight=o.text_kl_weight,
        dt_reweight=o.dt_reweight, image_grad_to_context=o.image_grad_to_context,
        sampler=TokenSampler(temperature=r.temperature, top_k=r.top_k, top_p=r.top_p),
        num_timesteps=r.num_timesteps, shift=r.shift, noise_level=r.noise_level,
        image_size=tuple(r.image_size))
