"""Bagel checkpoint directory <-> (config, Bagel params, autoencoder params).

A directory in the release layout holds ``ema.safetensors`` (or ``model.safetensors``),
``ae.safetensors``, ``llm_config.json``, ``vit_config.json`` and the Qwen2 tokenizer files (the
fixtures add ``config.json`` and ``ae_config.json``). ``load_bagel`` validates everything
before reading tensors and fails with one message listing every problem; ``export_bagel``
writes the same layout back (round trip bit-exact).
"""

from __future__ import annotations

import json
import os
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from safetensors.numpy import save_file

from unigrpo_jax.loading.ae_table import AE_RULES
from unigrpo_jax.loading.bagel_table import FIXED_TABLES, HEAD_RULES, LLM_RULES
from unigrpo_jax.loading.checkpoint import (CheckpointError, SafetensorsSource, convert, export,
                                            flatten)
from unigrpo_jax.loading.vit_table import VIT_RULES
from unigrpo_jax.model import autoencoder, bagel, posembed
from unigrpo_jax.model.config import BagelConfig, SpecialTokens, load_config

MODEL_FILES = ('ema.safetensors', 'model.safetensors')
AE_FILE = 'ae.safetensors'
# Largest |stored - recomputed| accepted for the fixed sin-cos tables (float32 rounding, or
# bf16 rounding of values in [-1, 1] when the release stores them in bf16).
_FIXED_TABLE_ATOL = 1e-2


def model_rules(config: BagelConfig):
    return LLM_RULES + HEAD_RULES + (VIT_RULES if config.vit is not None else [])


def model_file(directory: str) -> str:
    for name in MODEL_FILES:
        path = os.path.join(directory, name)
        if os.path.exists(path):
            return path
    raise CheckpointError(f'{directory} has no model weights: expected one of {MODEL_FILES}')


def _axis_fields(config: BagelConfig) -> dict[str, str]:
    """Logical axis name -> the config fields that set its size (for error messages)."""
    llm, vit = config.llm, config.vit
    fields = {
        'vocab': f'llm vocab_size={llm.vocab_size}',
        'embed': f'llm hidden_size={llm.hidden_size}',
        'mlp': f'llm intermediate_size={llm.intermediate_size}',
        'heads': f'llm num_attention_heads={llm.num_attention_heads}',
        'kv_heads': f'llm num_key_value_heads={llm.num_key_value_heads}',
        'kv': f'llm head_dim=hidden_size/num_attention_heads={llm.head_dim}',
        'layers': f'llm num_hidden_layers={llm.num_hidden_layers}',
        'latent': (f'latent_patch_size={config.latent_patch_size}^2 x '
                   f'z_channels={config.ae.z_channels}'),
        'time_freq': f'frequency_embedding_size={config.frequency_embedding_size}',
    }
    if vit is not None:
        fields['vit'] = (f'vit hidden_size={vit.hidden_size}, intermediate_size='
                         f'{vit.intermediate_size}, num_hidden_layers={vit.num_hidden_layers} '
                         f'(json - 1), num_attention_heads={vit.num_attention_heads}, patch_size='
                         f'{vit.patch_size}, vit_max_num_patch_per_side='
                         f'{config.vit_max_num_patch_per_side}')
    return fields


def _describer(config: BagelConfig, boxed: Any):
    """param path -> 'for <config fields>' naming what sets the param's expected shape."""
    specs = flatten(nn.get_partition_spec(boxed))
    fields = _axis_fields(config)

    def describe(path: str) -> str:
        if path.startswith(('vit/', 'connector/')):
            return f'for {fields.get("vit", "a model without a ViT")}'
        names = [n for n in (specs.get(path) or ()) if n in fields]
        names = list(dict.fromkeys(names))
        return f'for {", ".join(fields[n] for n in names)}' if names else ''
    return describe


def _check_fixed_tables(source: SafetensorsSource, config: BagelConfig) -> None:
    for key, side_field in FIXED_TABLES.items():
        if key.startswith('vit_') and config.vit is None:
            continue
        side, dim = getattr(config, side_field), config.llm.hidden_size
        if key not in source.keys():
            raise CheckpointError(f'missing key {key!r} (fixed sin-cos table)')
        want = (side * side, dim)
        if source.shape(key) != want:
            raise CheckpointError(f'checkpoint key {key!r} has shape {source.shape(key)}, '
                                  f'expected {want} for {side_field}={side}, llm hidden_size={dim}')
        err = np.abs(source.read(key).astype(np.float32) - posembed.sincos_2d_table(side, dim))
        if err.max() > _FIXED_TABLE_ATOL:
            raise CheckpointError(f'checkpoint key {key!r} is not the fixed 2-D sin-cos table of '
                                  f'side {side_field}={side} (max |diff| {err.max():.3g})')


def check_release(directory: str) -> None:
    """Raises ``CheckpointError`` in one line when ``directory`` is not a Bagel checkpoint
    directory (the release layout: ``llm_config.json``, the model weights (one of
    ``MODEL_FILES``) and ``ae.safetensors``), naming what is missing."""
    if not os.path.isdir(directory):
        raise CheckpointError(f'{directory} is not a directory (expected a Bagel release: '
                              'llm_config.json, ema.safetensors, ae.safetensors)')
    missing = [f for f in ('llm_config.json', AE_FILE)
               if not os.path.exists(os.path.join(directory, f))]
    if not any(os.path.exists(os.path.join(directory, f)) for f in MODEL_FILES):
        missing.append(' or '.join(MODEL_FILES))
    if missing:
        raise CheckpointError(f'{directory} is not a Bagel release directory: it has no '
                              f'{", ".join(missing)} (download ByteDance-Seed/BAGEL-7B-MoT to a '
                              'local directory and pass that)')


