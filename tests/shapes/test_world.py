"""The ShapesEval renderer: canvas, shape masks and placement exactly as docs/shapes_eval.md."""

import numpy as np
import pytest

from unigrpo_jax.shapes import world


def test_empty_canvas_is_white():
    image = world.render([])
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert (image == 255).all()


@pytest.mark.parametrize('shape, row_counts', [
    ('square', [6, 6, 6, 6, 6, 6]),
    ('circle', [2, 4, 6, 6, 4, 2]),
    ('triangle', [2, 2, 4, 4, 6, 6]),
])
def test_shape_masks(shape, row_counts):
    mask = world.shape_mask(shape)
    assert mask.shape == (6, 6)
    assert mask.sum(1).tolist() == row_counts
    assert (mask == mask[:, ::-1]).all()  # left-right symmetric about the box centre


def test_circle_is_the_disc_of_radius_sqrt7():
    centre = np.arange(6) + 0.5 - 3
    assert (world.shape_mask('circle') == (centre[:, None] ** 2 + centre[None] ** 2 <= 7)).all()


def test_object_fills_the_6x6_box_at_offset_1_in_its_cell():
    image = world.render([('square', 'green', 2, 3)])
    painted = (image != 255).any(-1)
    rows, cols = np.nonzero(painted)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (17, 22, 25, 30)
    assert (image[painted] == world.COLORS['green']).all()
    assert painted.sum() == 36


def test_colours_and_cell_centres():
    assert world.COLORS == {'red': (220, 40, 40), 'green': (40, 170, 60),
                            'blue': (40, 70, 220), 'yellow': (235, 200, 30)}
    assert world.cell_center(0, 0) == (4.0, 4.0)
    assert world.cell_center(1, 3) == (28.0, 12.0)  # (x, y): col 3, row 1


@pytest.mark.parametrize('layout, message', [
    ([('hexagon', 'red', 0, 0)], 'unknown shape'),
    ([('square', 'purple', 0, 0)], 'unknown color'),
    ([('square', 'red', 4, 0)], 'off the 4 x 4 grid'),
    ([('square', 'red', 1, 1), ('circle', 'blue', 1, 1)], 'two objects in cell'),
])
def test_invalid_layouts_are_errors(layout, message):
    with pytest.raises(ValueError, match=message):
        world.render(layout)
