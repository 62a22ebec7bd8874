"""Bagel's fixed 2-D sin-cos position tables (``vit_pos_embed`` and ``latent_pos_embed``).

Both tables are stored in the checkpoint but never trained (``shared/docs/bagel.md`` §5.3,
modeling_utils.py:24-66): a port recomputes them and may compare them with the stored copies.
``sincos_2d_table`` builds a whole table (for that comparison); ``sincos_2d`` gives the rows of
given position ids inside jit, bit-identical to the table's rows, without embedding the whole
``[side**2, dim]`` table as a constant (only the ``[side, dim/2]`` per-axis encodings).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _sincos_1d(pos: np.ndarray, dim: int) -> np.ndarray:
    """``E_dim(pos)``: ``[n] -> [n, dim]`` = ``concat(sin(pos w), cos(pos w))``, float64.

    ``w_k = 10000^(-k / (dim/2))`` for ``k < dim/2`` (the sin block first).
    """
    omega = 1.0 / 10000.0 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2))
    angles = np.outer(pos.astype(np.float64), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def _check_dim(dim: int) -> None:
    if dim % 4:
        raise ValueError(f'sin-cos table width dim={dim} must be a multiple of 4 '
                         '(two halves, each a sin block and a cos block)')


def sincos_2d_table(side: int, dim: int) -> np.ndarray:
    """The ``[side * side, dim]`` float32 table of a ``side x side`` grid of width ``dim``.

    Row ``r * side + c`` is ``concat(E_{dim/2}(c), E_{dim/2}(r))``: the column encoding comes
    first (Bagel's meshgrid puts the width axis first). Computed in float64, cast to float32.
    """
    _check_dim(dim)
    rows, cols = np.divmod(np.arange(side * side), side)
    table = np.concatenate([_sincos_1d(cols, dim // 2), _sincos_1d(rows, dim // 2)], axis=1)
    return table.astype(np.float32)


def sincos_2d(position_ids: jax.Array, side: int, dim: int) -> jax.Array:
    """Rows ``position_ids`` of ``sincos_2d_table(side, dim)``: ``[...] -> [..., dim]`` float32.

    ``position_ids`` are ``row * side + col``; the per-axis encodings are computed in float64
    and cast to float32 exactly as in the table, so the rows are bit-identical to it.
    """
    _check_dim(dim)
    axis_table = jnp.asarray(_sincos_1d(np.arange(side), dim // 2).astype(np.float32))
    rows, cols = jnp.divmod(position_ids, side)
    return jnp.concatenate([axis_table[cols], axis_table[rows]], axis=-1)
