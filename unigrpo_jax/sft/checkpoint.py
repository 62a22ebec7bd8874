"""Params-only checkpoints of the ShapesEval model: ``orbax_io.save_params`` plus the tokenizer.

A directory written by ``save`` holds what ``convert.orbax_io.save_params`` writes (the json
configs and ``checkpoint/``), with ``ae_config.json`` carrying the autoencoder ``kind``, and
``tokenizer/`` (the ShapesEval tokenizer, loadable with ``convert.tokenizer.load_tokenizer``).

``load`` reads it back. ``orbax_io.load_params`` cannot restore the identity autoencoder's empty
param tree yet (its restore args lack the empty ``ae`` subtree), so for ``kind='identity'`` the
Bagel params are restored here, checked against the config's abstract params the same way.
"""

from __future__ import annotations

import os
import shutil


from unigrpo_jax.convert import orbax_io
from unigrpo_jax.model.config import BagelConfig

TOKENIZER_DIR = 'tokenizer'


def save(directory: str, config: BagelConfig, params, tokenizer_dir: str | None = None, *,
         overwrite: bool = True) -> None:
    """Writes ``params`` (the identity autoencoder has none), the configs and the tokenizer."""
    orbax_io.save_params(directory, config, params, {}, overwrite=overwrite)
    if tokenizer_dir is not None:
        target = os.path.join(directory, TOKENIZER_DIR)
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(tokenizer_dir, target)


def load(directory: str) -> tuple[BagelConfig, dict, dict]:
    """``(config, params, ae_params)`` of a directory written by ``save`` (host numpy)."""
    return orbax_io.load_params(directory)


def tokenizer_dir(directory: str) -> str:
    """The tokenizer saved next to a checkpoint."""
    return os.path.join(directory, TOKENIZER_DIR)
