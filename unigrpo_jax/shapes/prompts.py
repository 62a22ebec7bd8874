"""ShapesEval prompts in GenEval's metadata format, the train/eval split, and layouts for a prompt.

The six tags and their templates (``shared/docs/shapes_eval.md``), with GenEval's metadata:

- ``single_object``: "a photo of a circle"                 include ``[{circle, 1}]``
- ``two_object``:    "a photo of a circle and a square"    include ``[{circle, 1}, {square, 1}]``
- ``counting``:      "a photo of three triangles"          include ``[{triangle, 3}]``,
                                                           exclude ``[{triangle, 4}]`` (n in 2..4)
- ``colors``:        "a photo of a blue square"            include ``[{square, 1, blue}]``
- ``position``:      "a photo of a circle left of a square"
                     include ``[{square, 1}, {circle, 1, position: ['left of', 0]}]``
- ``color_attr``:    "a photo of a red circle and a blue square"
                     include ``[{circle, 1, red}, {square, 1, blue}]``

Two objects in one prompt are distinct shapes, and in ``color_attr`` distinct colours, as in
GenEval. The world is small, so every prompt of a tag is enumerated (``all_prompts``).

Train/eval split: training prompts (``sample_prompt``) never contain a held-out combination;
the evaluation set (``eval_prompts``) draws from all prompts, so it measures both fitting and
generalisation (``is_held_out`` tells them apart); the validation set (``validation_prompts``,
training prompts only) is for choosing settings without looking at the evaluation set. Held out:

- colour-shape pairs ``HELD_OUT_COLOR_SHAPES`` (yellow triangle, blue circle): every ``colors``
  or ``color_attr`` prompt naming either (2 of 12 ``colors`` prompts, 22 of 72 ``color_attr``);
- (subject, relation, target) triples ``HELD_OUT_RELATIONS`` (circle above square, triangle left
  of circle): 2 of 24 ``position`` prompts. Their mirror phrasings ("a square below a circle")
  stay in training, so the held-out prompts ask for scenes seen under other words.

Only prompts are held out: training images still show yellow triangles (a free colour), and
circles above squares.
"""

from __future__ import annotations

import itertools
import json
import sys

import numpy as np

from unigrpo_jax.rewards.geneval import RELATIONS, relation_holds
from unigrpo_jax.shapes import world

TAGS = ('single_object', 'two_object', 'counting', 'colors', 'position', 'color_attr')
COUNT_WORDS = {2: 'two', 3: 'three', 4: 'four'}
HELD_OUT_COLOR_SHAPES = frozenset({('yellow', 'triangle'), ('blue', 'circle')})
HELD_OUT_RELATIONS = frozenset({('circle', 'above', 'square'), ('triangle', 'left of', 'circle')})
EVAL_SEED = 0
EVAL_PER_TAG = 40
# The validation set: training prompts only, for choosing RL settings without the eval split.
VALIDATION_SEED = 7
VALIDATION_PER_TAG = 100
MAX_PLACEMENT_TRIES = 100

_COLOR_NAMES = tuple(world.COLORS)


def plural(shape: str) -> str:
    """The plural of a shape name: 'circle' -> 'circles'."""
    return f'{shape}s'


def _clause(shape: str, count: int = 1, color: str | None = None,
            position: list | None = None) -> dict:
    clause = {'class': shape, 'count': count}
    if color is not None:
        clause['color'] = color
    if position is not None:
        clause['position'] = position
    return clause


def _metadata(tag: str, include: list[dict], prompt: str,
              exclude: list[dict] | None = None) -> dict:
    metadata = {'tag': tag, 'include': include}
    if exclude is not None:
        metadata['exclude'] = exclude
    metadata['prompt'] = prompt
    return metadata


def all_prompts(tag: str) -> list[dict]:
    """Every prompt of ``tag`` as GenEval metadata, in a fixed order."""
    shape_pairs = list(itertools.permutations(world.SHAPES, 2))
    if tag == 'single_object':
        return [_metadata(tag, [_clause(s)], f'a photo of a {s}') for s in world.SHAPES]
    if tag == 'two_object':
        return [_metadata(tag, [_clause(a), _clause(b)], f'a photo of a {a} and a {b}')
                for a, b in shape_pairs]
    if tag == 'counting':
        return [_metadata(tag, [_clause(s, n)], f'a photo of {word} {plural(s)}',
                          exclude=[_clause(s, n + 1)])
                for s in world.SHAPES for n, word in COUNT_WORDS.items()]
    if tag == 'colors':
        return [_metadata(tag, [_clause(s, color=c)], f'a photo of a {c} {s}')
                for c in _COLOR_NAMES for s in world.SHAPES]
    if tag == 'position':
        return [_metadata(tag, [_clause(target), _clause(subject, position=[relation, 0])],
                          f'a photo of a {subject} {relation} a {target}')
                for subject, target in shape_pairs for relation in RELATIONS]
    if tag == 'color_attr':
        return [_metadata(tag, [_clause(a, color=ca), _clause(b, color=cb)],
                          f'a photo of a {ca} {a} and a {cb} {b}')
                for a, b in shape_pairs for ca, cb in itertools.permutations(_COLOR_NAMES, 2)]
    raise ValueError(f'unknown tag {tag!r}; expected one of {TAGS}')


