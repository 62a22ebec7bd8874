"""The ShapesEval detector: an image to GenEval-style detections.

Exactly as ``shared/docs/shapes_eval.md`` specifies:

1. Each pixel goes to the nearest (Euclidean, RGB) of white and the four colours; a pixel farther
   than 100 from all five, or nearest to white, is background.
2. Objects are the 4-connected components of one colour with at least 8 pixels.
3. Shape: the fill ratio of the component's bounding box >= 0.85 -> square; else (pixels in the
   lower half of the box) / (pixels in the upper half) >= 1.5 -> triangle (the middle row of an
   odd-height box counts to neither half); else circle.
4. Centre: the mean of the component's pixel centres (pixel ``[i, j]`` has centre
   ``(j + 0.5, i + 0.5)``); cell: the grid cell holding the centre.

A detection is ``{'class': shape, 'color': colour name, 'center': (x, y), 'box': (x0, y0, x1, y1),
'cell': (row, col), 'pixels': n}``; the box is in pixel-edge coordinates (``x1 = last column + 1``).
Detections come in raster order of each component's first pixel.
"""

from __future__ import annotations

import numpy as np

from unigrpo_jax.shapes import world

MAX_COLOR_DISTANCE = 100.0
MIN_PIXELS = 8
SQUARE_MIN_FILL = 0.85
TRIANGLE_MIN_LOWER_TO_UPPER = 1.5

COLOR_NAMES = tuple(world.COLORS)
# Palette row 0 is white (background); row k > 0 is COLOR_NAMES[k - 1].
_PALETTE = np.array([world.BACKGROUND_RGB, *world.COLORS.values()], np.float64)
_NEIGHBOURS = ((-1, 0), (1, 0), (0, -1), (0, 1))


def color_labels(image: np.ndarray) -> np.ndarray:
    """Per-pixel colour: int ``[H, W]``, -1 for background, else an index into ``COLOR_NAMES``."""
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f'expected an RGB image [H, W, 3], got shape {image.shape}')
    distance = np.linalg.norm(image[:, :, None, :].astype(np.float64) - _PALETTE, axis=-1)
    nearest = distance.argmin(-1)
    background = (nearest == 0) | (distance.min(-1) > MAX_COLOR_DISTANCE)
    return np.where(background, -1, nearest - 1)


def components(labels: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """4-connected components of equal non-negative label: ``(label, pixels int [n, 2] (i, j))``."""
    height, width = labels.shape
    seen = labels < 0
    found = []
    for i0, j0 in zip(*np.nonzero(~seen)):
        if seen[i0, j0]:
            continue
        label = labels[i0, j0]
        seen[i0, j0] = True
        stack, pixels = [(i0, j0)], []
        while stack:
            i, j = stack.pop()
            pixels.append((i, j))
            for di, dj in _NEIGHBOURS:
                a, b = i + di, j + dj
                if 0 <= a < height and 0 <= b < width and not seen[a, b] and labels[a, b] == label:
                    seen[a, b] = True
                    stack.append((a, b))
        found.append((int(label), np.array(pixels)))
    return found


def classify_shape(pixels: np.ndarray) -> str:
    """The shape of a component with pixels int ``[n, 2]`` (i, j), by its bounding box."""
    rows = pixels[:, 0] - pixels[:, 0].min()
    height = rows.max() + 1
    width = np.ptp(pixels[:, 1]) + 1
    if len(pixels) / (height * width) >= SQUARE_MIN_FILL:
        return 'square'
    upper = np.sum(rows < height // 2)
    lower = np.sum(rows >= height - height // 2)
    if lower >= TRIANGLE_MIN_LOWER_TO_UPPER * upper:
        return 'triangle'
    return 'circle'


def detect(image: np.ndarray) -> list[dict]:
    """The objects in an image uint8 ``[32, 32, 3]`` as detections (see the module docstring)."""
    detections = []
    for label, pixels in components(color_labels(image)):
        if len(pixels) < MIN_PIXELS:
            continue
        i, j = pixels[:, 0], pixels[:, 1]
        x, y = float(j.mean() + 0.5), float(i.mean() + 0.5)
        detections.append({
            'class': classify_shape(pixels),
            'color': COLOR_NAMES[label],
            'center': (x, y),
            'box': (int(j.min()), int(i.min()), int(j.max()) + 1, int(i.max()) + 1),
            'cell': (min(int(y // world.CELL_PX), world.GRID - 1),
                     min(int(x // world.CELL_PX), world.GRID - 1)),
            'pixels': len(pixels),
        })
    return detections
