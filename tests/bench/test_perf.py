"""Analytic params, bytes and FLOPs of unigrpo_jax.bench.perf against hand counts (no timing)."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import bagel_grpo
from unigrpo_jax.bench import perf, targets
from unigrpo_jax.model import bagel
from unigrpo_jax.model.config import config_from_dict
from unigrpo_jax.errors import ConfigError


@pytest.fixture(scope='module')
def tiny():
    """configs/bagel_grpo.py:tiny: vocab 128, hidden 64, mlp 128, 2 layers, 4 heads, 2 kv heads
    (head_dim 16), latent tokens of 2 * 2 * 4 = 16 features; params as shapes."""
    config = config_from_dict(bagel_grpo.get_config('tiny').model.random.to_dict())
    return config, nn.unbox(bagel.abstract_params(config))


def _size(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def test_tiny_param_counts(tiny):
    config, params = tiny
    llm = config.llm
    # q 64*64 + k, v 2 * 64*32 + o 64*64 + gate, up, down 3 * 64*128
    assert perf.expert_layer_matmul_params(llm) == 4096 + 2 * 2048 + 4096 + 24576 == 36864
    # + biases 64 + 2*32, q/k norms 2*16, two RMSNorms 2*64
    assert perf.expert_layer_params(llm) == 36864 + 128 + 32 + 128 == 37152
    # 2 experts * 2 layers, embedding and lm_head 2 * 128*64, two final norms
    assert perf.decoder_param_count(llm) == 4 * 37152 + 16384 + 128 == 165120
    assert perf.decoder_param_count(llm) == _size(params['language_model'])
    assert perf.und_path_param_count(llm) == 2 * 37152 + 64 + 8192 == 82560
    lm = params['language_model']
    assert perf.und_path_param_count(llm) == _size(
        [lm['layers']['und'], lm['norm'], lm['lm_head']])


def test_tiny_bytes(tiny):
    llm = tiny[0].llm
    # k and v of 2 layers, 2 kv heads of 16: 128 values per row
    assert perf.kv_cache_bytes(llm, batch=3, rows=10, itemsize=4) == 3 * 10 * 128 * 4
    # und path once + 3 embedding rows (float32), 3 chains' 10 rows (bf16)
    assert perf.decode_step_bytes(llm, 3, 10, param_itemsize=4, cache_itemsize=2) == (
        (82560 + 3 * 64) * 4 + 3 * 10 * 128 * 2)


def test_tiny_block_flops(tiny):
    config = tiny[0]
    tokens = 16 + 2  # latents and the two markers
    layers = 2 * tokens * 2 * 36864
    attention = 4 * tokens * (20 + tokens) * 4 * 16 * 2
    heads = 2 * 16 * 2 * 16 * 64 + 2 * (256 * 64 + 64 * 64)  # vae2llm, llm2vae; time embedder
    assert layers + attention + heads == 3110912
    assert perf.block_forward_flops(config, batch=2, latent_tokens=16, context_rows=20) == (
        2 * 3110912)


def test_7b_counts():
    llm = perf.bagel_7b_config().llm
    # bagel.md §1: LLM incl. both experts 14.14 B
    assert perf.decoder_param_count(llm) == 14_141_252_608
    assert round(perf.decoder_param_count(llm) / 1e9, 2) == 14.14
    # per expert layer: q 3584^2 + 3584, k, v 2 * (512*3584 + 512), o 3584^2, q/k norms 256,
    # RMSNorms 2 * 3584, MLP 3 * 3584*18944
    assert perf.expert_layer_params(llm) == 233_058_048
    assert perf.und_path_param_count(llm) == 28 * 233_058_048 + 3584 + 3584 * 152064
    assert perf.bagel_7b_config(layers=4).llm.num_hidden_layers == 4


def test_random_params_match_the_model(tiny):
    config, params = tiny
    rand = perf.random_params(config, jax.random.key(0))
    assert jax.tree.structure(rand) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(rand), jax.tree.leaves(params)):
        assert a.shape == b.shape and a.dtype == jnp.bfloat16
    kernel = np.asarray(rand['llm2vae']['kernel'], np.float32)
    assert 0.01 < kernel.std() < 0.03


def test_peaks():
    assert perf.peak_for('NVIDIA H100 80GB HBM3').bandwidth == 3.35e12
    assert perf.peak_for('NVIDIA H200').bandwidth == 4.8e12
    assert perf.peak_for('NVIDIA H200').bf16_flops == 989e12
    assert perf.peak_for('cpu') is None
    # The TPU kinds as jax names them, with targets' published numbers (one table).
    assert perf.peak_for('TPU v5').bf16_flops == perf.peak_for('TPU v5p').bf16_flops == 459e12
    assert perf.peak_for('TPU v5 lite').bandwidth == targets.get('v5e-32').bandwidth
    assert perf.peak_for('TPU v6 lite').bf16_flops == targets.get('v6e-8').peak_flops
    assert perf.peak_for('NVIDIA H100 80GB HBM3').bf16_flops == targets.get('h100x8').peak_flops
    with pytest.raises(ConfigError, match="unknown device family 'a100'"):
        targets.family_peaks('a100')


def test_count_compiles():
    fn = jax.jit(lambda x: x * 3 + 1)
    a, b = jnp.ones(5), jnp.zeros(5)
    with perf.count_compiles() as first:
        fn(a).block_until_ready()
    with perf.count_compiles() as second:
        fn(b).block_until_ready()
    assert first == ['jit(<lambda>)'] and second == []


def test_measured_rates_are_positive_and_finite():
    flops = perf.matmul_flops_per_second(size=128, repeats=2)
    bandwidth = perf.read_bytes_per_second(megabytes=4, repeats=2)
    assert 1e6 < flops < 1e16 and 1e6 < bandwidth < 1e14, (flops, bandwidth)
