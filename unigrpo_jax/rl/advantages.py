"""Group-relative advantages (algorithm.md §2) and which chains enter the loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

STD_MODES = ('group', 'global')


def group_advantages(rewards: jax.Array, group_size: int, *, std: str = 'group',
                     eps: float = 1e-4, clip: float = 5.0, counted: jax.Array | None = None
                     ) -> tuple[jax.Array, jax.Array]:
    """``A_i = (R_i - mean_group R) / (std R + eps)``, clipped to ``[-clip, clip]``.

    Args:
      rewards: ``[prompts * group_size]`` float, chains of a prompt contiguous.
      std: ``'group'`` (per-prompt std) or ``'global'`` (std over the whole batch).
      counted: ``[B]`` bool, the chains the statistics are over (default: all), e.g. not the
        truncated chains that ``truncated_think='drop'`` leaves out; the others get the
        advantage their reward would have.
    Returns:
      ``(advantages [B] float32, informative [B] bool)``: a group whose counted rewards are all
      equal has zero advantage and is not informative (its chains may be skipped).
    """
    if std not in STD_MODES:
        raise ValueError(f'advantage std={std!r}; expected one of {STD_MODES}')
    r = rewards.astype(jnp.float32).reshape(-1, group_size)
    c = (jnp.ones(r.shape, jnp.float32) if counted is None
         else counted.reshape(r.shape).astype(jnp.float32))

    def moments(axis):
        n = jnp.maximum(jnp.sum(c, axis=axis, keepdims=True), 1.0)
        mean = jnp.sum(c * r, axis=axis, keepdims=True) / n
        return mean, jnp.sqrt(jnp.sum(c * (r - mean) ** 2, axis=axis, keepdims=True) / n)

    mean, group_std = moments(1)
    scale = group_std if std == 'group' else moments(None)[1]
    adv = jnp.clip((r - mean) / (scale + eps), -clip, clip)
    spread = (jnp.max(jnp.where(c > 0, r, -jnp.inf), axis=1, keepdims=True) -
              jnp.min(jnp.where(c > 0, r, jnp.inf), axis=1, keepdims=True))
    informative = jnp.broadcast_to(spread > 0, r.shape)
    adv = jnp.where(informative, adv, 0.0)
    return adv.reshape(-1), informative.reshape(-1)


TRUNCATED_THINK = ('keep', 'zero', 'drop')


def chain_rewards(scores: np.ndarray, closed: np.ndarray, truncated_think: str) -> np.ndarray:
    """The reward of each chain: its score, or 0 for a truncated reasoning chain under
    ``truncated_think='zero'``. ``closed [B]``: the chain closed its reasoning (all True
    without thinking)."""
    if truncated_think == 'zero':
        return np.where(closed, scores, 0.0)
    return scores


def counted_chains(closed: np.ndarray, truncated_think: str) -> np.ndarray:
    """``[B]`` bool: the chains a group's statistics count (the closed ones under
    ``truncated_think='drop'``, else all)."""
    closed = np.asarray(closed, bool)
    return closed if truncated_think == 'drop' else np.ones_like(closed)


def chain_advantages(rewards: np.ndarray, closed: np.ndarray, group_size: int, *,
                     truncated_think: str, skip_zero_variance_groups: bool, std: str,
                     eps: float, clip: float) -> tuple[np.ndarray, np.ndarray]:
    """``(advantages [B], sample_weight [B])`` float32 of a rollout batch's rewards.

    Under ``truncated_think='drop'`` the group statistics (mean, std, and the batch std of
    ``std='global'``) are over the closed chains only and a truncated chain gets weight 0;
    with ``skip_zero_variance_groups`` the chains of a group whose rewards are all equal get
    weight 0.
    """
    adv, informative = group_advantages(jnp.asarray(rewards), group_size, std=std, eps=eps,
                                        clip=clip,
                                        counted=jnp.asarray(counted_chains(closed,
                                                                           truncated_think)))
    adv, informative = np.asarray(adv), np.asarray(informative)
    weight = np.ones_like(informative, np.float32)
    if skip_zero_variance_groups:
        weight *= informative
    if truncated_think == 'drop':
        weight *= closed
    return adv, weight


def signal_metrics(rewards: np.ndarray, advantages: np.ndarray, sample_weight: np.ndarray,
                   counted: np.ndarray, group_size: int) -> dict[str, float]:
    """The signal a rollout batch gives GRPO, over the chains the statistics count
    (``counted [B]``: ``counted_chains``):
    ``reward/group_std`` (the spread within a prompt's group, mean over groups) and
    ``reward/constant_group_fraction`` (groups whose counted chains all scored the same: no
    advantage), and ``advantage/*`` over the chains in the loss (``sample_weight > 0``; 0 when
    there are none)."""
    r = rewards.astype(np.float64).reshape(-1, group_size)
    c = counted.astype(bool).reshape(r.shape)
    n = np.maximum(c.sum(1), 1)
    mean = np.where(c, r, 0).sum(1) / n
    std = np.sqrt(np.where(c, (r - mean[:, None]) ** 2, 0).sum(1) / n)
    spread = np.where(c, r, -np.inf).max(1) - np.where(c, r, np.inf).min(1)
    in_loss = advantages[sample_weight > 0]
    stats = {'mean': np.mean, 'std': np.std, 'min': np.min, 'max': np.max}
    return {'reward/group_std': float(std.mean()),
            'reward/constant_group_fraction': float(np.mean(~(spread > 0))),
            **{f'advantage/{k}': float(f(in_loss)) if in_loss.size else 0.0
               for k, f in stats.items()}}
