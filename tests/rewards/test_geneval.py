"""GenEval's rules on hand-written detections: include/exclude, colours, relations, credit."""

import itertools

import numpy as np
import pytest

from unigrpo_jax.rewards import geneval

MARGIN = 4.0


def obj(shape, x, y, color='red'):
    return {'class': shape, 'color': color, 'center': (x, y), 'box': (x - 3, y - 3, x + 3, y + 3)}


def strict(detections, metadata):
    return geneval.strict_correct(detections, metadata, threshold=MARGIN)


def credit(detections, metadata):
    return geneval.partial_credit(detections, metadata, threshold=MARGIN)


SINGLE = {'tag': 'single_object', 'include': [{'class': 'circle', 'count': 1}],
          'prompt': 'a photo of a circle'}
TWO = {'tag': 'two_object', 'include': [{'class': 'circle', 'count': 1},
                                        {'class': 'square', 'count': 1}],
       'prompt': 'a photo of a circle and a square'}
THREE = {'tag': 'counting', 'include': [{'class': 'triangle', 'count': 3}],
         'exclude': [{'class': 'triangle', 'count': 4}], 'prompt': 'a photo of three triangles'}
BLUE_SQUARE = {'tag': 'colors', 'include': [{'class': 'square', 'count': 1, 'color': 'blue'}],
               'prompt': 'a photo of a blue square'}
LEFT_OF = {'tag': 'position',
           'include': [{'class': 'square', 'count': 1},
                       {'class': 'circle', 'count': 1, 'position': ['left of', 0]}],
           'prompt': 'a photo of a circle left of a square'}
RED_BLUE = {'tag': 'color_attr',
            'include': [{'class': 'circle', 'count': 1, 'color': 'red'},
                        {'class': 'square', 'count': 1, 'color': 'blue'}],
            'prompt': 'a photo of a red circle and a blue square'}


def test_single_object_needs_at_least_one():
    assert not strict([], SINGLE)
    assert not strict([obj('square', 4, 4)], SINGLE)
    assert strict([obj('circle', 4, 4)], SINGLE)
    assert strict([obj('circle', 4, 4), obj('circle', 20, 4)], SINGLE)  # "at least", no exclude


def test_two_object_needs_both():
    assert strict([obj('square', 20, 4), obj('circle', 4, 4)], TWO)
    assert not strict([obj('circle', 4, 4)], TWO)
    assert not strict([obj('square', 4, 4)], TWO)


@pytest.mark.parametrize('n, correct', [(2, False), (3, True), (4, False), (5, False)])
def test_counting_is_exact_through_the_exclude_clause(n, correct):
    triangles = [obj('triangle', 4 + 8 * i, 4) for i in range(n)]
    assert strict(triangles + [obj('circle', 4, 28)], THREE) == correct


def test_exclude_counts_every_colour():
    triangles = [obj('triangle', 4 + 8 * i, 4, color) for i, color in
                 enumerate(['red', 'red', 'red', 'blue'])]
    assert not strict(triangles, THREE)


def test_colour_must_match():
    assert strict([obj('square', 4, 4, 'blue')], BLUE_SQUARE)
    assert not strict([obj('square', 4, 4, 'red')], BLUE_SQUARE)
    assert not strict([obj('circle', 4, 4, 'blue')], BLUE_SQUARE)
    assert strict([obj('square', 4, 4, 'red'), obj('square', 12, 4, 'blue')], BLUE_SQUARE)


def test_colour_attribution_binds_each_colour_to_its_shape():
    assert strict([obj('circle', 4, 4, 'red'), obj('square', 12, 4, 'blue')], RED_BLUE)
    assert not strict([obj('circle', 4, 4, 'blue'), obj('square', 12, 4, 'red')], RED_BLUE)


@pytest.mark.parametrize('circle_x, square_x, correct', [
    (4, 20, True), (20, 4, False), (10, 12, False), (8, 12, True), (9, 12, False)])
def test_left_of_needs_the_margin(circle_x, square_x, correct):
    assert strict([obj('square', square_x, 4), obj('circle', circle_x, 20)], LEFT_OF) == correct


@pytest.mark.parametrize('relation, dx, dy, correct', [
    ('left of', -4, 0, True), ('left of', 4, 0, False), ('right of', 4, 0, True),
    ('above', 0, -4, True), ('above', 0, 4, False), ('below', 0, 4, True),
    ('below', 0, 3.9, False), ('above', -8, 0, False)])
def test_relation_holds(relation, dx, dy, correct):
    assert geneval.relation_holds((10 + dx, 10 + dy), (10, 10), relation, MARGIN) == correct


def test_unknown_relation_is_an_error():
    with pytest.raises(ValueError, match='unknown relation'):
        geneval.relation_holds((0, 0), (8, 0), 'near', MARGIN)


def test_position_needs_some_qualifying_pair():
    circle_right, circle_left = obj('circle', 28, 4), obj('circle', 4, 4)
    square = obj('square', 20, 4)
    assert not strict([circle_right, square], LEFT_OF)
    assert strict([circle_right, circle_left, square], LEFT_OF)
    assert not strict([circle_left], LEFT_OF)


