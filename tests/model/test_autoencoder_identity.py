"""The identity autoencoder (ShapesEval's pixel space): config, encode/decode, no params."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unigrpo_jax.model import autoencoder
from unigrpo_jax.model.config import AEConfig, ae_config_from_dict
from unigrpo_jax.errors import ConfigError


def _identity(**kw) -> AEConfig:
    return ae_config_from_dict(dict(kind='identity', scale_factor=1.25, shift_factor=0.5, **kw))


def test_config_from_dict_defaults():
    cfg = _identity()
    assert cfg.kind == 'identity'
    assert (cfg.in_channels, cfg.z_channels, cfg.downsample) == (3, 3, 1)
    assert (cfg.scale_factor, cfg.shift_factor) == (1.25, 0.5)
    # The FLUX default stays the default kind.
    assert ae_config_from_dict({}).kind == 'flux' and ae_config_from_dict({}).downsample == 8


def test_config_round_trips_through_json_fields():
    """The fields ``convert.bagel.config_files`` writes (flux defaults included) read back."""
    cfg = _identity()
    fields = dict(resolution=cfg.resolution, in_channels=3, downsample=1, ch=cfg.ch, out_ch=3,
                  ch_mult=list(cfg.ch_mult), num_res_blocks=cfg.num_res_blocks, z_channels=3,
                  scale_factor=1.25, shift_factor=0.5, groupnorm_groups=cfg.groupnorm_groups,
                  groupnorm_eps=cfg.groupnorm_eps, kind='identity')
    assert ae_config_from_dict(fields) == cfg


@pytest.mark.parametrize('bad', [dict(kind='vqgan'), dict(kind='identity', z_channels=16),
                                 dict(kind='identity', downsample=8)])
def test_config_errors(bad):
    with pytest.raises(ConfigError):
        ae_config_from_dict(bad)


def test_no_params():
    cfg = _identity()
    assert autoencoder.init_params(cfg, jax.random.key(0)) == {}
    assert autoencoder.abstract_params(cfg) == {}


def test_encode_decode_are_scale_shift_and_inverse():
    cfg = _identity()
    images = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3), minval=-1.0, maxval=1.0)
    z = autoencoder.encode({}, cfg, images, rng=jax.random.key(2))  # rng is ignored
    np.testing.assert_allclose(z, 1.25 * (images - 0.5), rtol=1e-6)
    np.testing.assert_allclose(autoencoder.decode({}, cfg, z), images, atol=1e-6)
    assert z.shape == images.shape and z.dtype == jnp.float32


def test_decode_to_uint8_recovers_pixels():
    cfg = _identity()
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, -1)
    images = jnp.asarray(pixels, jnp.float32) / 127.5 - 1.0
    back = autoencoder.to_uint8(autoencoder.decode({}, cfg, autoencoder.encode({}, cfg, images)))
    # to_uint8 truncates, so a float round trip may land one below.
    assert np.all(np.abs(np.asarray(back, int) - pixels) <= 1)
