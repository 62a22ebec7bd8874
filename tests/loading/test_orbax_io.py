"""Orbax save/load of converted params: bit-exact round trip, dtypes kept, clear errors."""

import dataclasses
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from unigrpo_jax.loading import orbax_io
from unigrpo_jax.loading.checkpoint import CheckpointError, flatten, unflatten
from unigrpo_jax.model import autoencoder, bagel
from unigrpo_jax.model.config import load_config
from unigrpo_jax.errors import ConfigError


def _random(tree, seed, dtype=None):
    """Random numpy arrays shaped like the (abstract) leaves of ``tree``."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.standard_normal(s.shape, np.float32).astype(
        dtype or s.dtype), tree)


@pytest.fixture(scope='module')
def tiny(fixture_dir):
    """Random tiny params: Bagel in bf16 except float32 biases, the autoencoder float32."""
    config = load_config(fixture_dir)
    flat = flatten(_random(nn.unbox(bagel.abstract_params(config)), 0))
    flat = {p: v if p.endswith('bias') else v.astype(ml_dtypes.bfloat16) for p, v in flat.items()}
    ae_params = _random(autoencoder.abstract_params(config.ae), 1)
    return config, unflatten(flat), ae_params


def _assert_bit_exact(a, b):
    fa, fb = flatten(a), flatten(b)
    assert set(fa) == set(fb)
    for path in fa:
        x, y = fa[path], np.asarray(fb[path])
        assert x.dtype == y.dtype and x.shape == y.shape, path
        assert x.tobytes() == y.tobytes(), path


def test_round_trip_bit_exact(tiny, tmp_path):
    config, params, ae_params = tiny
    directory = str(tmp_path / 'ckpt')
    orbax_io.save_params(directory, config, params, ae_params)
    loaded_config, loaded, loaded_ae = orbax_io.load_params(directory)
    assert loaded_config == config
    assert {str(x.dtype) for x in jax.tree.leaves(loaded)} == {'bfloat16', 'float32'}
    assert all(type(x) is np.ndarray for x in jax.tree.leaves((loaded, loaded_ae)))
    _assert_bit_exact(params, loaded)
    _assert_bit_exact(ae_params, loaded_ae)
    # The autoencoder alone (a run whose own checkpoint holds the policy).
    ae_config, no_params, ae_only = orbax_io.load_params(directory, bagel=False)
    assert ae_config == config and no_params is None and jax.tree.leaves(ae_only)
    _assert_bit_exact(ae_params, ae_only)


def test_jax_arrays_and_boxed_params(fixture_dir, tmp_path):
    config = load_config(fixture_dir)
    # Boxed (nn.Partitioned) jax.Array leaves, as ``bagel.init_params`` returns them.
    boxed = jax.tree.map(jnp.asarray, _random(bagel.abstract_params(config), 2))
    assert isinstance(boxed['vae2llm']['kernel'], nn.Partitioned)
    ae_params = jax.tree.map(jnp.asarray, _random(autoencoder.abstract_params(config.ae), 3))
    orbax_io.save_params(str(tmp_path), config, boxed, ae_params)
    _, loaded, loaded_ae = orbax_io.load_params(str(tmp_path))
    _assert_bit_exact(jax.device_get(nn.unbox(boxed)), loaded)
    _assert_bit_exact(jax.device_get(ae_params), loaded_ae)


def test_restore_with_shardings_and_cast(tiny, tmp_path):
    config, params, ae_params = tiny
    orbax_io.save_params(str(tmp_path), config, params, ae_params)
    mesh = jax.make_mesh((len(jax.devices()),), ('data',))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    # One sharding for all Bagel params; a tree for the autoencoder.
    ae_tree = jax.tree.map(lambda _: replicated, ae_params)
    _, loaded, loaded_ae = orbax_io.load_params(str(tmp_path), shardings=replicated,
                                                ae_shardings=ae_tree, dtype=np.float32)
    for x in jax.tree.leaves((loaded, loaded_ae)):
        assert isinstance(x, jax.Array) and x.sharding == replicated and x.dtype == np.float32
    want = jax.tree.map(lambda x: x.astype(np.float32), params)
    _assert_bit_exact(want, jax.device_get(loaded))  # bf16 -> f32 is exact


def test_save_refuses_wrong_tree_and_existing(tiny, tmp_path):
    config, params, ae_params = tiny
    bad = dict(params, vae2llm=dict(params['vae2llm'], kernel=np.zeros((3, 3), np.float32)))
    with pytest.raises(CheckpointError, match=r"'bagel/vae2llm/kernel' has shape \(3, 3\)"):
        orbax_io.save_params(str(tmp_path), config, bad, ae_params)
    missing = {k: v for k, v in params.items() if k != 'llm2vae'}
    with pytest.raises(CheckpointError, match="missing param 'bagel/llm2vae/bias'"):
        orbax_io.save_params(str(tmp_path), config, missing, ae_params)
    orbax_io.save_params(str(tmp_path), config, params, ae_params)
    with pytest.raises(CheckpointError, match='exists already'):
        orbax_io.save_params(str(tmp_path), config, params, ae_params)
    orbax_io.save_params(str(tmp_path), config, params, ae_params, overwrite=True)


def test_missing_and_partial_directories(tiny, tmp_path):
    config, params, ae_params = tiny
    with pytest.raises(CheckpointError, match='does not exist'):
        orbax_io.load_params(str(tmp_path / 'nope'))
    directory = tmp_path / 'ckpt'
    orbax_io.save_params(str(directory), config, params, ae_params)
    os.remove(directory / 'llm_config.json')
    with pytest.raises(ConfigError, match='missing config file'):
        orbax_io.load_params(str(directory))
    # An interrupted save leaves only Orbax's tmp directory.
    orbax_io.write_config_files(config, str(directory))
    os.rename(directory / 'checkpoint', directory / 'checkpoint.orbax-checkpoint-tmp')
    with pytest.raises(CheckpointError, match='unfinished save'):
        orbax_io.load_params(str(directory))
    shutil.rmtree(directory / 'checkpoint.orbax-checkpoint-tmp')
    with pytest.raises(CheckpointError, match='has no Orbax checkpoint'):
        orbax_io.load_params(str(directory))
    (directory / 'checkpoint').mkdir()
    with pytest.raises(CheckpointError, match='cannot read the Orbax checkpoint'):
        orbax_io.load_params(str(directory))


def test_config_mismatch_is_reported(tiny, tmp_path):
    config, params, ae_params = tiny
    orbax_io.save_params(str(tmp_path), config, params, ae_params)
    wider = config.replace(llm=dataclasses.replace(config.llm, num_hidden_layers=3))
    orbax_io.write_config_files(wider, str(tmp_path))
    with pytest.raises(CheckpointError, match=r'(?s)llm layers=3.*expected \(3,'):
        orbax_io.load_params(str(tmp_path))
