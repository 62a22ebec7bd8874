"""ShapesEval's prompt sources for RL runs (``config.data.train`` / ``eval``):

- ``shapes_train``: ``TRAIN_SIZE`` training prompts (held-out combinations excluded), seeded;
- ``shapes_eval``: the fixed evaluation prompts, ``EVAL_FILE``.
"""

from __future__ import annotations

import os

import numpy as np

from unigrpo_jax import config_files
from unigrpo_jax.data import prompts as data_lib
from unigrpo_jax.shapes import prompts

EVAL_FILE = os.path.join(config_files.ROOT, 'data', 'shapes_eval', 'eval_prompts.jsonl')
TRAIN_SIZE = 20000


@data_lib.register_source('shapes_train')
def train_prompts() -> list[dict]:
    """``TRAIN_SIZE`` prompts of ``prompts.sample_prompt`` (a uniform tag, then a uniform
    training prompt of it) from a fixed seed."""
    rng = np.random.default_rng(0)
    return [prompts.sample_prompt(rng) for _ in range(TRAIN_SIZE)]


@data_lib.register_source('shapes_eval')
def eval_prompts() -> list[dict]:
    """The evaluation prompts of ``EVAL_FILE``, in file order."""
    return data_lib.read_jsonl(EVAL_FILE)
