"""Compute only where there is signal: the chains an update runs on.

A chain whose advantage is 0 (its group's rewards all equal) or whose sample weight is 0
(``skip_zero_variance_groups``, ``truncated_think='drop'``) adds exactly nothing to the clipped
policy-gradient terms: ``min(r A, clip(r) A) = 0`` for every ratio when ``A = 0``. FlowGRPO
drops such samples from the update; so does ``update_chains='signal'``: the reference forward
and every PPO update run on the chains with signal, gathered into the smallest of a few fixed
batch sizes (``bucket_sizes``; the rest of a bucket is padded with dropped chains at weight 0),
so that nothing recompiles from step to step.

What stays exact: the policy-gradient terms divide by the *whole* rollout batch's denominators
(``TrainBatch.weight_scale`` / ``token_scale``, the whole batch's over the kept chains'), so
their gradient is the one of ``update_chains='all'`` up to float rounding. What changes: the
regularisers (velocity MSE, latent KL, text KL) average over the kept chains only, where
``'all'`` also pulls zero-advantage chains of weight 1 towards the reference (with
``skip_zero_variance_groups`` those are only the chains of a mixed group whose reward equals
the group mean).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from unigrpo_jax.rl import objective
from unigrpo_jax.rl.replay import TrainBatch
from unigrpo_jax.rollout import trajectory

UPDATE_CHAINS = ('all', 'signal')


def bucket_sizes(chains: int, buckets: int, unit: int) -> tuple[int, ...]:
    """The batch sizes a compacted update may have: ``buckets`` steps up to ``chains``, each a
    multiple of ``unit`` (what minibatches, micro-steps and devices must divide), ascending
    and distinct; the last is ``chains``."""
    if chains % unit:
        raise ValueError(f'{chains} chains are not a multiple of {unit}')
    sizes = {min(chains, unit * math.ceil(chains * k / buckets / unit))
             for k in range(1, buckets + 1)}
    return tuple(sorted(sizes))


def has_signal(advantages: np.ndarray, sample_weight: np.ndarray) -> np.ndarray:
    """``[B]`` bool: the chains whose policy-gradient terms are not identically 0."""
    return (np.asarray(advantages) != 0) & (np.asarray(sample_weight) > 0)


def select(signal: np.ndarray, sizes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``(chains [M], in_update [M] float32)``: the indices of the chains with ``signal [B]``
    (in their order), padded with chains without it up to the smallest size in ``sizes`` that
    holds them all; ``in_update`` is 0 on the padding."""
    kept = np.flatnonzero(signal)
    size = next(m for m in sizes if m >= len(kept))
    padding = np.flatnonzero(~signal)[:size - len(kept)]
    chains = np.concatenate([kept, padding]).astype(np.int32)
    in_update = (np.arange(size) < len(kept)).astype(np.float32)
    return chains, in_update


def compact(batch: TrainBatch, chains: jnp.ndarray, in_update: jnp.ndarray,
            obj: objective.ObjectiveConfig) -> TrainBatch:
    """The ``chains [M]`` of ``batch`` (padding chains at ``in_update = 0`` get weight 0), whose
    policy-gradient denominators are scaled to the whole batch's (``objective.loss_totals``)."""
    whole = objective.loss_totals(batch, obj)
    out = trajectory.select_chains(batch, chains)
    out = out.replace(sample_weight=out.sample_weight * in_update)
    kept = objective.loss_totals(out, obj)
    scales = {'weight_scale': whole['reg_weight'] / kept['reg_weight']}
    if 'reg_text' in whole:
        scales['token_scale'] = whole['reg_text'] / kept['reg_text']
    return out.replace(**scales)