def is_held_out(metadata: dict) -> bool:
    """Whether the prompt names a held-out colour-shape pair or shape-relation-shape triple."""
    include = metadata['include']
    for clause in include:
        if (clause.get('color'), clause['class']) in HELD_OUT_COLOR_SHAPES:
            return True
        if 'position' in clause:
            relation, index = clause['position']
            if (clause['class'], relation, include[index]['class']) in HELD_OUT_RELATIONS:
                return True
    return False


def train_prompts(tag: str) -> list[dict]:
    """The prompts of ``tag`` that training may use (``all_prompts`` less the held-out ones)."""
    return [m for m in all_prompts(tag) if not is_held_out(m)]


def sample_prompt(rng: np.random.Generator) -> dict:
    """A training prompt: a uniform tag, then a uniform training prompt of that tag."""
    pool = train_prompts(TAGS[rng.integers(len(TAGS))])
    return pool[rng.integers(len(pool))]


def eval_prompts(seed: int, per_tag: int, pool_of=all_prompts) -> list[dict]:
    """The evaluation set: ``per_tag`` prompts per tag, tags in ``TAGS`` order.

    Each tag cycles through a seeded shuffle of all its prompts (held-out ones included), so a
    tag with fewer prompts than ``per_tag`` repeats each of them evenly. ``pool_of``: the prompts
    of a tag to draw from (``train_prompts`` gives the validation set).
    """
    rng = np.random.default_rng(seed)
    chosen = []
    for tag in TAGS:
        pool = pool_of(tag)
        order = []
        while len(order) < per_tag:
            order.extend(rng.permutation(len(pool)).tolist())
        chosen.extend(pool[i] for i in order[:per_tag])
    return chosen


def _place(metadata: dict, rng: np.random.Generator) -> world.Layout | None:
    """One random placement of the include clauses' objects; None if a relation left no cell."""
    free = [(row, col) for row in range(world.GRID) for col in range(world.GRID)]
    placed = []  # the objects of each clause so far
    for clause in metadata['include']:
        objects = []
        for _ in range(clause['count']):
            cells = free
            if 'position' in clause:
                relation, index = clause['position']
                if index >= len(placed):
                    raise ValueError(f'clause {clause} is positioned relative to include clause '
                                     f'{index}, which must come before it')
                cells = [cell for cell in free
                         if all(relation_holds(world.cell_center(*cell), world.cell_center(r, c),
                                               relation, world.RELATION_THRESHOLD_PX)
                                for _, _, r, c in placed[index])]
            if not cells:
                return None
            row, col = cells[rng.integers(len(cells))]
            free.remove((row, col))
            color = clause.get('color') or _COLOR_NAMES[rng.integers(len(_COLOR_NAMES))]
            objects.append((clause['class'], color, row, col))
        placed.append(sorted(objects, key=lambda o: (o[2], o[3])))
    return [o for objects in placed for o in objects]


def sample_layout(metadata: dict, rng: np.random.Generator) -> world.Layout:
    """A random layout that draws exactly the objects the prompt asks for.

    Colours the prompt leaves free are uniform; cells are uniform among those left free and, for
    a positioned clause, at its relation to every object already placed for its target clause.
    Objects come in include-clause order, each clause's objects in raster (row, col) order;
    this is the order ``plan.plan_text`` writes them in.
    """
    for _ in range(MAX_PLACEMENT_TRIES):
        layout = _place(metadata, rng)
        if layout is not None:
            return layout
    raise ValueError(f'no placement of {metadata["prompt"]!r} on the {world.GRID} x {world.GRID} '
                     f'grid found in {MAX_PLACEMENT_TRIES} tries; check its counts and relations')


def validation_prompts() -> list[dict]:
    """The shipped validation set: ``VALIDATION_PER_TAG`` training prompts per tag."""
    return eval_prompts(VALIDATION_SEED, VALIDATION_PER_TAG, pool_of=train_prompts)


if __name__ == '__main__':
    # Writes a shipped prompt set: python -m unigrpo_jax.shapes.prompts eval|validation <path>
    chosen = {'eval': lambda: eval_prompts(EVAL_SEED, EVAL_PER_TAG),
              'validation': validation_prompts}[sys.argv[1]]()
    with open(sys.argv[2], 'w') as f:
        for metadata in chosen:
            f.write(json.dumps(metadata) + '\n')
