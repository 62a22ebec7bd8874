"""Group-relative advantages (algorithm.md §2)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

STD_MODES = ('group', 'global')


def group_advantages(rewards: jax.Array, group_size: int, *, std: str = 'group',
                     eps: float = 1e-4, clip: float = 5.0) -> tuple[jax.Array, jax.Array]:
    """``A_i = (R_i - mean_group R) / (std R + eps)``, clipped to ``[-clip, clip]``.

    Args:
      rewards: ``[prompts * group_size]`` float, chains of a prompt contiguous.
      std: ``'group'`` (per-prompt std) or ``'global'`` (std over the whole batch).
    Returns:
      ``(advantages [B] float32, informative [B] bool)``: a group whose rewards are all equal
      has zero advantage and is not informative (its chains may be skipped).
    """
    if std not in STD_MODES:
        raise ValueError(f'advantage std={std!r}; expected one of {STD_MODES}')
    r = rewards.astype(jnp.float32).reshape(-1, group_size)
    centred = r - jnp.mean(r, axis=1, keepdims=True)
    scale = jnp.std(r, axis=1, keepdims=True) if std == 'group' else jnp.std(r)
    adv = jnp.clip(centred / (scale + eps), -clip, clip)
    informative = jnp.broadcast_to(jnp.ptp(r, axis=1, keepdims=True) > 0, r.shape)
    adv = jnp.where(informative, adv, 0.0)
    return adv.reshape(-1), informative.reshape(-1)
