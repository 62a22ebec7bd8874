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
