"""Latent images <-> Bagel's latent tokens, their position ids, and the flow time grid.

A latent image ``[h*p, w*p, C]`` (channels last) becomes ``h*w`` tokens in row-major order;
token ``row*w + col`` holds feature ``(py*p + px)*C + c`` = latent pixel
``(row*p + py, col*p + px)``, channel c (bagel.md §5.1). Position ids use a fixed
``max_latent_size``-wide grid (extrapolate mode, §5.2).
"""

from __future__ import annotations

import einops
import jax.numpy as jnp
import numpy as np


def patchify(latent, patch: int):
    """``[..., h*p, w*p, C]`` -> ``[..., h*w, p*p*C]`` (numpy or jax)."""
    return einops.rearrange(latent, '... (h py) (w px) c -> ... (h w) (py px c)', py=patch,
                            px=patch)


def unpatchify(tokens, h: int, w: int, patch: int):
    """``[..., h*w, p*p*C]`` -> ``[..., h*p, w*p, C]``; the exact inverse of ``patchify``."""
    return einops.rearrange(tokens, '... (h w) (py px c) -> ... (h py) (w px) c', h=h, w=w,
                            py=patch, px=patch)


def position_ids(h: int, w: int, max_side: int) -> np.ndarray:
    """``[h*w]`` int32 ids ``row * max_side + col`` for an ``h x w`` token grid."""
    if h > max_side or w > max_side:
        raise ValueError(f'a {h}x{w} token grid exceeds the position table side {max_side}')
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing='ij')
    return (rows * max_side + cols).reshape(-1).astype(np.int32)


def token_grid(height: int, width: int, downsample: int) -> tuple[int, int]:
    """Image pixels -> latent token grid ``(h, w)``; sizes must be multiples of ``downsample``."""
    if height % downsample or width % downsample:
        raise ValueError(f'image size {height}x{width} is not a multiple of the latent '
                         f'downsample {downsample}')
    return height // downsample, width // downsample


def shift_time(t, shift: float):
    """Bagel's timestep shift ``s t / (1 + (s - 1) t)`` (1 = noise stays 1, 0 stays 0)."""
    return shift * t / (1.0 + (shift - 1.0) * t)


def timesteps(num_timesteps: int, shift: float) -> jnp.ndarray:
    """Bagel's flow grid: ``shift_time(linspace(1, 0, N))``; ``[N]`` float32."""
    return shift_time(jnp.linspace(1.0, 0.0, num_timesteps, dtype=jnp.float32), shift)