def load_bagel(directory: str, *, tokens: SpecialTokens | None = None, dtype: Any = None,
               model_dtype: str = 'float32') -> tuple[BagelConfig, dict, dict]:
    """Reads a Bagel checkpoint directory.

    Args:
      tokens: special token ids (default: ``config.json``'s ``new_token_ids``; for the release
        folder pass ``tokenizer.load_tokenizer(directory)[1]``).
      dtype: cast every tensor to this dtype (default: keep the checkpoint's, bf16 stays bf16).
      model_dtype: the compute dtype recorded in the returned config.
    Returns:
      ``(config, params, ae_params)``: plain nested dicts of numpy arrays.
    Raises:
      ConfigError / CheckpointError with every problem found, before any tensor is converted.
    """
    check_release(directory)
    config = load_config(directory, tokens=tokens, dtype=model_dtype)
    source = SafetensorsSource([model_file(directory)])
    _check_fixed_tables(source, config)
    boxed = bagel.abstract_params(config)
    keys = [k for k in source.keys() if k not in FIXED_TABLES]
    params = convert(model_rules(config), source, nn.unbox(boxed), keys=keys, dtype=dtype,
                     describe=_describer(config, boxed))
    ae_params = convert(AE_RULES, SafetensorsSource([os.path.join(directory, AE_FILE)]),
                        autoencoder.abstract_params(config.ae), dtype=dtype,
                        describe=lambda path: f'for the autoencoder config {config.ae}')
    return config, params, ae_params


def config_files(config: BagelConfig) -> dict[str, dict]:
    """The json config files of a checkpoint directory for ``config``."""
    llm, vit, ae = config.llm, config.vit, config.ae
    files = {
        'llm_config.json': dict(
            model_type='qwen2', architectures=['Qwen2ForCausalLM'], hidden_act='silu',
            tie_word_embeddings=False, rope_scaling=None, vocab_size=llm.vocab_size,
            hidden_size=llm.hidden_size, intermediate_size=llm.intermediate_size,
            num_hidden_layers=llm.num_hidden_layers,
            num_attention_heads=llm.num_attention_heads,
            num_key_value_heads=llm.num_key_value_heads, rope_theta=llm.rope_theta,
            rms_norm_eps=llm.rms_norm_eps),
        'config.json': dict(
            latent_patch_size=config.latent_patch_size, max_latent_size=config.max_latent_size,
            vit_max_num_patch_per_side=config.vit_max_num_patch_per_side,
            connector_act='gelu_pytorch_tanh', interpolate_pos=False,
            timestep_shift=config.timestep_shift, latent_channels=ae.z_channels,
            frequency_embedding_size=config.frequency_embedding_size,
            new_token_ids=dict(bos_token_id=config.tokens.bos, eos_token_id=config.tokens.eos,
                               start_of_image=config.tokens.start_of_image,
                               end_of_image=config.tokens.end_of_image)),
        'ae_config.json': dict(
            kind=ae.kind, resolution=ae.resolution, in_channels=ae.in_channels, downsample=ae.downsample,
            ch=ae.ch, out_ch=ae.out_ch, ch_mult=list(ae.ch_mult),
            num_res_blocks=ae.num_res_blocks, z_channels=ae.z_channels,
            scale_factor=ae.scale_factor, shift_factor=ae.shift_factor,
            groupnorm_groups=ae.groupnorm_groups, groupnorm_eps=ae.groupnorm_eps),
    }
    if vit is not None:
        files['vit_config.json'] = dict(
            model_type='siglip_vision_model', hidden_size=vit.hidden_size,
            intermediate_size=vit.intermediate_size,
            num_hidden_layers=vit.num_hidden_layers + 1,  # Bagel's loader drops one
            num_attention_heads=vit.num_attention_heads, num_channels=vit.num_channels,
            patch_size=vit.patch_size, image_size=vit.image_size, hidden_act='gelu_pytorch_tanh',
            layer_norm_eps=vit.layer_norm_eps)
    return files


def export_bagel(config: BagelConfig, params: dict, ae_params: dict, directory: str, *,
                 model_name: str = 'ema.safetensors') -> None:
    """Writes params back as a Bagel checkpoint directory PyTorch's loader accepts.

    The fixed sin-cos tables are written in the dtype of ``lm_head``.
    """
    os.makedirs(directory, exist_ok=True)
    params, ae_params = jax.device_get((params, ae_params))
    tensors = export(model_rules(config), params)
    dtype = tensors['language_model.lm_head.weight'].dtype
    for key, side_field in FIXED_TABLES.items():
        if key.startswith('vit_') and config.vit is None:
            continue
        side = getattr(config, side_field)
        tensors[key] = posembed.sincos_2d_table(side, config.llm.hidden_size).astype(dtype)
    save_file(tensors, os.path.join(directory, model_name))
    save_file(export(AE_RULES, ae_params), os.path.join(directory, AE_FILE))
    for name, content in config_files(config).items():
        with open(os.path.join(directory, name), 'w') as f:
            json.dump(content, f, indent=1)
