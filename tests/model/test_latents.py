import numpy as np
import pytest

from unigrpo_jax.model import guidance, latents, packing


def test_patchify_roundtrip_and_feature_order():
    x = np.random.default_rng(0).normal(size=(6, 4, 16)).astype(np.float32)  # [2h, 2w, C]
    tok = latents.patchify(x, 2)
    assert tok.shape == (6, 64)
    # token row*w + col, feature (py*2 + px)*C + c = latent pixel (2row+py, 2col+px), channel c
    assert tok[1 * 2 + 1, (1 * 2 + 0) * 16 + 5] == x[3, 2, 5]
    np.testing.assert_array_equal(latents.unpatchify(tok, 3, 2, 2), x)


def test_position_ids_use_the_fixed_grid_width():
    np.testing.assert_array_equal(latents.position_ids(2, 3, 8), [0, 1, 2, 8, 9, 10])
    with pytest.raises(ValueError, match='exceeds'):
        latents.position_ids(9, 1, 8)


def test_timesteps_match_bagel():
    t = np.asarray(latents.timesteps(50, 3.0))
    np.testing.assert_allclose(t[[0, 1, 2, -4, -3, -2]],
                               [1, 0.99310, 0.98601, 0.16364, 0.11321, 0.05882], atol=1e-5)
    assert t[-1] == 0


def test_guidance_off_and_bad_renorm():
    v = np.ones((1, 2, 3), np.float32)
    assert guidance.combine(v, 2 * v, None, text_scale=1.0, img_scale=1.0, renorm='global',
                            renorm_min=0.0) is v
    with pytest.raises(ValueError, match='unknown cfg renorm'):
        guidance.combine(v, v, v, text_scale=4.0, img_scale=1.0, renorm='local', renorm_min=0.0)


def test_guidance_renorm_caps_the_norm_at_the_conditional_one():
    rng = np.random.default_rng(1)
    vc, vt = rng.normal(size=(2, 1, 4, 8)).astype(np.float32)
    out = np.asarray(guidance.combine(vc, vt, None, text_scale=4.0, img_scale=1.0,
                                      renorm='global', renorm_min=0.0))
    assert np.linalg.norm(out) <= np.linalg.norm(vc) * (1 + 1e-6)
    off = np.asarray(guidance.combine(vc, vt, None, text_scale=4.0, img_scale=1.0,
                                      renorm='global', renorm_min=1.0))
    np.testing.assert_allclose(off, vt + 4.0 * (vc - vt), rtol=1e-6)


def test_packing_mask_semantics():
    m = packing.sample_mask([2, 3, 2], ['causal', 'noise', 'causal'])
    assert m[1, 0] and not m[0, 1]           # causal text
    assert m[2, 4] and m[4, 2]               # full inside the noise split
    assert m[3, 0]                           # noise sees earlier text
    assert not m[5, 2] and not m[6, 4]       # nobody after sees the noise split
    assert m[6, 5] and m[5, 1]
    pm = packing.packed_mask([3, 2], [3, 2], ['full', 'causal'])
    assert not pm[3, 0] and not pm[0, 3]     # samples never see each other
    with pytest.raises(ValueError, match='unknown attention modes'):
        packing.sample_mask([1], ['sideways'])
