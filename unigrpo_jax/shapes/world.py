"""The ShapesEval world: canvas, grid, colours and shapes, and the renderer of a layout.

Exactly as in ``shared/docs/shapes_eval.md`` (an independent scorer relies on it):

- canvas ``[32, 32, 3]`` uint8 on white; a 4 x 4 grid of 8 x 8 px cells, row 0 at the top and
  col 0 at the left; at most one object per cell;
- each object fills the 6 x 6 box at offset (1, 1) inside its cell; on that box, with pixel
  centres at ``(i + 0.5, j + 0.5)`` and box centre (3, 3): a square is all 36 pixels, a circle the
  24 pixels with ``dx^2 + dy^2 <= 7``, a triangle (apex up) the 24 pixels whose row ``r``
  (0 = top) has ``|dx| <= (r + 1) / 2``.

A layout is a list of objects ``(shape, color, row, col)``, e.g.
``[('square', 'red', 0, 2), ('circle', 'blue', 3, 1)]``. Coordinates in pixels are ``(x, y)``
with x to the right and y down; pixel ``[i, j]`` (row i, column j) has centre
``(j + 0.5, i + 0.5)``.
"""

from __future__ import annotations

import numpy as np

CANVAS_PX = 32
GRID = 4
CELL_PX = 8
SHAPE_PX = 6
SHAPE_OFFSET_PX = 1
BACKGROUND_RGB = (255, 255, 255)
COLORS = {
    'red': (220, 40, 40),
    'green': (40, 170, 60),
    'blue': (40, 70, 220),
    'yellow': (235, 200, 30),
}
SHAPES = ('square', 'circle', 'triangle')
# "left of": x smaller by >= this; "above": y smaller by >= this (between object centres).
RELATION_THRESHOLD_PX = 4.0

Object = tuple[str, str, int, int]  # (shape, color, row, col)
Layout = list[Object]


def shape_mask(shape: str) -> np.ndarray:
    """The pixels of ``shape`` on its 6 x 6 box: bool ``[6, 6]`` (row, column)."""
    centres = np.arange(SHAPE_PX) + 0.5 - SHAPE_PX / 2  # dx (or dy) of each pixel centre
    dy, dx = np.meshgrid(centres, centres, indexing='ij')
    if shape == 'square':
        return np.ones((SHAPE_PX, SHAPE_PX), bool)
    if shape == 'circle':
        return dx**2 + dy**2 <= 7
    if shape == 'triangle':
        row = np.arange(SHAPE_PX)[:, None]
        return np.abs(dx) <= (row + 1) / 2
    raise ValueError(f'unknown shape {shape!r}; expected one of {SHAPES}')


def cell_center(row: int, col: int) -> tuple[float, float]:
    """The centre ``(x, y)`` in pixels of grid cell (row, col)."""
    return (col + 0.5) * CELL_PX, (row + 0.5) * CELL_PX


def check_layout(layout: Layout) -> None:
    """Raises ValueError unless every object is a known shape and colour in its own grid cell."""
    cells = set()
    for shape, color, row, col in layout:
        if shape not in SHAPES:
            raise ValueError(f'unknown shape {shape!r} in layout; expected one of {SHAPES}')
        if color not in COLORS:
            raise ValueError(f'unknown color {color!r} in layout; expected one of {tuple(COLORS)}')
        if not (0 <= row < GRID and 0 <= col < GRID):
            raise ValueError(f'cell ({row}, {col}) is off the {GRID} x {GRID} grid')
        if (row, col) in cells:
            raise ValueError(f'two objects in cell ({row}, {col}); at most one object per cell')
        cells.add((row, col))


def render(layout: Layout) -> np.ndarray:
    """Draws ``layout`` on a white canvas: uint8 ``[32, 32, 3]``."""
    check_layout(layout)
    image = np.empty((CANVAS_PX, CANVAS_PX, 3), np.uint8)
    image[...] = BACKGROUND_RGB
    for shape, color, row, col in layout:
        top = row * CELL_PX + SHAPE_OFFSET_PX
        left = col * CELL_PX + SHAPE_OFFSET_PX
        box = image[top:top + SHAPE_PX, left:left + SHAPE_PX]
        box[shape_mask(shape)] = COLORS[color]
    return image
