"""The text term (algorithm.md §4): GRPO's clipped ratio on the sampled reasoning tokens, with
an optional k3 KL to the frozen reference (``objective.text_kl_weight``).

Old values: the reasoning tokens' log-probs (``Trajectory.think_logprobs``); the first update
of a chain takes its own forward's (the ratio is exactly 1), later ones the recorded values.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from unigrpo_jax.rl import losses, terms
from unigrpo_jax.rl.replay import think_logprobs

REF_LOGPROBS = 'text_grpo/ref_think_logprobs'  # [B, T] float32, the reference's log-probs
# Rollout vs update on the text ratio's own scale: max |log-prob difference| of a think token
# (the ratio is its exp; the PPO clip 0.2 is 0.18 in log space).
PARITY_METRIC = 'parity/rollout_text_max_abs_logp_diff'


def _masked_max(x: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.max(jnp.where(mask, x, 0.0), initial=0.0)


def _uses_reference(obj) -> bool:
    return obj.text_kl_weight > 0


def _prepare(ref_params, config, batch, ctx, obj, key):
    del key
    if not _uses_reference(obj):
        return {}
    _, ref_logp = think_logprobs(ref_params, config, ctx.think_hidden, batch.trajectory,
                                 obj.schedule.tokens)
    return {REF_LOGPROBS: ref_logp}


def _totals(batch, obj):
    mask = batch.trajectory.think_mask
    w = batch.sample_weight
    reg_text = losses.token_denominator(mask, obj.text_aggregation, w)
    return dict(text=reg_text * batch.token_scale, reg_text=reg_text,
                tokens=losses.token_denominator(mask, 'token_mean', w))


def _loss(params, config, batch, ctx, obj, totals, fresh):
    traj = batch.trajectory
    w = batch.sample_weight
    share = w.shape[0] / totals['chains']  # this micro-batch's fraction of the minibatch
    logits, logp = think_logprobs(params, config, ctx.think_hidden, traj, obj.schedule.tokens)
    mask = traj.think_mask
    recorded = {'think_logprobs': jax.lax.stop_gradient(logp)}
    logp_old = jnp.where(fresh[:, None], recorded['think_logprobs'], traj.think_logprobs)
    text_loss, m = losses.text_policy_loss(
        logp, logp_old, mask, batch.advantages, eps=obj.text_clip,
        aggregation=obj.text_aggregation, sample_weight=w, denominator=totals['text'],
        tokens=totals['tokens'])
    pieces = [text_loss]
    metrics = {k: v / share for k, v in m.items()}  # shares -> minibatch estimates
    metrics['text/loss'] = text_loss / share
    metrics['text/entropy'] = losses.entropy(logits, mask, w, totals['tokens']) / share
    metrics['parity/text_max_abs_logp_diff'] = _masked_max(jnp.abs(logp - logp_old), mask)
    metrics[PARITY_METRIC] = _masked_max(
        jnp.abs(logp - traj.think_logprobs), mask)
    if obj.text_kl_weight > 0:
        ref_logp = batch.extras.get(REF_LOGPROBS)
        if ref_logp is None or ref_logp.shape != logp.shape:
            raise ValueError('objective.text_kl_weight > 0 needs the reference log-probs; '
                             'run rl.objective.prepare on the batch first')
        kl = losses.text_kl_k3(logp, ref_logp, mask, obj.text_aggregation, w, totals['reg_text'])
        pieces.append(obj.text_kl_weight * kl)
        metrics['text/kl_ref'] = kl / share
    return pieces, metrics, recorded


TERM = terms.register(terms.Term(
    name='text_grpo', slot='text', needs_window=False, regularizers=(),
    parity_metric=PARITY_METRIC,
    image_blocks=lambda obj: 0,
    uses_reference=_uses_reference,
    prepare=_prepare, totals=_totals, loss=_loss,
    record=terms.record_in_trajectory('think_logprobs')))
