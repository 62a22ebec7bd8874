"""The FLUX autoencoder of Bagel (modeling/autoencoder.py) as pure-functional Flax Linen modules.

Layout is NHWC throughout: images ``[B, H, W, in_channels]`` with pixels in [-1, 1], latents
``[B, h, w, z_channels]`` with ``h = H // downsample``. The autoencoder always runs in float32
(as in Bagel's inference). The param tree mirrors the checkpoint's module tree:
``encoder.down.{i}.block.{j}.conv1.weight`` is ``encoder/down_{i}/block_{j}/conv1/kernel``
(table in ``unigrpo_jax/loading/ae_table.py``); the decoder's ``up_{i}`` keeps checkpoint
index ``i`` (0 = highest resolution) although the levels run from the last index down.
See ``shared/docs/bagel.md`` §7.

``AEConfig.kind == 'identity'`` (ShapesEval's pixel space) has no params (``{}``): ``encode`` is
``scale * (x - shift)`` of the pixels and ``decode`` its inverse ``x / scale + shift``.
"""

from __future__ import annotations

import math
from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from unigrpo_jax.model.config import AEConfig

Params = dict[str, Any]

# The autoencoder is float32 end to end: no TF32/bf16 passes in its convolutions or attention.
_PRECISION = jax.lax.Precision.HIGHEST


def _conv(features: int, size: int, name: str, *, stride: int = 1,
          padding: tuple[tuple[int, int], tuple[int, int]] | None = None) -> nn.Conv:
    """A ``size x size`` Conv2d; default padding ``size // 2`` on every side, like PyTorch's."""
    if padding is None:
        padding = ((size // 2, size // 2),) * 2
    return nn.Conv(
        features, (size, size), strides=stride, padding=padding, dtype=jnp.float32,
        precision=_PRECISION, name=name,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), (None, None, 'conv_in', 'conv_out')),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ('conv_out',)))


def _group_norm(config: AEConfig, name: str) -> nn.GroupNorm:
    """PyTorch's GroupNorm: two-pass variance over contiguous channel groups, in float32."""
    return nn.GroupNorm(
        num_groups=config.groupnorm_groups, epsilon=config.groupnorm_eps, dtype=jnp.float32,
        use_fast_variance=False, name=name,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ('norm',)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ('norm',)))


