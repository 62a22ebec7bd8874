"""DiffusionNFT as the image term (Zheng et al., arXiv 2509.16117; docs/nft.md): reinforcement
on the forward process, CFG-free, with no SDE window and no likelihoods.

Each chain's clean final latents ``x0`` are noised afresh at ``K = objective.nft_timesteps``
flow times of the rollout's grid, ``x_t = (1 - t) x0 + t eps`` (drawn once per rollout batch,
``prepare``). With the policy's velocity ``v`` and the old policy's ``v_old`` (the params that
drew the samples: a chain's first update takes its own forward's, stop-gradient; later updates
the recorded values), the implicit positive and negative policies are

    v+ = beta v + (1 - beta) v_old,      v- = (1 + beta) v_old - beta v,

and with the optimality ``r = clip(A / (2 c) + 1/2, 0, 1)`` of the chain's advantage ``A``
(``c = objective.nft_adv_clip``, ``A`` clipped to ``[-c, c]``) the loss of one point is

    c / beta * (r ||x0(v+) - x0||^2 / d+ + (1 - r) ||x0(v-) - x0||^2 / d-),

``x0(v) = x_t - t v`` the clean latents the velocity predicts and ``d = sg(mean |x0(v) - x0|)``
DiffusionNFT's adaptive weight (mean over elements; the squares are means too). At
``v = v_old`` the two parts' gradients are the advantage-weighted flow-matching gradient
``A * t (x0(v) - x0) / d``: a chain with ``A = 0`` pulls on nothing (with the reward constant,
only the regulariser moves the params). The regulariser is the velocity MSE to the frozen
reference at the same points (DiffusionNFT's KL term), ``objective.velocity_mse_weight``.
"""

from __future__ import annotations

import einops
import jax
import jax.numpy as jnp

from unigrpo_jax.rl import losses, terms
from unigrpo_jax.rl.replay import velocities

X_T = 'nft/x_t'                      # [B, K, N, F] float32, the noised final latents
T = 'nft/t'                          # [B, K] float32, their flow times (1 = noise)
OLD_VELOCITIES = 'nft/old_velocities'  # [B, K, N, F] float32, recorded by the first update
REF_VELOCITIES = 'nft/ref_velocities'  # [B, K, N, F] float32, the reference's (regulariser)
WEIGHT_FLOOR = 1e-5  # DiffusionNFT's floor of the adaptive weight


def forward_points(x0: jax.Array, grid: jax.Array, k: int, key: jax.Array
                   ) -> tuple[jax.Array, jax.Array]:
    """``(x_t [B, K, N, F], t [B, K])``: for each chain ``k`` distinct times of ``grid [M]``
    (uniformly, without replacement) and ``x_t = (1 - t) x0 + t eps`` with fresh ``eps``;
    ``x0 [B, N, F]``."""
    b = x0.shape[0]
    k_times, k_noise = jax.random.split(key)
    order = jnp.argsort(jax.random.uniform(k_times, (b, grid.shape[0])), axis=1)[:, :k]
    t = grid[order]
    eps = jax.random.normal(k_noise, (b, k) + x0.shape[1:], jnp.float32)
    tt = t[:, :, None, None]
    return (1.0 - tt) * x0[:, None] + tt * eps, t


