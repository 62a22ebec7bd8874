"""The ShapesEval reward ``shapes``: detector + FlowGRPO's partial credit (algorithm.md §10).

Registered under ``'shapes'`` (``rewards.registry`` finds it by its place,
``unigrpo_jax.<package>.reward``): ``reward.name='shapes'`` in a config.
"""

from __future__ import annotations

import numpy as np

from unigrpo_jax.rewards import geneval
from unigrpo_jax.rewards.registry import register
from unigrpo_jax.shapes import detector, world


def named_objects(metadata: dict) -> int:
    """The objects a prompt names: the sum of its include clauses' counts."""
    return sum(c['count'] for c in metadata['include'])


def shapes_scores(images: np.ndarray, metadata: list[dict], *, strict: bool = False,
                  exact_scene: bool = False) -> np.ndarray:
    """``[B]`` float32: partial credit (or strict 0/1) of each rendered ``[B, 32, 32, 3]`` image;
    with ``exact_scene`` 0 for an image holding more or fewer objects than the prompt names
    (GenEval's rules accept any extra object outside counting prompts, so a canvas filled with
    every shape in every colour passes most of them: a hack a fast learner finds)."""
    score = geneval.strict_correct if strict else geneval.partial_credit
    out = []
    for im, m in zip(np.asarray(images), metadata):
        found = detector.detect(im)
        value = float(score(found, m, threshold=world.RELATION_THRESHOLD_PX))
        out.append(value if not exact_scene or len(found) == named_objects(m) else 0.0)
    return np.array(out, np.float32)


@register('shapes', metadata_problem=geneval.metadata_problem)
def make_shapes_reward(options):
    """Options: ``strict`` (bool, default False: partial credit), ``exact_scene`` (bool,
    default False: extra objects are not penalised, as in GenEval)."""
    options = dict(options or {})
    strict = bool(options.pop('strict', False))
    exact_scene = bool(options.pop('exact_scene', False))
    if options:
        raise ValueError(f'unknown options {sorted(options)} for reward "shapes" (has: strict, '
                         'exact_scene)')
    return lambda images, metadata: shapes_scores(images, metadata, strict=strict,
                                                  exact_scene=exact_scene)


def color_fraction(images: np.ndarray, color: str, sign: float = 1.0) -> np.ndarray:
    """``[B]`` float32: ``sign`` x the fraction of each ``[B, H, W, 3]`` image's pixels within
    ``detector.MAX_COLOR_DISTANCE`` of ``world.COLORS[color]``."""
    rgb = np.asarray(world.COLORS[color], np.float32)
    distance = np.linalg.norm(np.asarray(images, np.float32) - rgb, axis=-1)
    return (sign * (distance < detector.MAX_COLOR_DISTANCE).mean(axis=(1, 2))).astype(np.float32)


@register('color_fraction')
def make_color_fraction_reward(options):
    """A reward whose optimum is obvious (the learning check, ``shapes.learning_check``): the
    fraction of the canvas in one colour. Options: ``color`` (a ``world.COLORS`` name, default
    'red'), ``sign`` (1, or -1: the same reward negated, so GRPO's advantages flip sign)."""
    options = dict(options or {})
    color, sign = options.pop('color', 'red'), float(options.pop('sign', 1.0))
    if options or color not in world.COLORS or sign not in (1.0, -1.0):
        raise ValueError(f'reward "color_fraction" takes color (one of {tuple(world.COLORS)}) '
                         f'and sign (1 or -1); got {dict(options, color=color, sign=sign)}')
    return lambda images, metadata: color_fraction(images, color, sign)
