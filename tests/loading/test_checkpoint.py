"""The converter: every kind of bad checkpoint is refused with a precise message, and the
export round trip is bit-exact (float32 and bf16)."""

import json
import os
import shutil

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from unigrpo_jax.loading import rules
from unigrpo_jax.loading.bagel import export_bagel, load_bagel
from unigrpo_jax.loading.checkpoint import CheckpointError
from unigrpo_jax.errors import ConfigError

MLP_KEY = 'language_model.model.layers.1.mlp_moe_gen.up_proj.weight'


def _copy(fixture_dir, tmp_path, edit_model=None, edit_llm=None):
    out = tmp_path / 'ckpt'
    shutil.copytree(fixture_dir, out)
    for f in out.iterdir():
        os.chmod(f, 0o644)
    if edit_model is not None:
        tensors = load_file(out / 'model.safetensors')
        edit_model(tensors)
        save_file(tensors, out / 'model.safetensors')
    if edit_llm is not None:
        cfg = json.loads((out / 'llm_config.json').read_text())
        edit_llm(cfg)
        (out / 'llm_config.json').write_text(json.dumps(cfg))
    return str(out)


def test_loads_fixture_and_keeps_float32(fixture_dir):
    config, params, ae_params = load_bagel(fixture_dir)
    assert config.llm.num_hidden_layers == 2 and config.vit.num_hidden_layers == 2
    q = params['language_model']['layers']['gen']['q_proj']['kernel']
    assert q.shape == (2, 64, 4, 16) and q.dtype == np.float32
    assert 'encoder' in ae_params and 'decoder' in ae_params


def test_missing_key_is_named(fixture_dir, tmp_path):
    d = _copy(fixture_dir, tmp_path, edit_model=lambda t: t.pop(MLP_KEY))
    with pytest.raises(CheckpointError, match=rf"missing key '{MLP_KEY}'"):
        load_bagel(d)


def test_unexpected_key_is_named(fixture_dir, tmp_path):
    def add(t):
        t['language_model.model.layers.0.mlp.extra_proj.weight'] = np.zeros((2, 2), np.float32)
    d = _copy(fixture_dir, tmp_path, edit_model=add)
    with pytest.raises(CheckpointError, match='unexpected key .*extra_proj'):
        load_bagel(d)


def test_wrong_shape_names_key_shapes_and_config_field(fixture_dir, tmp_path):
    def shrink(t):
        t[MLP_KEY] = t[MLP_KEY][:100]
    d = _copy(fixture_dir, tmp_path, edit_model=shrink)
    with pytest.raises(CheckpointError) as e:
        load_bagel(d)
    msg = str(e.value)
    assert MLP_KEY in msg and '(100, 64)' in msg and 'expected (128, 64)' in msg
    assert 'intermediate_size=128' in msg and 'hidden_size=64' in msg


def test_layer_count_mismatch_both_ways(fixture_dir, tmp_path):
    more = _copy(fixture_dir, tmp_path / 'a',
                 edit_llm=lambda c: c.update(num_hidden_layers=3))
    with pytest.raises(CheckpointError, match=r"missing key 'language_model\.model\.layers\.2\."):
        load_bagel(more)
    fewer = _copy(fixture_dir, tmp_path / 'b',
                  edit_llm=lambda c: c.update(num_hidden_layers=1))
    with pytest.raises(CheckpointError, match=r'layer 1 >= 1 layers .*num_hidden_layers=1'):
        load_bagel(fewer)


def test_all_problems_reported_together(fixture_dir, tmp_path):
    def two(t):
        t.pop(MLP_KEY)
        t['bogus'] = np.zeros(1, np.float32)
    d = _copy(fixture_dir, tmp_path, edit_model=two)
    with pytest.raises(CheckpointError, match=r'\(2 problems\)'):
        load_bagel(d)


def test_wrong_fixed_table_is_refused(fixture_dir, tmp_path):
    def scramble(t):
        t['latent_pos_embed.pos_embed'] = t['latent_pos_embed.pos_embed'][::-1].copy()
    d = _copy(fixture_dir, tmp_path, edit_model=scramble)
    with pytest.raises(CheckpointError, match='not the fixed 2-D sin-cos table'):
        load_bagel(d)


@pytest.mark.parametrize('name', ['ae.safetensors', 'model.safetensors', 'llm_config.json'])
def test_missing_files(fixture_dir, tmp_path, name):
    d = _copy(fixture_dir, tmp_path)
    os.remove(os.path.join(d, name))
    with pytest.raises((CheckpointError, ConfigError), match='missing|no model weights'):
        load_bagel(d)


def test_corrupt_file(fixture_dir, tmp_path):
    d = _copy(fixture_dir, tmp_path)
    with open(os.path.join(d, 'ae.safetensors'), 'wb') as f:
        f.write(b'not a safetensors file')
    with pytest.raises(CheckpointError, match='cannot read'):
        load_bagel(d)


def _assert_same_tensors(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), k


@pytest.mark.parametrize('dtype', [np.float32, ml_dtypes.bfloat16])
def test_export_round_trip_is_bit_exact(fixture_dir, tmp_path, dtype):
    def cast(t):
        for k in t:
            if 'pos_embed' not in k:
                t[k] = t[k].astype(dtype)
    src = _copy(fixture_dir, tmp_path / 'src', edit_model=cast)
    config, params, ae_params = load_bagel(src)
    assert params['language_model']['lm_head']['kernel'].dtype == dtype
    out = tmp_path / 'out'
    export_bagel(config, params, ae_params, str(out), model_name='model.safetensors')
    original = load_file(os.path.join(src, 'model.safetensors'))
    exported = load_file(out / 'model.safetensors')
    tables = [k for k in original if 'pos_embed' in k]
    for k in tables:  # the fixed tables are recomputed, in the export dtype
        np.testing.assert_allclose(exported.pop(k).astype(np.float32), original.pop(k),
                                   atol=1e-2 if dtype != np.float32 else 1e-7)
    _assert_same_tensors(original, exported)
    _assert_same_tensors(load_file(os.path.join(src, 'ae.safetensors')),
                         load_file(out / 'ae.safetensors'))
    config2, params2, _ = load_bagel(str(out))
    assert config2 == config


def test_transforms_invert_exactly():
    x = np.arange(2 * 3 * 4, dtype=np.float32)
    for rule, shape in [(rules.Rule('a', 'a', 'linear', in_dims=2), (2, 3, 4)),
                        (rules.Rule('a', 'a', 'conv'), (1, 2, 3, 4)),
                        (rules.Rule('a', 'a', 'flat'), (4, 6))]:
        src = x.reshape(rules.source_shape(rule, shape))
        assert np.array_equal(rules.to_torch(rule, rules.to_flax(rule, src, shape)), src)