def point_losses(v: jax.Array, v_old: jax.Array, x_t: jax.Array, t: jax.Array, x0: jax.Array,
                 advantages: jax.Array, beta: float, adv_clip: float) -> jax.Array:
    """``[B]`` DiffusionNFT's loss of each chain, the mean over its ``K`` points (module
    docstring). ``v, v_old, x_t [B, K, N, F]``, ``t [B, K]``, ``x0 [B, N, F]``,
    ``advantages [B]``."""
    v_old = jax.lax.stop_gradient(v_old)
    r = jnp.clip(jnp.clip(advantages, -adv_clip, adv_clip) / (2.0 * adv_clip) + 0.5, 0.0, 1.0)
    tt = t[:, :, None, None]
    target = x0[:, None]

    def weighted_sq(velocity):  # [B, K]: ||x0(v) - x0||^2 / d, both means over elements
        err = x_t - tt * velocity - target
        d = jnp.maximum(jax.lax.stop_gradient(jnp.mean(jnp.abs(err), axis=(2, 3))),
                        WEIGHT_FLOOR)
        return jnp.mean(err ** 2, axis=(2, 3)) / d

    positive = weighted_sq(beta * v + (1.0 - beta) * v_old)
    negative = weighted_sq((1.0 + beta) * v_old - beta * v)
    per_point = r[:, None] * positive + (1.0 - r[:, None]) * negative
    return adv_clip / beta * jnp.mean(per_point, axis=1)


def _uses_reference(obj) -> bool:
    return obj.regularizer != 'none'


def _prepare(ref_params, config, batch, ctx, obj, key):
    grid = obj.schedule.timesteps()[:-1]  # the times the sampler evaluates (t = 0 excluded)
    x_t, t = forward_points(batch.final_latents, grid, obj.nft_timesteps, key)
    out = {X_T: x_t, T: t, OLD_VELOCITIES: jnp.zeros_like(x_t)}
    if _uses_reference(obj):
        out[REF_VELOCITIES] = velocities(ref_params, config, ctx.cache, x_t, t, obj.schedule)
    return out


def _totals(batch, obj):
    del batch, obj
    return {}


def _loss(params, config, batch, ctx, obj, totals, fresh):
    w = batch.sample_weight
    share = w.shape[0] / totals['chains']  # this micro-batch's fraction of the minibatch
    x_t, t = batch.extras[X_T], batch.extras[T]
    cache = ctx.cache if obj.image_grad_to_context else jax.lax.stop_gradient(ctx.cache)
    v = velocities(params, config, cache, x_t, t, obj.schedule)
    own = jax.lax.stop_gradient(v)
    v_old = jnp.where(einops.rearrange(fresh, 'b -> b 1 1 1'), own, batch.extras[OLD_VELOCITIES])
    per_chain = point_losses(v, v_old, x_t, t, batch.final_latents, batch.advantages,
                             obj.nft_beta, obj.nft_adv_clip)
    nft_loss = jnp.sum(w * per_chain) / totals['weight']
    pieces = [obj.flow_weight * nft_loss]
    deviation = jnp.mean((own - v_old) ** 2, axis=(1, 2, 3))  # [B], 0 on a first update
    metrics = {'image/loss': nft_loss / share,
               'image/nft_old_deviation': jnp.sum(w * deviation) / totals['reg_weight'] / share}
    if obj.regularizer != 'none':
        v_ref = batch.extras.get(REF_VELOCITIES)
        if v_ref is None or v_ref.shape != v.shape:
            raise ValueError(f'objective.regularizer={obj.regularizer!r} needs the reference '
                             f'velocities {v.shape}: run rl.objective.prepare on the batch first')
        mse = losses.velocity_mse(v, v_ref, w, totals['reg_weight'])
        metrics['image/velocity_mse'] = mse / share
        pieces.append(obj.velocity_mse_weight * mse)
    return pieces, metrics, {OLD_VELOCITIES: own}


def _record(batch, chains, recorded):
    extras = dict(batch.extras)
    extras[OLD_VELOCITIES] = extras[OLD_VELOCITIES].at[chains].set(recorded[OLD_VELOCITIES])
    return batch.replace(extras=extras)


TERM = terms.register(terms.Term(
    name='nft', slot='image', needs_window=False, regularizers=('velocity_mse', 'none'),
    parity_metric=None,
    image_blocks=lambda obj: obj.nft_timesteps,
    uses_reference=_uses_reference, prepare=_prepare, totals=_totals, loss=_loss,
    record=_record))
