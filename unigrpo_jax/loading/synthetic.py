"""Synthetic Bagel checkpoint directories (random weights, real layout) for benchmarks and tests.

``write_release`` writes the json configs, ``ema.safetensors`` and ``ae.safetensors`` of any
``BagelConfig`` (``bagel_7b`` gives the release shapes of ``shared/docs/bagel.md`` §1-2). The
checkpoint keys and shapes are derived from the converter's rule tables; the tensors are
streamed to disk one chunk at a time (``write_safetensors``), so writing a 30 GB checkpoint
needs tens of MB of memory. The fixed sin-cos tables hold their true values (the converter
checks them); every other tensor holds random normal values times 0.02.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Iterator

import flax.linen as nn
import ml_dtypes
import numpy as np

from unigrpo_jax.loading.ae_table import AE_RULES
from unigrpo_jax.loading.bagel import AE_FILE, model_rules
from unigrpo_jax.loading.bagel_table import FIXED_TABLES
from unigrpo_jax.loading.checkpoint import flatten, key_for
from unigrpo_jax.loading.orbax_io import write_config_files
from unigrpo_jax.loading.rules import source_shape
from unigrpo_jax.model import autoencoder, bagel, posembed
from unigrpo_jax.model.config import (AEConfig, BagelConfig, LLMConfig, SpecialTokens,
                                      ViTConfig)

Spec = tuple[str, tuple[int, ...], np.dtype]  # checkpoint key, shape, dtype

_SAFETENSORS_DTYPES = {np.dtype(ml_dtypes.bfloat16): 'BF16', np.dtype(np.float16): 'F16',
                       np.dtype(np.float32): 'F32', np.dtype(np.float64): 'F64'}
_CHUNK_BYTES = 64 << 20


def bagel_7b(layers: int = 28) -> BagelConfig:
    """BAGEL-7B-MoT (Qwen2.5-7B MoT LLM, SigLIP so400m-14-980, FLUX VAE) with ``layers``."""
    llm = LLMConfig(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                    num_hidden_layers=layers, num_attention_heads=28, num_key_value_heads=4,
                    rope_theta=1e6, rms_norm_eps=1e-6)
    vit = ViTConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26,
                    num_attention_heads=16, patch_size=14, image_size=980)
    tokens = SpecialTokens(bos=151644, eos=151645, start_of_image=151652, end_of_image=151653)
    return BagelConfig(llm=llm, vit=vit, ae=AEConfig(), tokens=tokens, latent_patch_size=2,
                       max_latent_size=64, vit_max_num_patch_per_side=70)


def bagel_tiny(layers: int = 2) -> BagelConfig:
    """The shapes of ``tests/fixtures/bagel_tiny`` with ``layers`` LLM layers."""
    llm = LLMConfig(vocab_size=512, hidden_size=64, intermediate_size=128,
                    num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                    rope_theta=1e4)
    vit = ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=2, patch_size=4, image_size=32)
    ae = AEConfig(ch=32, ch_mult=(1, 2, 1, 1), num_res_blocks=1)
    tokens = SpecialTokens(bos=500, eos=501, start_of_image=504, end_of_image=505)
    return BagelConfig(llm=llm, vit=vit, ae=ae, tokens=tokens, max_latent_size=8,
                       vit_max_num_patch_per_side=8)


def _rule_specs(rules, abstract, dtype) -> list[Spec]:
    specs = []
    for path, leaf in flatten(abstract).items():
        shape = tuple(leaf.shape)
        try:
            rule, key = key_for(rules, path)
            specs.append((key, source_shape(rule, shape), dtype))
        except ValueError:  # a layer-stacked param: one key per layer
            for i in range(shape[0]):
                rule, key = key_for(rules, path, i)
                specs.append((key, source_shape(rule, shape[1:]), dtype))
    return sorted(specs)


def model_specs(config: BagelConfig, dtype=ml_dtypes.bfloat16) -> list[Spec]:
    """Keys, shapes and dtypes of the model file (``ema.safetensors``), fixed tables included."""
    dtype = np.dtype(dtype)
    specs = _rule_specs(model_rules(config), nn.unbox(bagel.abstract_params(config)), dtype)
    for key, side_field in FIXED_TABLES.items():
        if key.startswith('vit_') and config.vit is None:
            continue
        specs.append((key, (getattr(config, side_field) ** 2, config.llm.hidden_size), dtype))
    return sorted(specs)


def ae_specs(config: BagelConfig, dtype=np.float32) -> list[Spec]:
    """Keys, shapes and dtypes of ``ae.safetensors``."""
    return _rule_specs(AE_RULES, autoencoder.abstract_params(config.ae), np.dtype(dtype))


def nbytes(specs: Iterable[Spec]) -> int:
    return sum(math.prod(shape) * dtype.itemsize for _, shape, dtype in specs)


def write_safetensors(path: str, specs: list[Spec],
                      chunks: Callable[[str, tuple[int, ...], np.dtype], Iterator[np.ndarray]]
                      ) -> None:
    """Writes a ``.safetensors`` file tensor by tensor, chunk by chunk.

    The format: an 8-byte little-endian header length, a JSON header ``{key: {dtype, shape,
    data_offsets: [begin, end]}}`` (offsets relative to the end of the header, which is padded
    with spaces to a multiple of 8 bytes), then the raw little-endian tensor bytes.

    Args:
      chunks: ``(key, shape, dtype) ->`` arrays whose bytes, concatenated, are the tensor.
    """
    header, offset = {}, 0
    for key, shape, dtype in specs:
        size = math.prod(shape) * dtype.itemsize
        header[key] = dict(dtype=_SAFETENSORS_DTYPES[dtype], shape=list(shape),
                           data_offsets=[offset, offset + size])
        offset += size
    header['__metadata__'] = {'format': 'pt'}
    blob = json.dumps(header, separators=(',', ':')).encode()
    blob += b' ' * (-len(blob) % 8)
    with open(path, 'wb') as f:
        f.write(len(blob).to_bytes(8, 'little'))
        f.write(blob)
        for key, shape, dtype in specs:
            written = 0
            for chunk in chunks(key, shape, dtype):
                chunk = np.ascontiguousarray(chunk, dtype.newbyteorder('<'))
                f.write(chunk.tobytes())
                written += chunk.nbytes
            want = header[key]['data_offsets'][1] - header[key]['data_offsets'][0]
            if written != want:
                raise ValueError(f'tensor {key!r}: wrote {written} bytes, expected {want}')


class RandomChunks:
    """Random normal * 0.02 tensors in chunks: windows at random offsets of a fixed pool."""

    def __init__(self, seed: int = 0, pool_elements: int = 1 << 24):
        self._rng = np.random.default_rng(seed)
        self._base = (self._rng.standard_normal(pool_elements, np.float32) * 0.02)
        self._pools: dict[np.dtype, np.ndarray] = {}

    def __call__(self, key: str, shape: tuple[int, ...], dtype: np.dtype) -> Iterator[np.ndarray]:
        pool = self._pools.setdefault(dtype, self._base.astype(dtype))
        total = math.prod(shape)
        step = max(1, min(len(pool) // 2, _CHUNK_BYTES // dtype.itemsize))
        for start in range(0, total, step):
            n = min(step, total - start)
            offset = int(self._rng.integers(0, len(pool) - n + 1))
            yield pool[offset:offset + n]


def _fixed_table_chunks(config: BagelConfig, random: RandomChunks):
    def chunks(key, shape, dtype):
        if key in FIXED_TABLES:
            yield posembed.sincos_2d_table(getattr(config, FIXED_TABLES[key]),
                                           config.llm.hidden_size).astype(dtype)
        else:
            yield from random(key, shape, dtype)
    return chunks


def write_release(directory: str, config: BagelConfig, *, dtype=ml_dtypes.bfloat16,
                  ae_dtype=np.float32, seed: int = 0) -> dict[str, int]:
    """Writes a Bagel checkpoint directory for ``config`` with random weights.

    The model file is ``ema.safetensors`` in ``dtype`` (the release: bf16), the autoencoder
    ``ae.safetensors`` in ``ae_dtype`` (the release: float32); the json configs are those of
    ``orbax_io.write_config_files`` (with ``config.json``'s ``new_token_ids``).

    Returns:
      bytes: ``model`` (params only, no fixed tables), ``fixed_tables``, ``ae``.
    """
    os.makedirs(directory, exist_ok=True)
    write_config_files(config, directory)
    model = model_specs(config, dtype)
    ae = ae_specs(config, ae_dtype)
    largest = max(math.prod(shape) for _, shape, _ in model + ae)
    random = RandomChunks(seed, pool_elements=min(1 << 24, 2 * largest))
    write_safetensors(os.path.join(directory, 'ema.safetensors'), model,
                      _fixed_table_chunks(config, random))
    write_safetensors(os.path.join(directory, AE_FILE), ae, random)
    tables = [s for s in model if s[0] in FIXED_TABLES]
    return dict(model=nbytes(model) - nbytes(tables), fixed_tables=nbytes(tables),
                ae=nbytes(ae))
