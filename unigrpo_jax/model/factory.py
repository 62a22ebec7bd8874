"""Builds the model a config asks for: a converted/release checkpoint, or a random tiny Bagel."""

from __future__ import annotations

import os

import flax.linen as nn
import jax
import numpy as np

from unigrpo_jax.model import autoencoder, bagel
from unigrpo_jax.model.config import BagelConfig, ConfigError, config_from_dict


def build_model(model_cfg, seed: int = 0) -> tuple[BagelConfig, dict, dict]:
    """``(config, params, ae_params)`` from a config's ``model`` section.

    ``model.checkpoint``: a directory written by ``launch/convert_bagel.py`` (Orbax) or a Bagel
    release directory (safetensors). Otherwise ``model.random`` (sizes, see
    ``config_from_dict``) gives random float32 params from ``seed``.
    """
    dtype = model_cfg.dtype
    if model_cfg.checkpoint:
        path = model_cfg.checkpoint
        if not os.path.isdir(path):
            raise ConfigError(f'model.checkpoint={path!r} is not a directory')
        from unigrpo_jax.convert import orbax_io  # pylint: disable=g-import-not-at-top
        if orbax_io.is_converted(path):
            config, params, ae_params = orbax_io.load_params(path)
            return config.replace(dtype=dtype), params, ae_params
        from unigrpo_jax.convert.bagel import load_bagel  # pylint: disable=g-import-not-at-top
        return load_bagel(path, dtype=np.float32, model_dtype=dtype)
    if model_cfg.random is None:
        raise ConfigError('model.checkpoint is empty and model.random gives no sizes: set '
                          '--config.model.checkpoint=DIR (a converted Bagel checkpoint)')
    config = config_from_dict(model_cfg.random.to_dict(), dtype=dtype)
    key_model, key_ae = jax.random.split(jax.random.key(seed))
    params = nn.unbox(bagel.init_params(config, key_model))
    return config, params, autoencoder.init_params(config.ae, key_ae)
