"""The plan grammar: exact text, round trips, and rejection of malformed plans."""

import numpy as np
import pytest

from unigrpo_jax.shapes import plan, prompts, world


def test_plan_text_is_the_one_word_per_cell_grammar():
    layout = [('square', 'red', 0, 2), ('circle', 'blue', 3, 1)]
    assert plan.plan_text(layout) == '<think> red square at r0c2 ; blue circle at r3c1 </think>'
    assert plan.plan_text([]) == '<think> </think>'


def test_round_trip_on_random_layouts_and_sampled_prompts():
    rng = np.random.default_rng(0)
    for _ in range(200):
        cells = rng.permutation(16)[:rng.integers(0, 17)]
        layout = [(world.SHAPES[rng.integers(3)], tuple(world.COLORS)[rng.integers(4)],
                   int(c) // 4, int(c) % 4) for c in cells]
        assert plan.parse_plan(plan.plan_text(layout)) == layout
    for _ in range(200):
        layout = prompts.sample_layout(prompts.sample_prompt(rng), rng)
        assert plan.parse_plan(plan.plan_text(layout)) == layout


def test_any_whitespace_separates_words():
    assert plan.parse_plan('  <think>\tred square  at r0c2 ;blue circle at r3c1 </think>\n') is None
    assert plan.parse_plan(' <think>\tred square  at r0c2 ;\nblue circle at r3c1 </think>\n') == [
        ('square', 'red', 0, 2), ('circle', 'blue', 3, 1)]


@pytest.mark.parametrize('text', [
    'red square at r0c2',  # no think tags
    '<think> red square at r0c2',
    '<think> red square at r0c2 ; </think>',  # dangling separator
    '<think> ; red square at r0c2 </think>',
    '<think> red square r0c2 </think>',
    '<think> purple square at r0c2 </think>',
    '<think> red hexagon at r0c2 </think>',
    '<think> red square at r4c0 </think>',
    '<think> red square at row0col2 </think>',
    '<think> red square at r0c2 ; blue circle at r0c2 </think>',  # one cell, two objects
    '',
])
def test_malformed_plans_parse_to_none(text):
    assert plan.parse_plan(text) is None
