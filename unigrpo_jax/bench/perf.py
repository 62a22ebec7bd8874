"""Analytic costs of Bagel's rollout (params, bytes, FLOPs), device peaks and timing helpers.

The counts follow the model as ``unigrpo_jax.model`` implements it (bagel.md §2-3):

* a think-token decode step runs the und expert only: every und layer weight, the final und
  norm, ``lm_head`` and one embedding row per chain are read once per step, plus each chain's
  KV cache rows (keys and values of every layer);
* a denoising step (``context.image_velocity``) runs the image block ``[soi, eoi] + N latents``
  (markers on the und expert, latents on the gen expert; both experts have the same sizes)
  with full attention over the cached context and the block;
* a text segment (a prefill, or a decode step's one token) attends causally: its i-th token
  (from 1) sees the cached context and i rows of the segment.

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

from unigrpo_jax.bench import targets
from unigrpo_jax.loading import synthetic
from unigrpo_jax.model import bagel
from unigrpo_jax.model.config import BagelConfig, LLMConfig, SpecialTokens


@dataclasses.dataclass(frozen=True)
class Peak:
    """A device's peak HBM bandwidth (bytes/s) and dense bf16 matmul rate (FLOP/s)."""

    name: str
    bandwidth: float
    bf16_flops: float


# ``jax.Device.device_kind`` -> (the ``targets`` family whose published peaks it has, the name
# rows print). An H200 NVL also reports 'NVIDIA H200' (same bandwidth, 835 TFLOP/s); the SXM
# numbers are used. jax calls a TPU v5p chip 'TPU v5', a v5e 'TPU v5 lite', a v6e 'TPU v6 lite'.
DEVICE_KINDS = {
    'NVIDIA H100 80GB HBM3': ('h100', 'H100 SXM'),
    'NVIDIA H200': ('h200', 'H200 SXM'),
    'TPU v5': ('v5p', 'TPU v5p'),
    'TPU v5p': ('v5p', 'TPU v5p'),
    'TPU v5 lite': ('v5e', 'TPU v5e'),
    'TPU v6 lite': ('v6e', 'TPU v6e'),
}


def _peak(family: str, name: str) -> Peak:
    flops, bandwidth = targets.family_peaks(family)
    return Peak(name, bandwidth, flops)


PEAKS = {kind: _peak(*spec) for kind, spec in DEVICE_KINDS.items()}


def peak_for(device_kind: str) -> Peak | None:
    """The peak numbers of a device kind, or None when ``PEAKS`` does not know it."""
    return PEAKS.get(device_kind)


def bagel_7b_config(layers: int = 28, dtype: str = 'bfloat16') -> BagelConfig:
    """BAGEL-7B-MoT's LLM and FLUX VAE sizes (bagel.md §1), without the ViT."""
    return synthetic.bagel_7b(layers).replace(vit=None, dtype=dtype)


def bagel_1b_config(layers: int = 16, dtype: str = 'bfloat16') -> BagelConfig:
    """A ~1B-per-expert proxy of Bagel for sweeps: hidden 2048, MLP 5504, 16 heads (4 kv heads,
    head_dim 128), vocab 32000, ``layers`` layers (16: 1.55 B LLM params with both experts), the
    7B's FLUX VAE and connectors, no ViT."""
    llm = LLMConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5504,
                    num_hidden_layers=layers, num_attention_heads=16, num_key_value_heads=4)
    tokens = SpecialTokens(bos=31996, eos=31997, start_of_image=31998, end_of_image=31999)
    return bagel_7b_config(dtype=dtype).replace(llm=llm, tokens=tokens)


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


def segment_forward_flops(llm: LLMConfig, tokens: int, context_rows: float,
                          causal: bool) -> float:
    """Matmul FLOPs of one sample's segment of ``tokens`` through the decoder layers (each token
    on one expert): ``2 * params-per-token * tokens`` and the attention ``4 * keys * heads *
    head_dim`` per query and layer, a query seeing ``context_rows`` cached rows and the whole
    segment (an image block) or, ``causal``, the segment's rows up to its own (text)."""
    own = tokens * (tokens + 1) / 2 if causal else tokens * tokens
    keys = tokens * context_rows + own
    return llm.num_hidden_layers * (2 * tokens * expert_layer_matmul_params(llm)
                                    + 4 * keys * llm.num_attention_heads * llm.head_dim)


def lm_head_flops(llm: LLMConfig, tokens: int) -> float:
    """The AR head on ``tokens`` hidden states."""
    return 2 * tokens * llm.hidden_size * llm.vocab_size


def block_forward_flops(config: BagelConfig, batch: int, latent_tokens: int,
                        context_rows: float) -> float:
    """Matmul FLOPs of one image-block forward (``image_velocity``) for ``batch`` images.

    The ``latent_tokens + 2`` block tokens through the layers (``segment_forward_flops``, full
    attention over the context and the block), plus ``vae2llm`` and ``llm2vae`` per latent and
    the time embedder once per image.
    """
    e, f = config.llm.hidden_size, config.latent_token_dim
    layers = segment_forward_flops(config.llm, latent_tokens + 2, context_rows, causal=False)
    heads = 2 * latent_tokens * 2 * f * e + 2 * (config.frequency_embedding_size * e + e * e)
    return batch * (layers + heads)


def decode_step_flops(llm: LLMConfig, batch: int, context_rows: float) -> float:
    """Matmul FLOPs of one think-token decode step (``context.decode_step``) of ``batch`` chains
    over ``context_rows`` cached rows: the token through the und layers, and ``lm_head``."""
    return batch * (segment_forward_flops(llm, 1, context_rows, causal=True)
                    + lm_head_flops(llm, 1))


# --- measuring ---------------------------------------------------------------------------------
def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` (each waited for), in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_flops_per_second(dtype=jnp.float32, size: int = 2048, repeats: int = 5) -> float:
    """The default device's measured rate on one large ``[size, size] @ [size, size]`` matmul
    (``2 size^3`` FLOPs, median of ``repeats``): what its matmuls can reach, the denominator of
    a program's achieved fraction."""
    a, b = (jax.random.normal(k, (size, size), dtype) for k in jax.random.split(jax.random.key(0)))
    matmul = jax.jit(jnp.matmul)
    jax.block_until_ready(matmul(a, b))
    return 2 * size ** 3 / median_seconds(lambda: matmul(a, b), repeats)


def read_bytes_per_second(megabytes: int = 512, repeats: int = 5) -> float:
    """The default device's measured rate of reading one large float32 array (a sum)."""
    x = jnp.ones((megabytes * 2 ** 18,), jnp.float32)
    total = jax.jit(jnp.sum)
    jax.block_until_ready(total(x))
    return x.nbytes / median_seconds(lambda: total(x), repeats)


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
