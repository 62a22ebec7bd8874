"""Bagel's classifier-free guidance: combining cond / text-uncond / image-uncond velocities.

bagel.md §5.7. Norms are taken per sample (Bagel's global norm spans its packed batch, which it
only supports at batch size 1; per sample is the batched equivalent).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

RENORM_TYPES = ('global', 'channel', 'text_channel')


def _norm(x: jax.Array, per_token: bool) -> jax.Array:
    axes = (-1,) if per_token else (-2, -1)
    return jnp.sqrt(jnp.sum(x * x, axis=axes, keepdims=True))


def combine(v_cond: jax.Array, v_text: jax.Array, v_img: jax.Array | None, *,
            text_scale: float, img_scale: float, renorm: str, renorm_min: float) -> jax.Array:
    """One CFG step's velocity. All velocities ``[batch, tokens, features]`` float32.

    ``v_img`` may be None when ``img_scale <= 1`` (that pass is not run). With
    ``text_scale <= 1`` guidance is off and the result is ``v_cond``.
    """
    if renorm not in RENORM_TYPES:
        raise ValueError(f'unknown cfg renorm type {renorm!r}; expected one of {RENORM_TYPES}')
    if text_scale <= 1.0:
        return v_cond
    if img_scale > 1.0 and v_img is None:
        raise ValueError(f'img_scale={img_scale} > 1 needs the image-unconditional velocity')
    a = v_text + text_scale * (v_cond - v_text)
    if renorm == 'text_channel':
        ratio = _norm(v_cond, True) / (_norm(a, True) + 1e-8)
        a = a * jnp.clip(ratio, renorm_min, 1.0)
        return v_img + img_scale * (a - v_img) if img_scale > 1.0 else a
    b = v_img + img_scale * (a - v_img) if img_scale > 1.0 else a
    per_token = renorm == 'channel'
    ratio = _norm(v_cond, per_token) / (_norm(b, per_token) + 1e-8)
    return b * jnp.clip(ratio, renorm_min, 1.0)
