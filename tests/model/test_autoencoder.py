"""Parity of the FLUX autoencoder port with the bagel_tiny fixture (cases ``ae`` and ``gen_loop``)."""

from __future__ import annotations

import functools
import json
import os

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open

from unigrpo_jax.loading import rules
from unigrpo_jax.loading.ae_table import AE_RULES
from unigrpo_jax.model import autoencoder
from unigrpo_jax.model.config import ae_config_from_dict

FIXTURE = os.path.join(os.path.dirname(__file__), '..', 'fixtures', 'bagel_tiny')
CHECKPOINT = os.path.join(FIXTURE, 'ae.safetensors')


def _param_shapes(config) -> dict[str, jax.ShapeDtypeStruct]:
    """Flat ``{'encoder/conv_in/kernel': shape, ...}`` of the AutoEncoder params."""
    tree = jax.eval_shape(functools.partial(autoencoder.init_params, config), jax.random.key(0))
    return flax.traverse_util.flatten_dict(tree, sep='/')


def _load_params(config) -> dict:
    """Fills the param tree from ``ae.safetensors`` with AE_RULES; every checkpoint key must
    give exactly one param and every param must come from exactly one key."""
    shapes = _param_shapes(config)
    flat = {}
    with safe_open(CHECKPOINT, 'np') as f:
        for key in f.keys():
            found = rules.match(AE_RULES, key)
            assert found is not None, f'checkpoint key {key!r} matches no rule'
            rule, groups = found
            path = rule.path.format(**groups)
            assert path in shapes, f'{key!r} -> {path!r}, which is not a param'
            assert path not in flat, f'{key!r} -> {path!r}, already filled by another key'
            x = f.get_tensor(key)
            expected = rules.source_shape(rule, shapes[path].shape)
            assert x.shape == expected, f'{key!r} has shape {x.shape}, expected {expected}'
            flat[path] = rules.to_flax(rule, x, shapes[path].shape)
    assert flat.keys() == shapes.keys(), f'params without a key: {sorted(shapes.keys() - flat)}'
    return flax.traverse_util.unflatten_dict(flat, sep='/')


@pytest.fixture(scope='module')
def config():
    with open(os.path.join(FIXTURE, 'ae_config.json')) as f:
        return ae_config_from_dict(json.load(f))


@pytest.fixture(scope='module')
def params(config):
    return _load_params(config)


@pytest.fixture(scope='module')
def cases():
    with np.load(os.path.join(FIXTURE, 'cases.npz')) as data:
        return dict(data)


_decode = jax.jit(autoencoder.decode, static_argnums=1)
_encode = jax.jit(autoencoder.encode, static_argnums=1)
_encoder_moments = jax.jit(autoencoder.encoder_moments, static_argnums=1)


def _nhwc(x):
    return np.transpose(x, (0, 2, 3, 1))


def _nchw(x):
    return np.transpose(np.asarray(x), (0, 3, 1, 2))


def _assert_close(name, port, ref):
    port, ref = np.asarray(port, np.float64), np.asarray(ref, np.float64)
    assert port.shape == ref.shape, f'{name}: shape {port.shape}, expected {ref.shape}'
    err, bound = np.abs(port - ref).max(), 1e-4 * max(1.0, np.abs(ref).max())
    print(f'{name}: max abs err {err:.3g} (bound {bound:.3g})')
    assert err <= bound, f'{name}: max abs err {err:.3g} > {bound:.3g}'


def test_decode(params, config, cases):
    out = _decode(params, config, _nhwc(cases['ae.decode_in_z']))
    _assert_close('ae.decode_out', _nchw(out), cases['ae.decode_out'])


def test_encode(params, config, cases):
    images = _nhwc(cases['ae.encode_in_img'])
    _assert_close('ae.encoder_raw', _nchw(_encoder_moments(params, config, images)),
                  cases['ae.encoder_raw'])
    _assert_close('ae.encode_mean', _nchw(_encode(params, config, images)), cases['ae.encode_mean'])


def test_gen_loop_decode(params, config, cases):
    latent = np.transpose(cases['gen_loop.final_latent'], (1, 2, 0))[None]  # CHW -> [1, h, w, C]
    images = _decode(params, config, latent)
    _assert_close('gen_loop.decoded', _nchw(images)[0], cases['gen_loop.decoded'])
    pixels = np.asarray(autoencoder.to_uint8(images)[0]).astype(np.int16)
    diff = np.abs(pixels - cases['gen_loop.decoded_uint8'])
    print(f'gen_loop.decoded_uint8: max diff {diff.max()}, {np.count_nonzero(diff)} values differ')
    assert diff.max() <= 1 and np.count_nonzero(diff) <= 4


def test_to_uint8_truncates():
    x = jnp.array([-2.0, -1.0, 0.0, 0.999, 1.0, 3.0]).reshape(1, 1, 2, 3)
    np.testing.assert_array_equal(autoencoder.to_uint8(x).ravel(), [0, 0, 127, 254, 255, 255])


def test_sampled_encode_adds_scaled_noise(params, config, cases):
    images = _nhwc(cases['ae.encode_in_img'])
    rng = jax.random.key(3)
    logvar = np.asarray(_encoder_moments(params, config, images))[..., config.z_channels:]
    noise = np.asarray(_encode(params, config, images, rng) - _encode(params, config, images))
    eps = np.asarray(jax.random.normal(rng, logvar.shape, jnp.float32))
    np.testing.assert_allclose(noise, config.scale_factor * np.exp(0.5 * logvar) * eps,
                               rtol=1e-5, atol=1e-6)
    assert not np.allclose(_encode(params, config, images, jax.random.key(4)),
                           _encode(params, config, images, rng))


def test_rules_round_trip_bit_exact(params):
    flat = flax.traverse_util.flatten_dict(params, sep='/')
    with safe_open(CHECKPOINT, 'np') as f:
        for key in f.keys():
            rule, groups = rules.match(AE_RULES, key)
            np.testing.assert_array_equal(rules.to_torch(rule, flat[rule.path.format(**groups)]),
                                          f.get_tensor(key), err_msg=key)


def test_other_config_shapes():
    """Sizes come from the config only: a 2-level, 8-channel autoencoder on odd image sizes."""
    small = ae_config_from_dict(dict(ch=8, ch_mult=[1, 2], num_res_blocks=1, z_channels=4,
                                     downsample=2, groupnorm_groups=4))
    params = autoencoder.init_params(small, jax.random.key(0))
    assert params['decoder']['up_1']['block_1']['conv1']['kernel'].shape == (3, 3, 16, 16)
    latents = _encode(params, small, jnp.zeros((2, 10, 7, 3)))
    assert latents.shape == (2, 5, 3, 4)
    assert _decode(params, small, latents).shape == (2, 10, 6, 3)
