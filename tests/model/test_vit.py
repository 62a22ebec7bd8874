"""Parity of the SigLIP NaViT tower + connector port with the bagel_tiny fixture (case ``vit``)."""

from __future__ import annotations

import functools
import os

import einops
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open

from unigrpo_jax.loading import checkpoint, rules
from unigrpo_jax.loading.vit_table import VIT_RULES
from unigrpo_jax.model import vit
from unigrpo_jax.model.config import load_config
from unigrpo_jax.model.posembed import sincos_2d, sincos_2d_table

FIXTURE = os.path.join(os.path.dirname(__file__), '..', 'fixtures', 'bagel_tiny')
CHECKPOINT = os.path.join(FIXTURE, 'model.safetensors')
VIT_PREFIXES = ('vit_model.', 'connector.')


def _assert_close(port, ref, name: str) -> None:
    """``max|port - ref| <= 1e-4 * max(1, max|ref|)`` (the fixture's float32 tolerance)."""
    err = float(np.max(np.abs(np.asarray(port, np.float64) - ref)))
    bound = 1e-4 * max(1.0, float(np.max(np.abs(ref))))
    print(f'{name}: max abs error {err:.3g} (bound {bound:.3g})')
    assert err <= bound, f'{name}: max abs error {err:.3g} > {bound:.3g}'


@pytest.fixture(scope='module')
def config():
    return load_config(FIXTURE)


@pytest.fixture(scope='module')
def tensors():
    with safe_open(CHECKPOINT, 'np') as f:
        return {k: f.get_tensor(k) for k in f.keys()
                if k.startswith(VIT_PREFIXES) or k.endswith('pos_embed.pos_embed')}


@pytest.fixture(scope='module')
def params(config):
    """The ``{'vit', 'connector'}`` params converted from the fixture checkpoint (the converter
    checks that every ViT/connector key gives one param slice and every param is filled)."""
    source = checkpoint.SafetensorsSource([CHECKPOINT])
    abstract = jax.eval_shape(functools.partial(vit.init_params, config), jax.random.key(0))
    keys = [k for k in source.keys() if k.startswith(VIT_PREFIXES)]
    return checkpoint.convert(VIT_RULES, source, abstract, keys=keys)


@pytest.fixture(scope='module')
def case():
    with np.load(os.path.join(FIXTURE, 'cases.npz')) as data:
        return {k.removeprefix('vit.'): data[k] for k in data.files if k.startswith('vit.')}


@pytest.fixture(scope='module')
def packed(config, case):
    images = [einops.rearrange(case[k], 'c h w -> h w c') for k in ('image0', 'image1')]
    return vit.pack_images(images, config.vit.patch_size, config.vit_max_num_patch_per_side)


def test_pack_images_matches_fixture(case, packed):
    patches, position_ids, segment_ids = packed
    np.testing.assert_array_equal(patches, case['packed_patches'])
    np.testing.assert_array_equal(position_ids, case['position_ids'])
    np.testing.assert_array_equal(segment_ids,
                                  np.repeat(np.arange(len(case['seqlens'])), case['seqlens']))


def test_patchify_rejects_bad_sizes(config):
    p, side = config.vit.patch_size, config.vit_max_num_patch_per_side
    with pytest.raises(ValueError, match='multiple of the ViT patch size'):
        vit.patchify(np.zeros((p + 1, p, config.vit.num_channels)), p, side)
    with pytest.raises(ValueError, match='exceeds the position grid'):
        vit.patchify(np.zeros((p, p * (side + 1), config.vit.num_channels)), p, side)


def test_sincos_tables_equal_checkpoint(config, tensors):
    """Both fixed tables of the checkpoint are ``sincos_2d_table`` (vit and latent grids)."""
    dim = config.llm.hidden_size
    for key, side in (('vit_pos_embed.pos_embed', config.vit_max_num_patch_per_side),
                      ('latent_pos_embed.pos_embed', config.max_latent_size)):
        table = sincos_2d_table(side, dim)
        np.testing.assert_allclose(table, tensors[key], rtol=0, atol=1e-6, err_msg=key)
        rows = sincos_2d(jnp.arange(side * side), side, dim)
        np.testing.assert_array_equal(rows, table, err_msg=f'{key}: in-graph rows')


def test_forward_matches_fixture(config, params, case, packed):
    patches, position_ids, segment_ids = (jnp.asarray(a) for a in packed)
    with jax.default_matmul_precision('highest'):
        features = vit.siglip_features(params, config, patches, position_ids, segment_ids)
        connector = vit.vision_encoder(config).apply(
            {'params': params}, features, method=lambda m, f: m.connector(f))
        embeds = vit.vit_embeddings(params, config, patches, position_ids, segment_ids)
    _assert_close(features, case['siglip_out'], 'siglip_out')
    _assert_close(connector, case['connector_out'], 'connector_out')
    _assert_close(embeds, case['llm_input_embeds'], 'llm_input_embeds')


def test_images_do_not_attend_to_each_other(config, params, packed):
    """Each image's output equals the output of that image alone (block-diagonal mask)."""
    patches, position_ids, segment_ids = packed
    with jax.default_matmul_precision('highest'):
        together = vit.siglip_features(params, config, patches, position_ids, segment_ids)
        first = segment_ids == 0
        alone = vit.siglip_features(params, config, patches[first], position_ids[first],
                                    segment_ids[first])
    np.testing.assert_allclose(together[first], alone, rtol=0, atol=1e-5)


def test_rules_round_trip_bit_exact(params, tensors):
    """Exporting the converted params gives back every ViT/connector tensor bit for bit."""
    assert rules.match(VIT_RULES, 'vit_pos_embed.pos_embed') is None
    exported = checkpoint.export(VIT_RULES, params)
    expected = {k: v for k, v in tensors.items() if k.startswith(VIT_PREFIXES)}
    assert exported.keys() == expected.keys()
    for key, tensor in expected.items():
        assert exported[key].dtype == tensor.dtype and exported[key].shape == tensor.shape, key
        np.testing.assert_array_equal(exported[key], tensor, err_msg=key)


def test_bfloat16_compute_is_close(config, params, case, packed):
    """The bfloat16 compute path (float32 params, LayerNorm and softmax) runs under jit and
    stays within bf16 rounding of the float32 reference (measured ~1% of max|ref|)."""
    embed = jax.jit(vit.vit_embeddings, static_argnums=1)
    out = embed(params, config.replace(dtype='bfloat16'), *packed)
    ref = case['llm_input_embeds']
    err = np.max(np.abs(np.asarray(out, np.float32) - ref))
    assert err <= 5e-2 * max(1.0, np.max(np.abs(ref))), err


def test_init_params_have_logical_axes(config):
    """Every param carries one logical axis name per dim, the scanned ones led by 'layers'."""
    c = config.vit
    boxed = jax.eval_shape(
        vit.vision_encoder(config).init, jax.random.key(0),
        jnp.zeros((1, c.patch_size ** 2 * c.num_channels)), jnp.zeros((1,), jnp.int32),
        jnp.zeros((1,), jnp.int32))['params']
    assert set(boxed) == {'vit', 'connector'}
    for path, leaf in flax.traverse_util.flatten_dict(boxed, sep='/').items():
        assert len(leaf.names) == leaf.value.ndim, path
        assert (leaf.names[0] == 'layers') == path.startswith('vit/layers/'), path
