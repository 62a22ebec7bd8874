"""launch/bench_convert.py (tiny shapes), the synthetic checkpoint writer behind it and its
host-memory measurement (bench.host_memory)."""

import json
import math
import os
import subprocess
import sys

import ml_dtypes
import numpy as np
from safetensors import safe_open

from unigrpo_jax.bench import host_memory
from unigrpo_jax.loading import synthetic
from unigrpo_jax.loading.bagel import load_bagel

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_write_safetensors_streams_chunks(tmp_path):
    bf16 = np.dtype(ml_dtypes.bfloat16)
    specs = [('a.weight', (3, 5), np.dtype(np.float32)), ('b', (7,), bf16), ('c', (0, 2), bf16)]
    rng = np.random.default_rng(0)
    want = {k: rng.standard_normal(s).astype(d) for k, s, d in specs}

    def chunks(key, shape, dtype):  # uneven pieces of the flattened tensor
        flat = want[key].reshape(-1)
        yield from (flat[i:i + 4] for i in range(0, flat.size, 4))

    path = str(tmp_path / 'x.safetensors')
    synthetic.write_safetensors(path, specs, chunks)
    with safe_open(path, 'np') as f:
        assert sorted(f.keys()) == sorted(want)
        for key, value in want.items():
            got = f.get_tensor(key)
            assert got.dtype == value.dtype and got.tobytes() == value.tobytes()


def test_7b_specs_match_the_release_sizes():
    """bagel.md §1: 14.61 B params in ema.safetensors (LLM 14.14 B), VAE 83.8 M."""
    config = synthetic.bagel_7b()
    model = synthetic.model_specs(config)
    count = lambda specs: sum(math.prod(s) for _, s, _ in specs)  # noqa: E731
    assert round(count(model) / 1e9, 2) == 14.61
    llm = [s for s in model if s[0].startswith('language_model.')]
    assert round(count(llm) / 1e9, 2) == 14.14
    assert len([k for k, _, _ in llm if k.endswith('.mlp_moe_gen.up_proj.weight')]) == 28
    assert round(count(synthetic.ae_specs(config)) / 1e6, 1) == 83.8
    shapes = dict((k, s) for k, s, _ in model)
    assert shapes['language_model.model.layers.27.self_attn.k_proj_moe_gen.weight'] == (512, 3584)
    assert shapes['vit_model.vision_model.embeddings.patch_embedding.weight'] == (1152, 588)
    assert shapes['latent_pos_embed.pos_embed'] == (4096, 3584)


def test_synthetic_release_loads(tmp_path):
    config = synthetic.bagel_tiny(layers=3)
    sizes = synthetic.write_release(str(tmp_path), config)
    loaded, params, ae_params = load_bagel(str(tmp_path))
    assert loaded == config
    assert params['language_model']['layers']['gen']['up_proj']['kernel'].shape[0] == 3
    leaves = [x for tree in (params, ae_params) for x in _leaves(tree)]
    assert sum(x.nbytes for x in leaves) == sizes['model'] + sizes['ae']
    assert {x.dtype for x in _leaves(params)} == {np.dtype(ml_dtypes.bfloat16)}
    assert {x.dtype for x in _leaves(ae_params)} == {np.dtype(np.float32)}


def _leaves(tree):
    for v in tree.values():
        yield from (_leaves(v) if isinstance(v, dict) else (v,))


def test_bench_script_tiny(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(_ROOT, 'launch', 'bench_convert.py'), '--tiny',
         '--layers=2', f'--dir={tmp_path}'],
        capture_output=True, text=True, cwd=_ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu'))
    assert result.returncode == 0, result.stderr[-3000:]
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert row['returncode'] == 0 and row['layers'] == 2 and row['peak_rss_gib'] > 0
    assert row['orbax_gib'] is not None
    # The synthetic and converted directories are deleted (only the logs stay in --dir).
    assert sorted(os.listdir(tmp_path)) == ['baseline.log', 'convert_2.log']


def test_bench_script_sharded_load_over_two_processes(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(_ROOT, 'launch', 'bench_convert.py'), '--tiny',
         '--layers=2', f'--dir={tmp_path}', '--load_processes=1,2'],
        capture_output=True, text=True, cwd=_ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu'),
        timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = (json.loads(line) for line in result.stdout.strip().splitlines()[-2:])
    assert one['load_processes'] == 1 and two['load_processes'] == 2
    assert one['returncodes'] == [0] and two['returncodes'] == [0, 0]
    # fsdp over 8 devices: each of 2 processes holds half the params; 1 process all of them.
    [whole] = one['local_param_bytes']
    assert all(0.4 * whole < b < 0.6 * whole for b in two['local_param_bytes']), (one, two)


def test_a_child_s_peak_memory_is_measured(tmp_path):
    allocate = 'import numpy as np, time; x = np.ones(2**27, np.uint8); time.sleep(0.3)'
    idle, busy = host_memory.measure_all(
        [[sys.executable, '-c', 'import numpy'], [sys.executable, '-c', allocate]],
        [str(tmp_path / 'idle.log'), str(tmp_path / 'busy.log')])
    assert idle['returncode'] == busy['returncode'] == 0
    # ru_maxrss keeps the forking parent's size across exec (this pytest's), so the array
    # shows in the anonymous memory sampled from /proc while the child slept.
    assert busy['peak_rss'] > 2**27 and busy['peak_anon'] - idle['peak_anon'] > 0.9 * 2**27
    failed = host_memory.measure([sys.executable, '-c', 'raise SystemExit(3)'],
                                 str(tmp_path / 'failed.log'))
    assert failed['returncode'] == 3