class ResnetBlock(nn.Module):
    """``x + conv2(swish(GN2(conv1(swish(GN1(x))))))``, x through a 1x1 ``nin_shortcut`` when
    the channel count changes. ``[B, H, W, C_in] -> [B, H, W, features]``."""

    config: AEConfig
    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = _conv(self.features, 3, 'conv1')(nn.swish(_group_norm(self.config, 'norm1')(x)))
        h = _conv(self.features, 3, 'conv2')(nn.swish(_group_norm(self.config, 'norm2')(h)))
        if x.shape[-1] != self.features:
            x = _conv(self.features, 1, 'nin_shortcut')(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, q/k/v/proj_out 1x1 convs of GN(x),
    scale 1/sqrt(C). ``[B, H, W, C] -> [B, H, W, C]``."""

    config: AEConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        height, width, channels = x.shape[1:]
        normed = _group_norm(self.config, 'norm')(x)
        q, k, v = [einops.rearrange(_conv(channels, 1, name)(normed), 'b h w c -> b (h w) c')
                   for name in ('q', 'k', 'v')]
        scores = jnp.einsum('bqc,bkc->bqk', q, k, precision=_PRECISION) / math.sqrt(channels)
        out = jnp.einsum('bqk,bkc->bqc', jax.nn.softmax(scores, axis=-1), v, precision=_PRECISION)
        out = einops.rearrange(out, 'b (h w) c -> b h w c', h=height, w=width)
        return x + _conv(channels, 1, 'proj_out')(out)


class Downsample(nn.Module):
    """Zero-pad right and bottom by 1, then 3x3 conv stride 2. ``[B, H, W, C] -> [B, H//2, W//2, C]``."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _conv(x.shape[-1], 3, 'conv', stride=2, padding=((0, 1), (0, 1)))(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then 3x3 conv. ``[B, H, W, C] -> [B, 2H, 2W, C]``."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = einops.repeat(x, 'b h w c -> b (h 2) (w 2) c')
        return _conv(x.shape[-1], 3, 'conv')(x)


_RESAMPLERS = {'downsample': Downsample, 'upsample': Upsample}


class Level(nn.Module):
    """One resolution level: ``num_blocks`` ResnetBlocks (``block_{j}``), then the optional
    resampler ``resample`` ('downsample' or 'upsample'). ``[B, H, W, C_in] -> [B, H', W', features]``."""

    config: AEConfig
    features: int
    num_blocks: int
    resample: str | None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for j in range(self.num_blocks):
            x = ResnetBlock(self.config, self.features, name=f'block_{j}')(x)
        if self.resample is not None:
            x = _RESAMPLERS[self.resample](name=self.resample)(x)
        return x


class MidBlock(nn.Module):
    """``block_2(attn_1(block_1(x)))`` at the lowest resolution. ``[B, h, w, C] -> [B, h, w, C]``."""

    config: AEConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        x = ResnetBlock(self.config, channels, name='block_1')(x)
        x = AttnBlock(self.config, name='attn_1')(x)
        return ResnetBlock(self.config, channels, name='block_2')(x)


class Encoder(nn.Module):
    """Images ``[B, H, W, in_channels]`` -> moments ``[B, H//d, W//d, 2*z_channels]`` (mean
    channels, then logvar channels), ``d = config.downsample`` (each level floors odd sizes)."""

    config: AEConfig

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        cfg = self.config
        h = _conv(cfg.ch, 3, 'conv_in')(images)
        last = len(cfg.ch_mult) - 1
        for i, mult in enumerate(cfg.ch_mult):
            h = Level(cfg, cfg.ch * mult, cfg.num_res_blocks, None if i == last else 'downsample',
                      name=f'down_{i}')(h)
        h = MidBlock(cfg, name='mid')(h)
        h = nn.swish(_group_norm(cfg, 'norm_out')(h))
        return _conv(2 * cfg.z_channels, 3, 'conv_out')(h)


class Decoder(nn.Module):
    """Unscaled latents ``[B, h, w, z_channels]`` -> images ``[B, h*d, w*d, out_ch]``,
    ``d = config.downsample``. Level ``up_{i}`` works at ``ch * ch_mult[i]`` channels and runs
    from ``i = len(ch_mult) - 1`` down to 0; all but ``up_0`` end with an Upsample."""

    config: AEConfig

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        cfg = self.config
        h = _conv(cfg.ch * cfg.ch_mult[-1], 3, 'conv_in')(z)
        h = MidBlock(cfg, name='mid')(h)
        for i in reversed(range(len(cfg.ch_mult))):
            h = Level(cfg, cfg.ch * cfg.ch_mult[i], cfg.num_res_blocks + 1,
                      'upsample' if i else None, name=f'up_{i}')(h)
        h = nn.swish(_group_norm(cfg, 'norm_out')(h))
        return _conv(cfg.out_ch, 3, 'conv_out')(h)


class AutoEncoder(nn.Module):
    """Holds the params ``{'encoder': ..., 'decoder': ...}``. Calling it (used by ``init``) maps
    images ``[B, H, W, in_channels]`` through the encoder's mean and the decoder to
    ``[B, H', W', out_ch]``; use the functions below for real work."""

    config: AEConfig

    def setup(self):
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)

    def __call__(self, images: jax.Array) -> jax.Array:
        return self.decoder(self.encoder(images)[..., :self.config.z_channels])


def init_params(config: AEConfig, rng: jax.Array) -> Params:
    """Random params (logical-axis boxes removed), e.g. for tiny configs in tests; ``{}`` for
    the identity autoencoder."""
    if config.kind == 'identity':
        return {}
    images = jnp.zeros((1, config.downsample, config.downsample, config.in_channels), jnp.float32)
    return nn.unbox(AutoEncoder(config).init(rng, images)['params'])


def abstract_params(config: AEConfig) -> Params:
    """Shapes and dtypes of the params, without allocating them."""
    return jax.eval_shape(lambda: init_params(config, jax.random.key(0)))


def encoder_moments(params: Params, config: AEConfig, images: jax.Array) -> jax.Array:
    """Raw encoder output: images ``[B, H, W, in_channels]`` in [-1, 1] ->
    ``[B, H//d, W//d, 2*z_channels]`` (mean channels first, then logvar)."""
    if config.kind == 'identity':
        raise ValueError('the identity autoencoder has no encoder moments; use encode')
    return Encoder(config).apply({'params': params['encoder']}, images.astype(jnp.float32))


def encode(params: Params, config: AEConfig, images: jax.Array,
           rng: jax.Array | None = None) -> jax.Array:
    """Bagel's latents ``scale * (z - shift)``: images ``[B, H, W, in_channels]`` ->
    ``[B, H//d, W//d, z_channels]``. ``z`` is the posterior mean when ``rng`` is None, else the
    sample ``mean + exp(logvar / 2) * eps`` with ``eps ~ N(0, 1)`` drawn from ``rng``.
    The identity autoencoder uses ``z = images`` (``rng`` is ignored)."""
    if config.kind == 'identity':
        return config.scale_factor * (images.astype(jnp.float32) - config.shift_factor)
    mean, logvar = jnp.split(encoder_moments(params, config, images), 2, axis=-1)
    z = mean
    if rng is not None:
        z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)
    return config.scale_factor * (z - config.shift_factor)


def decode(params: Params, config: AEConfig, latents: jax.Array) -> jax.Array:
    """``Decoder(latents / scale + shift)``: latents ``[B, h, w, z_channels]`` ->
    images ``[B, h*d, w*d, out_ch]``, roughly in [-1, 1]."""
    z = latents.astype(jnp.float32) / config.scale_factor + config.shift_factor
    if config.kind == 'identity':
        return z
    return Decoder(config).apply({'params': params['decoder']}, z)


def to_uint8(images: jax.Array) -> jax.Array:
    """Bagel's pixels: ``trunc(clip(x * 0.5 + 0.5, 0, 1) * 255)``. ``[B, H, W, 3]`` float in
    [-1, 1] -> ``[B, H, W, 3]`` uint8."""
    # The float -> uint8 conversion truncates, like torch's ``.to(torch.uint8)``.
    return (jnp.clip(images * 0.5 + 0.5, 0.0, 1.0) * 255).astype(jnp.uint8)