def _brute_force_position(detections, metadata):
    """Strict correctness with the subject and target objects chosen by exhaustive search."""
    target, subject = metadata['include']
    relation = subject['position'][0]
    targets = [d for d in detections if d['class'] == target['class']]
    subjects = [d for d in detections if d['class'] == subject['class']]
    return any(all(geneval.relation_holds(s['center'], t['center'], relation, MARGIN)
                   for s in chosen_s for t in chosen_t)
               for chosen_s in itertools.combinations(subjects, subject['count'])
               for chosen_t in itertools.combinations(targets, target['count']))


@pytest.mark.parametrize('relation', geneval.RELATIONS)
def test_position_with_counts_matches_exhaustive_search(relation):
    rng = np.random.default_rng(0)
    metadata = {'tag': 'position', 'prompt': '',
                'include': [{'class': 'square', 'count': 2},
                            {'class': 'circle', 'count': 2, 'position': [relation, 0]}]}
    outcomes = set()
    for _ in range(300):
        detections = [obj(shape, *rng.integers(0, 32, 2).tolist())
                      for shape in rng.choice(['square', 'circle'], rng.integers(0, 7))]
        expected = _brute_force_position(detections, metadata)
        assert strict(detections, metadata) == expected
        outcomes.add(expected)
    assert outcomes == {True, False}


def test_partial_credit_counting():
    assert credit([obj('triangle', 4 + 8 * i, 4) for i in range(3)], THREE) == 1.0
    assert credit([obj('triangle', 4 + 8 * i, 4) for i in range(2)], THREE) == pytest.approx(2 / 3)
    assert credit([obj('triangle', 4 + 8 * i, 4) for i in range(4)], THREE) == pytest.approx(2 / 3)
    assert credit([obj('triangle', 4 + 8 * i, 4) for i in range(7)], THREE) == 0.0  # clipped
    assert credit([], THREE) == 0.0


def test_partial_credit_colour():
    assert credit([obj('square', 4, 4, 'blue')], BLUE_SQUARE) == 1.0
    assert credit([obj('square', 4, 4, 'red')], BLUE_SQUARE) == 0.5  # count 1, colour 0
    # Two squares: count term 0 and no colour term credit (the count is not exact).
    assert credit([obj('square', 4, 4, 'red'), obj('square', 12, 4, 'blue')], BLUE_SQUARE) == 0.0
    assert credit([obj('circle', 4, 4, 'red'), obj('square', 12, 4, 'red')], RED_BLUE) == 0.75
    assert credit([obj('circle', 4, 4, 'red')], RED_BLUE) == 0.5  # [1, 1, 0, 0]


def test_partial_credit_colour_is_the_fraction_of_matched_objects():
    two_red = {'tag': 'counting', 'prompt': '',
               'include': [{'class': 'circle', 'count': 2, 'color': 'red'}]}
    detections = [obj('circle', 4, 4, 'red'), obj('circle', 12, 4, 'green')]
    assert credit(detections, two_red) == pytest.approx((1 + 0.5) / 2)


def test_partial_credit_position():
    square = obj('square', 20, 4)
    assert credit([obj('circle', 4, 4), square], LEFT_OF) == 1.0
    assert credit([obj('circle', 28, 4), square], LEFT_OF) == pytest.approx(2 / 3)
    assert credit([obj('circle', 4, 4)], LEFT_OF) == pytest.approx(1 / 3)  # [0, 1, 0]
    # An extra circle costs the count term and the position term (objects must match exactly).
    two_circles = [obj('circle', 4, 4), obj('circle', 28, 4)]
    assert credit(two_circles + [square], LEFT_OF) == pytest.approx(1 / 3)


def test_strict_correct_implies_full_credit_when_counts_are_exact():
    for metadata, detections in [(SINGLE, [obj('circle', 4, 4)]),
                                 (TWO, [obj('circle', 4, 4), obj('square', 20, 4)]),
                                 (RED_BLUE, [obj('circle', 4, 4, 'red'),
                                             obj('square', 20, 4, 'blue')]),
                                 (LEFT_OF, [obj('circle', 4, 4), obj('square', 20, 4)])]:
        assert strict(detections, metadata)
        assert credit(detections, metadata) == 1.0


def test_tag_accuracy_averages_tags_equally():
    accuracy = geneval.tag_accuracy([('counting', True), ('counting', False), ('colors', True),
                                     ('colors', True), ('colors', True), ('colors', False)])
    assert accuracy == {'counting': 0.5, 'colors': 0.75, 'overall': 0.625}


def test_tag_accuracy_needs_results():
    with pytest.raises(ValueError, match='at least one'):
        geneval.tag_accuracy([])


@pytest.mark.parametrize('metadata, problem', [
    ({'include': [{'class': 'dog', 'count': 1}]}, None),
    ({'include': [{'class': 'dog', 'count': 1}, {'class': 'cat', 'count': 2,
                                                 'position': ['left of', 0]}]}, None),
    ({'prompt': 'a dog'}, 'no "include" list'),
    ({'include': [{'class': 'dog'}]}, 'include clause 0 needs'),
    ({'include': [{'class': 'dog', 'count': 1, 'position': ['near', 0]}]}, 'has position'),
    ({'include': [{'class': 'dog', 'count': 1}], 'exclude': [{'count': 1}]},
     'exclude clause 0 needs'),
])
def test_metadata_problem_names_what_geneval_scoring_lacks(metadata, problem):
    got = geneval.metadata_problem(metadata)
    assert (got is None) if problem is None else (problem in got), got
