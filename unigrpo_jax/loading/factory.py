"""Builds the model a config asks for: a converted/release checkpoint, or a random tiny Bagel."""

from __future__ import annotations

import os

import flax.linen as nn
import jax
import numpy as np

from unigrpo_jax.loading import orbax_io
from unigrpo_jax.loading.bagel import load_bagel
from unigrpo_jax.model import attention, autoencoder, bagel
from unigrpo_jax.model.config import BagelConfig, SpecialTokens, config_from_dict
from unigrpo_jax.errors import ConfigError
from unigrpo_jax.parallel import sharding


def build_model(model_cfg, seed: int = 0, tokens: SpecialTokens | None = None,
                with_params: bool = True, shardings=None
                ) -> tuple[BagelConfig, dict | None, dict]:
    """``(config, params, ae_params)`` from a config's ``model`` section.

    ``model.checkpoint``: a directory written by ``launch/convert_bagel.py`` (Orbax) or a Bagel
    release directory (safetensors). Otherwise ``model.random`` (sizes, see
    ``config_from_dict``) gives random float32 params from ``seed``. ``tokens`` (from the
    tokenizer) replace a random model's special ids and must equal a checkpoint's.
    ``with_params=False`` skips reading (or drawing) the Bagel params (``params`` is then
    ``None``): for a run that brings its own, or that first needs the config to place them.
    ``shardings`` (a tree of ``Sharding`` shaped like the params) places the params as global
    arrays: each process reads (draws) only the shards its own devices hold, so a mesh may
    span processes and no host holds the whole model. ``None``: host (numpy) or
    single-device arrays.
    """
    dtype = model_cfg.dtype
    # Runs saved before ``model.attention`` existed used the parity path.
    attention_kernel = attention.kernel_for(model_cfg.get('attention', 'xla'),
                                            jax.default_backend(), dtype)
    if model_cfg.checkpoint:
        path = model_cfg.checkpoint
        if not os.path.isdir(path):
            raise ConfigError(f'model.checkpoint={path!r} is not a directory')
        if orbax_io.is_converted(path):
            config, params, ae_params = orbax_io.load_params(path, bagel=with_params,
                                                             shardings=shardings)
        else:  # the release's safetensors are read whole on every host: convert them first
            config, params, ae_params = load_bagel(path, tokens=tokens, dtype=np.float32,
                                                   model_dtype=dtype)
            if shardings is not None:
                params = jax.tree.map(sharding.host_to_global, params, shardings)
        config = config.replace(dtype=dtype, attention=attention_kernel)
        if tokens is not None and tokens != config.tokens:
            raise ConfigError(f'the tokenizer\'s special ids {tokens} differ from the '
                              f'checkpoint\'s {config.tokens} ({path})')
        return config, params, ae_params
    if model_cfg.random is None:
        raise ConfigError('model.checkpoint is empty and model.random gives no sizes: set '
                          '--config.model.checkpoint=DIR (a converted Bagel checkpoint)')
    config = config_from_dict(model_cfg.random.to_dict(), dtype=dtype).replace(
        attention=attention_kernel)
    if tokens is not None:
        config = config.replace(tokens=tokens)
    key_model, key_ae = jax.random.split(jax.random.key(seed))
    params = (jax.jit(lambda k: nn.unbox(bagel.init_params(config, k)),
                      out_shardings=shardings)(key_model) if with_params else None)
    return config, params, jax.jit(lambda k: autoencoder.init_params(config.ae, k))(key_ae)
