"""The thinking text: a layout as a plan in a small fixed grammar, and back.

Grammar (whitespace-separated words, one cell word per object)::

    plan   := '<think>' [object (';' object)*] '</think>'
    object := COLOR SHAPE 'at' CELL           CELL := 'r' ROW 'c' COL, e.g. 'r0c2'

e.g. ``<think> red square at r0c2 ; blue circle at r3c1 </think>``. The ``<think>`` / ``</think>``
tags are part of the plan text: Bagel's think system prompt asks the model to enclose its plan
in them, so this is exactly the text the model generates (between ``<|im_start|>`` and
``<|im_end|>``) and the SFT target. Objects are written in layout order. A single word per cell
binds row and column together, which the spec's prototype found learns much better than
``row 0 col 2``.
"""

from __future__ import annotations

import re

from unigrpo_jax.shapes import world

THINK_OPEN = '<think>'
THINK_CLOSE = '</think>'
SEPARATOR = ';'
_CELL_WORD = re.compile(r'r(\d)c(\d)')


def cell_word(row: int, col: int) -> str:
    """The word naming grid cell (row, col): 'r0c2'."""
    return f'r{row}c{col}'


def plan_text(layout: world.Layout) -> str:
    """The thinking text for ``layout``: '<think> red square at r0c2 ; ... </think>'."""
    world.check_layout(layout)
    objects = f' {SEPARATOR} '.join(f'{color} {shape} at {cell_word(row, col)}'
                                     for shape, color, row, col in layout)
    return ' '.join(word for word in (THINK_OPEN, objects, THINK_CLOSE) if word)


def _parse_object(words: list[str]) -> world.Object | None:
    if len(words) != 4 or words[2] != 'at':
        return None
    color, shape, _, cell = words
    match = _CELL_WORD.fullmatch(cell)
    if color not in world.COLORS or shape not in world.SHAPES or match is None:
        return None
    return shape, color, int(match[1]), int(match[2])


def parse_plan(text: str) -> world.Layout | None:
    """The layout a thinking text describes, or None if it breaks the grammar or the world.

    Whitespace may vary; anything else (a missing tag, an unknown word, a cell off the grid, two
    objects in one cell) gives None.
    """
    words = text.split()
    if len(words) < 2 or words[0] != THINK_OPEN or words[-1] != THINK_CLOSE:
        return None
    body = words[1:-1]
    if not body:
        return []
    layout, start = [], 0
    for end in [i for i, word in enumerate(body) if word == SEPARATOR] + [len(body)]:
        obj = _parse_object(body[start:end])
        if obj is None:
            return None
        layout.append(obj)
        start = end + 1
    try:
        world.check_layout(layout)
    except ValueError:
        return None
    return layout
