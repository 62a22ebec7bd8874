"""ShapesEval prompts: templates, GenEval metadata, the held-out split, layouts, the eval file."""

import json
import os

import numpy as np
import pytest

from unigrpo_jax.rewards import geneval
from unigrpo_jax.shapes import detector, prompts, world

EVAL_FILE = os.path.join(os.path.dirname(__file__), '..', '..', 'data', 'shapes_eval',
                         'eval_prompts.jsonl')


def _by_prompt(tag):
    return {m['prompt']: m for m in prompts.all_prompts(tag)}


@pytest.mark.parametrize('tag, prompt, include, exclude', [
    ('single_object', 'a photo of a circle', [{'class': 'circle', 'count': 1}], None),
    ('two_object', 'a photo of a circle and a square',
     [{'class': 'circle', 'count': 1}, {'class': 'square', 'count': 1}], None),
    ('counting', 'a photo of three triangles', [{'class': 'triangle', 'count': 3}],
     [{'class': 'triangle', 'count': 4}]),
    ('counting', 'a photo of two squares', [{'class': 'square', 'count': 2}],
     [{'class': 'square', 'count': 3}]),
    ('counting', 'a photo of four circles', [{'class': 'circle', 'count': 4}],
     [{'class': 'circle', 'count': 5}]),
    ('colors', 'a photo of a blue square',
     [{'class': 'square', 'count': 1, 'color': 'blue'}], None),
    ('position', 'a photo of a circle left of a square',
     [{'class': 'square', 'count': 1}, {'class': 'circle', 'count': 1, 'position': ['left of', 0]}],
     None),
    ('position', 'a photo of a triangle below a circle',
     [{'class': 'circle', 'count': 1}, {'class': 'triangle', 'count': 1, 'position': ['below', 0]}],
     None),
    ('color_attr', 'a photo of a red circle and a blue square',
     [{'class': 'circle', 'count': 1, 'color': 'red'},
      {'class': 'square', 'count': 1, 'color': 'blue'}], None),
])
def test_templates_and_metadata(tag, prompt, include, exclude):
    metadata = _by_prompt(tag)[prompt]
    expected = {'tag': tag, 'include': include, 'prompt': prompt}
    if exclude is not None:
        expected['exclude'] = exclude
    assert metadata == expected
    assert list(metadata) == [k for k in ('tag', 'include', 'exclude', 'prompt') if k in metadata]


def test_every_tag_enumerates_its_world():
    sizes = {tag: len(prompts.all_prompts(tag)) for tag in prompts.TAGS}
    assert sizes == {'single_object': 3, 'two_object': 6, 'counting': 9, 'colors': 12,
                     'position': 24, 'color_attr': 72}
    for tag in prompts.TAGS:
        texts = [m['prompt'] for m in prompts.all_prompts(tag)]
        assert len(set(texts)) == len(texts)
        assert all(m['tag'] == tag for m in prompts.all_prompts(tag))
    with pytest.raises(ValueError, match='unknown tag'):
        prompts.all_prompts('counting_objects')


def test_split_holds_out_the_documented_combinations():
    assert prompts.HELD_OUT_COLOR_SHAPES == {('yellow', 'triangle'), ('blue', 'circle')}
    assert prompts.HELD_OUT_RELATIONS == {('circle', 'above', 'square'),
                                          ('triangle', 'left of', 'circle')}
    held_out = {tag: [m['prompt'] for m in prompts.all_prompts(tag) if prompts.is_held_out(m)]
                for tag in prompts.TAGS}
    assert held_out['colors'] == ['a photo of a blue circle', 'a photo of a yellow triangle']
    assert held_out['position'] == ['a photo of a circle above a square',
                                    'a photo of a triangle left of a circle']
    assert len(held_out['color_attr']) == 22
    assert 'a photo of a blue circle and a yellow triangle' in held_out['color_attr']
    assert 'a photo of a red square and a blue circle' in held_out['color_attr']
    assert not held_out['single_object'] and not held_out['two_object'] and not held_out['counting']
    for tag in prompts.TAGS:
        assert len(prompts.train_prompts(tag)) == len(prompts.all_prompts(tag)) - len(held_out[tag])
        assert not any(prompts.is_held_out(m) for m in prompts.train_prompts(tag))
    # The mirror phrasing of a held-out relation stays in training.
    assert 'a photo of a square below a circle' in {
        m['prompt'] for m in prompts.train_prompts('position')}


