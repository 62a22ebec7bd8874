"""The ShapesEval detector recovers every rendered layout and follows the spec's rules."""

import numpy as np
import pytest

from unigrpo_jax.shapes import detector, world

PIXELS = {'square': 36, 'circle': 24, 'triangle': 24}


def random_layout(rng):
    cells = rng.permutation(world.GRID * world.GRID)[:rng.integers(0, 17)]
    return [(world.SHAPES[rng.integers(3)], tuple(world.COLORS)[rng.integers(4)],
             int(cell) // world.GRID, int(cell) % world.GRID) for cell in cells]


def test_detector_recovers_random_layouts_exactly():
    rng = np.random.default_rng(0)
    for _ in range(300):
        layout = random_layout(rng)
        detections = detector.detect(world.render(layout))
        found = sorted((d['class'], d['color'], *d['cell']) for d in detections)
        assert found == sorted(layout)
        for d in detections:
            assert d['pixels'] == PIXELS[d['class']]
            x0, y0, x1, y1 = d['box']
            row, col = d['cell']
            assert (x0, y0, x1, y1) == (col * 8 + 1, row * 8 + 1, col * 8 + 7, row * 8 + 7)
            x, y = d['center']
            assert abs(x - (col * 8 + 4)) < 1 and abs(y - (row * 8 + 4)) < 1


def test_centres_are_pixel_means():
    square, triangle = detector.detect(world.render([('square', 'red', 0, 0),
                                                     ('triangle', 'blue', 1, 1)]))
    assert square['center'] == (4.0, 4.0)
    assert triangle['center'] == pytest.approx((12.0, 8 + 1 + 88 / 24))  # mass in the lower rows


def test_colours_within_100_are_snapped_and_farther_ones_are_background():
    image = world.render([('square', 'red', 0, 0), ('circle', 'blue', 0, 1)])
    noisy = np.clip(image.astype(int) + np.random.default_rng(0).integers(-30, 31, image.shape),
                    0, 255).astype(np.uint8)  # |noise| <= 30 per channel: distance <= 52
    assert [(d['class'], d['color'], d['cell']) for d in detector.detect(noisy)] == [
        ('square', 'red', (0, 0)), ('circle', 'blue', (0, 1))]
    grey = np.full((32, 32, 3), 255, np.uint8)
    grey[1:7, 1:7] = (128, 128, 128)  # 128 or more from white and from every colour
    assert detector.detect(grey) == []


def test_small_and_diagonal_components_are_dropped():
    image = np.full((32, 32, 3), 255, np.uint8)
    image[2, 2:9] = world.COLORS['red']  # 7 pixels: too small
    for k in range(12):  # a diagonal: 12 one-pixel 4-connected components
        image[10 + k, 10 + k] = world.COLORS['blue']
    assert detector.detect(image) == []
    image[2, 9] = world.COLORS['red']  # 8 pixels: an object (a line fills its box: a square)
    assert [(d['class'], d['pixels']) for d in detector.detect(image)] == [('square', 8)]


def test_two_touching_shapes_of_different_colours_are_two_objects():
    image = np.full((32, 32, 3), 255, np.uint8)
    image[0:6, 0:6] = world.COLORS['red']
    image[0:6, 6:12] = world.COLORS['green']
    assert [(d['class'], d['color']) for d in detector.detect(image)] == [
        ('square', 'red'), ('square', 'green')]


def _shape_of(rows):
    """The detector's shape for a component drawn from strings of '#' and '.'."""
    pixels = np.array([(i, j) for i, row in enumerate(rows) for j, c in enumerate(row) if c == '#'])
    return detector.classify_shape(pixels)


def test_shape_rules_on_hand_drawn_components():
    assert _shape_of(['####', '####', '###.']) == 'square'  # fill 11/12 >= 0.85
    # Odd height: the middle row counts to neither half (upper 1, lower 3: triangle).
    assert _shape_of(['..#..', '#####', '.###.']) == 'triangle'
    assert _shape_of(['..#..', '.###.', '#####']) == 'triangle'  # 1 vs 5
    assert _shape_of(['.##.', '####', '####', '.##.']) == 'circle'  # fill 12/16 = 0.75, ratio 1
    assert _shape_of(['.##', '.##', '###', '###']) == 'triangle'  # fill 10/12, ratio 6/4 = 1.5
    assert _shape_of(['.##', '.##', '###', '.##']) == 'circle'  # ratio 5/4 < 1.5
    # Odd height: a plus has 2 above and 2 below its middle row (counted to the lower half: 5 / 2).
    assert _shape_of(['.#.', '.#.', '###', '.#.', '.#.']) == 'circle'
