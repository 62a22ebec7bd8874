"""The ShapesEval reward ``shapes``: the detector graded by GenEval's rules, built by name."""

import ml_collections
import numpy as np
import pytest

from unigrpo_jax.rewards import registry
from unigrpo_jax.shapes import prompts, reward, world

TWO_RED_SQUARES = {'tag': 'counting', 'prompt': 'a photo of two red squares',
                   'include': [{'class': 'square', 'count': 2, 'color': 'red'}]}


def images_of(*layouts):
    return np.stack([world.render(layout) for layout in layouts])


def test_partial_credit_and_strict_scores_of_rendered_layouts():
    images = images_of([('square', 'red', 0, 0), ('square', 'red', 2, 3)],  # right
                       [('square', 'red', 0, 0)],                             # one short
                       [])                                                    # nothing
    metadata = [TWO_RED_SQUARES] * 3
    partial = reward.shapes_scores(images, metadata)
    strict = reward.shapes_scores(images, metadata, strict=True)
    assert partial.dtype == np.float32 and partial.shape == (3,)
    np.testing.assert_array_equal(strict, [1.0, 0.0, 0.0])
    assert partial[0] == 1.0 and 0.0 < partial[1] < 1.0 and partial[2] < partial[1]


def test_exact_scene_refuses_the_cluttered_canvas_that_passes_genevals_rules():
    """'a red circle' passes GenEval's rules on a canvas that also holds a square and a blue
    triangle (extra objects are not checked); ``exact_scene`` scores it 0, and the right scene
    still 1."""
    red_circle = {'tag': 'colors', 'prompt': 'a photo of a red circle',
                  'include': [{'class': 'circle', 'count': 1, 'color': 'red'}]}
    images = images_of([('circle', 'red', 0, 0), ('square', 'green', 2, 3),
                        ('triangle', 'blue', 3, 0)],
                       [('circle', 'red', 1, 1)])
    np.testing.assert_array_equal(reward.shapes_scores(images, [red_circle] * 2, strict=True),
                                  [1.0, 1.0])
    np.testing.assert_array_equal(
        reward.shapes_scores(images, [red_circle] * 2, strict=True, exact_scene=True), [0.0, 1.0])
    np.testing.assert_array_equal(
        registry.make_reward('shapes', {'strict': True, 'exact_scene': True})(
            images, [red_circle] * 2), [0.0, 1.0])


def test_every_eval_prompt_scores_one_on_a_layout_drawn_for_it():
    rng = np.random.default_rng(0)
    metadata = prompts.eval_prompts(seed=0, per_tag=3)
    images = images_of(*(prompts.sample_layout(m, rng) for m in metadata))
    for exact_scene in (False, True):  # a layout drawn for a prompt holds only what it names
        np.testing.assert_array_equal(
            reward.shapes_scores(images, metadata, strict=True, exact_scene=exact_scene),
            np.ones(len(metadata), np.float32))


@pytest.mark.parametrize('options', [None, {}, {'strict': True},
                                     ml_collections.ConfigDict({'strict': False})])
def test_registered_as_shapes(options):
    images = images_of([('square', 'red', 0, 0)])
    strict = bool((options or {}).get('strict', False))
    np.testing.assert_array_equal(
        registry.make_reward('shapes', options)(images, [TWO_RED_SQUARES]),
        reward.shapes_scores(images, [TWO_RED_SQUARES], strict=strict))


def test_unknown_options_are_refused():
    with pytest.raises(ValueError, match=r"unknown options \['threshold'\].*has: strict"):
        registry.make_reward('shapes', {'threshold': 2.0})


def test_color_fraction_counts_the_canvas_in_one_colour_and_can_be_negated():
    images = np.full((2, 4, 4, 3), 255, np.uint8)
    images[0, :2] = world.COLORS['red']  # half the canvas
    images[1, 0, 0] = world.COLORS['blue']
    fn = registry.make_reward('color_fraction', ml_collections.ConfigDict(dict(color='red')))
    np.testing.assert_allclose(fn(images, [{}, {}]), [0.5, 0.0])
    negated = registry.make_reward('color_fraction', dict(color='blue', sign=-1))
    np.testing.assert_allclose(negated(images, [{}, {}]), [0.0, -1 / 16])
    with pytest.raises(ValueError, match='takes color'):
        registry.make_reward('color_fraction', dict(color='pink'))