def test_sample_prompt_draws_only_training_prompts_of_every_tag():
    rng = np.random.default_rng(0)
    drawn = [prompts.sample_prompt(rng) for _ in range(600)]
    assert not any(prompts.is_held_out(m) for m in drawn)
    assert {m['tag'] for m in drawn} == set(prompts.TAGS)
    assert prompts.sample_prompt(np.random.default_rng(0)) == drawn[0]


def test_sample_layout_satisfies_every_prompt():
    for seed in range(6):
        rng = np.random.default_rng(seed)
        for tag in prompts.TAGS:
            for metadata in prompts.all_prompts(tag):
                layout = prompts.sample_layout(metadata, rng)
                assert len(layout) == sum(c['count'] for c in metadata['include'])
                detections = detector.detect(world.render(layout))
                threshold = world.RELATION_THRESHOLD_PX
                assert geneval.strict_correct(detections, metadata, threshold=threshold), layout
                assert geneval.partial_credit(detections, metadata, threshold=threshold) == 1.0


def test_sample_layout_orders_objects_by_clause_then_cell():
    rng = np.random.default_rng(0)
    metadata = _by_prompt('position')['a photo of a circle left of a square']
    for _ in range(20):
        (square, circle) = prompts.sample_layout(metadata, rng)
        assert square[0] == 'square' and circle[0] == 'circle' and circle[3] < square[3]
    metadata = _by_prompt('counting')['a photo of four triangles']
    layout = prompts.sample_layout(metadata, rng)
    assert [o[2:] for o in layout] == sorted(o[2:] for o in layout)


def test_sample_layout_draws_free_colours_and_cells():
    rng = np.random.default_rng(0)
    metadata = _by_prompt('single_object')['a photo of a circle']
    layouts = [prompts.sample_layout(metadata, rng)[0] for _ in range(400)]
    assert {o[1] for o in layouts} == set(world.COLORS)
    assert len({o[2:] for o in layouts}) == 16


def test_sample_layout_reports_impossible_prompts():
    seventeen_objects = {'tag': 'position', 'prompt': 'impossible', 'include': [
        {'class': 'square', 'count': 4},
        {'class': 'circle', 'count': 13, 'position': ['left of', 0]}]}  # 17 objects, 16 cells
    with pytest.raises(ValueError, match='no placement'):
        prompts.sample_layout(seventeen_objects, np.random.default_rng(0))


def test_eval_prompts_are_balanced_and_seeded():
    chosen = prompts.eval_prompts(prompts.EVAL_SEED, prompts.EVAL_PER_TAG)
    assert len(chosen) == 6 * 40
    for i, tag in enumerate(prompts.TAGS):
        block = chosen[40 * i:40 * (i + 1)]
        assert all(m['tag'] == tag for m in block)
        counts = {}
        for m in block:
            counts[m['prompt']] = counts.get(m['prompt'], 0) + 1
        assert max(counts.values()) - min(counts.values()) <= 1  # even cycling
    assert any(prompts.is_held_out(m) for m in chosen)
    assert prompts.eval_prompts(1, 40) != chosen


def test_shipped_eval_file_is_the_seeded_set():
    with open(EVAL_FILE) as f:
        lines = f.read().splitlines()
    expected = prompts.eval_prompts(prompts.EVAL_SEED, prompts.EVAL_PER_TAG)
    assert lines == [json.dumps(m) for m in expected]


def test_shipped_validation_file_is_the_seeded_training_set():
    with open(os.path.join(os.path.dirname(EVAL_FILE), 'val_prompts.jsonl')) as f:
        lines = f.read().splitlines()
    chosen = prompts.validation_prompts()
    assert lines == [json.dumps(m) for m in chosen]
    assert len(chosen) == 6 * prompts.VALIDATION_PER_TAG
    assert not any(prompts.is_held_out(m) for m in chosen)
    assert {m['tag'] for m in chosen} == set(prompts.TAGS)
