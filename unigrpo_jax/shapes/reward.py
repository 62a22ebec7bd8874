"""The ShapesEval reward ``shapes``: detector + FlowGRPO's partial credit (algorithm.md §10).

Registered under ``'shapes'`` (``rewards.registry`` finds it by its place,
``unigrpo_jax.<package>.reward``): ``reward.name='shapes'`` in a config.
"""

from __future__ import annotations

import numpy as np

from unigrpo_jax.rewards import geneval
from unigrpo_jax.rewards.registry import register
from unigrpo_jax.shapes import detector, world


def shapes_scores(images: np.ndarray, metadata: list[dict], *, strict: bool = False) -> np.ndarray:
    """``[B]`` float32: partial credit (or strict 0/1) of each rendered ``[B, 32, 32, 3]`` image."""
    score = geneval.strict_correct if strict else geneval.partial_credit
    return np.array([float(score(detector.detect(im), m, threshold=world.RELATION_THRESHOLD_PX))
                     for im, m in zip(np.asarray(images), metadata)], np.float32)


@register('shapes', metadata_problem=geneval.metadata_problem)
def make_shapes_reward(options):
    """Options: ``strict`` (bool, default False: partial credit)."""
    options = dict(options or {})
    strict = bool(options.pop('strict', False))
    if options:
        raise ValueError(f'unknown options {sorted(options)} for reward "shapes" (has: strict)')
    return lambda images, metadata: shapes_scores(images, metadata, strict=strict)


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
