"""Analytic costs of Bagel's rollout (params, bytes, FLOPs), device peaks and timing helpers.

The counts follow the model as ``unigrpo_jax.model`` implements it (bagel.md §2-3):

* a think-token decode step runs the und expert only: every und layer weight, the final und
  norm, ``lm_head`` and one embedding row per chain are read once per step, plus each chain's
  KV cache rows (keys and values of every layer);
* a denoising step (``context.image_velocity``) runs the image block ``[soi, eoi] + N latents``
  (markers on the und expert, latents on the gen expert; both experts have the same sizes)
  with full attention over the cached context and the block.

FLOPs count matmuls only (2 per multiply-add), MaxText's convention for MFU: norms, RoPE,
softmax and the sin-cos tables are left out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from unigrpo_jax.convert import synthetic
from unigrpo_jax.model import bagel
from unigrpo_jax.model.config import BagelConfig, LLMConfig


@dataclasses.dataclass(frozen=True)
class Peak:
    """A device's peak HBM bandwidth (bytes/s) and dense bf16 matmul rate (FLOP/s)."""

    name: str
    bandwidth: float
    bf16_flops: float


# Keyed by ``jax.Device.device_kind``. An H200 NVL also reports 'NVIDIA H200' (same bandwidth,
# 835 TFLOP/s); the SXM numbers are used.
PEAKS = {
    'NVIDIA H100 80GB HBM3': Peak('H100 SXM', 3.35e12, 989e12),
    'NVIDIA H200': Peak('H200 SXM', 4.8e12, 989e12),
}


def peak_for(device_kind: str) -> Peak | None:
    """The peak numbers of a device kind, or None when ``PEAKS`` does not know it."""
    return PEAKS.get(device_kind)


def bagel_7b_config(layers: int = 28, dtype: str = 'bfloat16') -> BagelConfig:
    """BAGEL-7B-MoT's LLM and FLUX VAE sizes (bagel.md §1), without the ViT."""
    return synthetic.bagel_7b(layers).replace(vit=None, dtype=dtype)


@functools.partial(jax.jit, static_argnames=('shape', 'dtype'))
def _normal(key, shape, dtype):
    return jax.random.normal(key, shape, dtype) * jnp.asarray(0.02, dtype)


def random_params(config: BagelConfig, key: jax.Array, dtype=jnp.bfloat16) -> dict:
    """Random normal(0, 0.02) Bagel params stored in ``dtype``, generated one leaf at a time
    (never a float32 copy of the whole model)."""
    leaves, treedef = jax.tree.flatten(nn.unbox(bagel.abstract_params(config)))
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [_normal(k, tuple(leaf.shape), jnp.dtype(dtype))
                                        for k, leaf in zip(keys, leaves)])


# --- params ------------------------------------------------------------------------------------
def expert_layer_matmul_params(llm: LLMConfig) -> int:
    """Matmul weights of one expert in one layer: q, k, v, o and the gated MLP."""
    e, q, kv = llm.hidden_size, llm.num_attention_heads * llm.head_dim, \
        llm.num_key_value_heads * llm.head_dim
    return e * q + 2 * e * kv + q * e + 3 * e * llm.intermediate_size


def expert_layer_params(llm: LLMConfig) -> int:
    """All params of one expert in one layer: matmuls, q/k/v biases, q/k norms, two RMSNorms."""
    q, kv = llm.num_attention_heads * llm.head_dim, llm.num_key_value_heads * llm.head_dim
    return expert_layer_matmul_params(llm) + q + 2 * kv + 2 * llm.head_dim + 2 * llm.hidden_size


def decoder_param_count(llm: LLMConfig) -> int:
    """The whole language model: both experts of every layer, embedding, two final norms and the
    untied ``lm_head`` (7B: 14.14 B)."""
    return (2 * llm.num_hidden_layers * expert_layer_params(llm)
            + 2 * llm.vocab_size * llm.hidden_size + 2 * llm.hidden_size)


def und_path_param_count(llm: LLMConfig) -> int:
    """Params a text token reads, except its embedding row: und layers, final norm, lm_head."""
    return (llm.num_hidden_layers * expert_layer_params(llm) + llm.hidden_size
            + llm.hidden_size * llm.vocab_size)


# --- bytes and FLOPs ---------------------------------------------------------------------------
def kv_cache_bytes(llm: LLMConfig, batch: int, rows: float, itemsize: int) -> float:
    """Bytes of ``rows`` cached keys and values per chain, over all layers."""
    per_row = 2 * llm.num_hidden_layers * llm.num_key_value_heads * llm.head_dim
    return batch * rows * per_row * itemsize


def decode_step_bytes(llm: LLMConfig, batch: int, cache_rows: float, param_itemsize: int,
                      cache_itemsize: int) -> float:
    """Bytes one decode step of ``batch`` chains must read: und path params once, an embedding
    row and ``cache_rows`` valid KV rows per chain."""
    params = und_path_param_count(llm) + batch * llm.hidden_size
    return params * param_itemsize + kv_cache_bytes(llm, batch, cache_rows, cache_itemsize)


def block_forward_flops(config: BagelConfig, batch: int, latent_tokens: int,
                        context_rows: float) -> float:
    """Matmul FLOPs of one image-block forward (``image_velocity``) for ``batch`` images.

    ``2 * params-per-token * tokens`` over the ``latent_tokens + 2`` block tokens (layers, plus
    ``vae2llm`` and ``llm2vae`` per latent, the time embedder once per image) and the attention
    ``4 * tokens * (context_rows + tokens) * heads * head_dim`` per layer.
    """
    llm = config.llm
    e, f = llm.hidden_size, config.latent_token_dim
    tokens = latent_tokens + 2
    layers = 2 * tokens * llm.num_hidden_layers * expert_layer_matmul_params(llm)
    attention = (4 * tokens * (context_rows + tokens) * llm.num_attention_heads * llm.head_dim
                 * llm.num_hidden_layers)
    heads = 2 * latent_tokens * 2 * f * e + 2 * (config.frequency_embedding_size * e + e * e)
    return batch * (layers + attention + heads)


# --- measuring ---------------------------------------------------------------------------------
def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` (each waited for), in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


_BACKEND_COMPILE_EVENT = '/jax/core/compile/backend_compile_duration'


@contextlib.contextmanager
def count_compiles() -> Iterator[list[str]]:
    """Collects the names of the functions XLA compiles inside the ``with`` block."""
    names: list[str] = []

    def listener(event: str, duration: float, **kwargs):
        del duration
        if event == _BACKEND_COMPILE_EVENT:
            names.append(str(kwargs.get('fun_name', '?')))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield names
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
