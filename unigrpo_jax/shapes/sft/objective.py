"""The SFT objective of Bagel (bagel.md §5.9) on a fixed-layout batch.

Per sample (layout in ``samples.py``):

- flow matching on the image block: ``t = shift(sigmoid(n))``, ``n ~ N(0, 1)`` (logit-normal,
  ``config.timestep_shift``), ``x_t = (1 - t) x0 + t eps``; loss = mean over latent tokens and
  features of ``(llm2vae(h) - (eps - x0))^2`` (every latent token is noised);
- CE on the think segment: logits at ``bos, y_1 .. y_n`` predict ``y_1 .. y_n, eos``, averaged
  over the batch's valid target tokens; the prompt has no loss.

``loss = mse_weight * mse + ce_weight * ce``. ``sft_loss`` plugs it into the shared train step
(``train.step.make_train_step``: sharding, the non-finite skip) with the optimizer of
``train.optimizer``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from unigrpo_jax.model import latents
from unigrpo_jax.model.bagel import Bagel
from unigrpo_jax.model.config import BagelConfig
from unigrpo_jax.shapes.sft import samples


def flow_times(key: jax.Array, batch: int, shift: float) -> jax.Array:
    """``[batch]`` logit-normal flow times ``shift(sigmoid(n))`` (1 = noise)."""
    return latents.shift_time(jax.nn.sigmoid(jax.random.normal(key, (batch,), jnp.float32)),
                              shift)


def forward(params, config: BagelConfig, lay: samples.Layout, inputs: dict, x_t: jax.Array,
            t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The packed training forward.

    Args:
      inputs: ``prompt_ids [B, P]``, ``prompt_lengths [B]``, ``think_ids [B, Q]``,
        ``think_lengths [B]`` (``samples.Batch.arrays``).
      x_t: ``[B, N, F]`` noisy latent tokens; t: ``[B]`` their flow times.
    Returns:
      ``(velocity [B, N, F], think_logits [B, Q - 1, vocab])`` float32 (logits at
      ``bos .. y_n`` of the think segment; ``[B, 0, vocab]`` without one).
    """
    model = Bagel(config)
    apply = lambda *a, method: model.apply({'params': params}, *a, method=method)  # noqa: E731
    b = x_t.shape[0]
    t_ = config.tokens
    markers = jnp.broadcast_to(jnp.array([t_.start_of_image, t_.end_of_image], jnp.int32), (b, 2))
    ids = jnp.concatenate([inputs['prompt_ids'], inputs['think_ids'], markers], axis=1)
    pos_ids = jnp.asarray(latents.position_ids(*lay.image_grid, config.max_latent_size))[None]
    x = jnp.concatenate([apply(ids, method=Bagel.embed_text),
                         apply(x_t, t, pos_ids, method=Bagel.embed_latents)], axis=1)
    positions = samples.positions(lay, inputs['prompt_lengths'], inputs['think_lengths'])
    mask = samples.layout_mask(lay, inputs['prompt_lengths'], inputs['think_lengths'])
    hidden, _ = apply(x, positions, mask, method=functools.partial(Bagel.decode, n_und=lay.n_und))
    velocity = apply(hidden[:, lay.n_und:], method=Bagel.velocity)
    p, q = lay.prompt_len, lay.think_len
    logits = apply(hidden[:, p:p + max(q - 1, 0)], method=Bagel.lm_logits)
    return velocity, logits


def think_ce(logits: jax.Array, think_ids: jax.Array,
             think_lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Token-mean CE of ``think_ids[:, 1:]`` under ``logits [B, Q - 1, V]``; returns
    ``(ce, number of target tokens)``. Targets ``j < think_lengths - 1`` count."""
    targets = think_ids[:, 1:]
    weights = (jnp.arange(targets.shape[1])[None] < (think_lengths[:, None] - 1)).astype(
        jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    count = jnp.sum(weights)
    return jnp.sum(nll * weights) / jnp.maximum(count, 1.0), count


def loss_fn(params, config: BagelConfig, lay: samples.Layout, loss_cfg, inputs: dict,
            key: jax.Array) -> tuple[jax.Array, dict]:
    """The SFT loss of one batch and its metrics (``mse``, ``ce``, ``loss``)."""
    x0 = inputs['x0']
    key_t, key_eps = jax.random.split(key)
    t = flow_times(key_t, x0.shape[0], config.timestep_shift)
    eps = jax.random.normal(key_eps, x0.shape, jnp.float32)
    x_t = (1.0 - t[:, None, None]) * x0 + t[:, None, None] * eps
    velocity, logits = forward(params, config, lay, inputs, x_t, t)
    mse = jnp.mean((velocity - (eps - x0)) ** 2)
    metrics = dict(mse=mse)
    loss = loss_cfg.mse_weight * mse
    if lay.think_len:
        ce, count = think_ce(logits, inputs['think_ids'], inputs['think_lengths'])
        loss = loss + loss_cfg.ce_weight * ce
        metrics.update(ce=ce, ce_tokens=count)
    metrics['loss'] = loss
    return loss, metrics


def sft_loss(config: BagelConfig, lay: samples.Layout, loss_cfg, seed: int):
    """``loss(params, frozen, inputs, step, totals)`` for ``train.step.make_train_step``
    (``frozen`` is None: SFT has no reference; no micro-batches, so no ``totals``). The noise
    and times of step k come from ``fold_in(key(seed), k)``."""
    base = jax.random.key(seed)

    def loss(params, frozen, inputs: dict, step: jax.Array, totals):
        del frozen, totals
        return loss_fn(params, config, lay, loss_cfg, inputs, jax.random.fold_in(base, step))
    return loss
