"""Whole-directory conversions behind ``launch/convert_bagel.py``.

``convert_release``: a Bagel release directory (safetensors + json configs + Qwen2 tokenizer)
-> an Orbax directory (``orbax_io`` layout) with the tokenizer, Bagel's special tokens added, in
``tokenizer/``. ``export_release``: the inverse, back to the release layout.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_dtypes
import numpy as np

from unigrpo_jax.loading import orbax_io
from unigrpo_jax.loading.bagel import export_bagel, load_bagel
from unigrpo_jax.loading.checkpoint import CheckpointError
from unigrpo_jax.loading.tokenizer import has_tokenizer, load_tokenizer
from unigrpo_jax.model.config import BagelConfig, SpecialTokens, special_tokens_from_ids

DTYPES = {'keep': None, 'float32': np.float32, 'bfloat16': ml_dtypes.bfloat16}
TOKENIZER_DIR = 'tokenizer'


@dataclasses.dataclass(frozen=True)
class Summary:
    """What a conversion produced."""

    config: BagelConfig
    num_params: int  # Bagel + autoencoder
    num_bytes: int  # of the converted params
    dtypes: tuple[str, ...]
    seconds_load: float
    seconds_save: float


def tree_size(*trees: Any) -> tuple[int, int]:
    """``(elements, bytes)`` of the leaves of ``trees``."""
    leaves = jax.tree.leaves(trees)
    return sum(int(np.size(x)) for x in leaves), sum(int(x.nbytes) for x in leaves)


def _config_json_tokens(directory: str) -> SpecialTokens | None:
    path = os.path.join(directory, 'config.json')
    if not os.path.exists(path):
        return None
    with open(path) as f:
        ids = json.load(f).get('new_token_ids')
    return special_tokens_from_ids(ids) if ids else None


def convert_release(src: str, dst: str, *, dtype: Any = None, overwrite: bool = False,
                    log: Callable[[str], None] = print) -> Summary:
    """Converts the Bagel checkpoint directory ``src`` into the Orbax directory ``dst``.

    Special token ids come from the tokenizer in ``src`` when it has one (the release), else
    from ``config.json``'s ``new_token_ids`` (the fixtures).

    Args:
      dtype: cast every tensor to this dtype (default: keep the checkpoint's).
      overwrite: replace an existing checkpoint in ``dst``.
    """
    tokenizer, tokens = None, None
    if has_tokenizer(src):
        tokenizer, tokens, num_new = load_tokenizer(src)
        log(f'tokenizer: {len(tokenizer)} tokens ({num_new} added), Bagel special ids {tokens}')
        stored = _config_json_tokens(src)
        if stored is not None and stored != tokens:
            raise CheckpointError(f'{src}/config.json new_token_ids {stored} differ from the '
                                  f'tokenizer ids {tokens}')
    else:
        log(f'no tokenizer in {src}: special token ids from config.json')
    start = time.perf_counter()
    config, params, ae_params = load_bagel(src, tokens=tokens, dtype=dtype)
    seconds_load = time.perf_counter() - start
    ids = dataclasses.astuple(config.tokens)
    if max(ids) >= config.llm.vocab_size:
        raise CheckpointError(f'special token ids {config.tokens} do not fit the embedding: llm '
                              f'vocab_size={config.llm.vocab_size}')
    num_params, num_bytes = tree_size(params, ae_params)
    dtypes = tuple(sorted({str(x.dtype) for x in jax.tree.leaves((params, ae_params))}))
    log(f'loaded {num_params / 1e9:.3f} B params ({num_bytes / 2**30:.2f} GiB, {dtypes}) '
        f'from {src} in {seconds_load:.1f} s; llm layers={config.llm.num_hidden_layers}, '
        f'vit={"yes" if config.vit else "no"}')
    start = time.perf_counter()
    orbax_io.save_params(dst, config, params, ae_params, overwrite=overwrite)
    seconds_save = time.perf_counter() - start
    log(f'saved the Orbax checkpoint {os.path.join(dst, orbax_io.CHECKPOINT_DIR)} in '
        f'{seconds_save:.1f} s')
    if tokenizer is not None:
        tokenizer.save_pretrained(os.path.join(dst, TOKENIZER_DIR))
        log(f'saved the tokenizer to {os.path.join(dst, TOKENIZER_DIR)}')
    return Summary(config, num_params, num_bytes, dtypes, seconds_load, seconds_save)


def export_release(src: str, dst: str, *, model_name: str = 'ema.safetensors',
                   log: Callable[[str], None] = print) -> BagelConfig:
    """Writes the Orbax directory ``src`` back as a Bagel release directory ``dst``.

    The tokenizer in ``src/tokenizer`` (if any) is copied to the top of ``dst``, where the
    release keeps it.
    """
    start = time.perf_counter()
    config, params, ae_params = orbax_io.load_params(src)
    log(f'loaded {src} in {time.perf_counter() - start:.1f} s')
    start = time.perf_counter()
    export_bagel(config, params, ae_params, dst, model_name=model_name)
    log(f'wrote {os.path.join(dst, model_name)} and ae.safetensors in '
        f'{time.perf_counter() - start:.1f} s')
    tokenizer_dir = os.path.join(src, TOKENIZER_DIR)
    if os.path.isdir(tokenizer_dir):
        for name in sorted(os.listdir(tokenizer_dir)):
            shutil.copy2(os.path.join(tokenizer_dir, name), os.path.join(dst, name))
        log(f'copied the tokenizer from {tokenizer_dir}')
    return config
