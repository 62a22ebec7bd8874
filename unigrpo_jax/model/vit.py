"""Bagel's SigLIP NaViT vision tower and the connector into the LLM (``shared/docs/bagel.md`` §6).

Images of any size (multiples of the patch size) are cut into patches and packed into one
sequence (NaViT): every token carries a position id ``row * max_side + col`` on a fixed
``max_side``-wide grid and a segment id naming its image; attention is bidirectional within an
image and blocked between images. All arrays are unbatched packed sequences ``[tokens, ...]``.

The layers are stacked with ``nn.scan`` (params carry a leading ``layers`` axis). Param paths,
rooted where they live in the Bagel param tree::

    vit/patch_embedding/{kernel,bias}              [p*p*C, embed] / [embed]
    vit/position_embedding/embedding               [(image_size // patch)**2, embed]
    vit/layers/layer_norm{1,2}/{scale,bias}        [layers, embed]
    vit/layers/self_attn/{q,k,v}_proj/kernel       [layers, embed, heads, head_dim]
    vit/layers/self_attn/{q,k,v}_proj/bias         [layers, heads, head_dim]
    vit/layers/self_attn/out_proj/kernel           [layers, heads, head_dim, embed]
    vit/layers/self_attn/out_proj/bias             [layers, embed]
    vit/layers/mlp/fc1/{kernel,bias}               [layers, embed, mlp] / [layers, mlp]
    vit/layers/mlp/fc2/{kernel,bias}               [layers, mlp, embed] / [layers, embed]
    vit/post_layernorm/{scale,bias}                [embed]
    connector/fc1/{kernel,bias}                    [vit embed, llm embed] / [llm embed]
    connector/fc2/{kernel,bias}                    [llm embed, llm embed] / [llm embed]

The fixed sin-cos table added after the connector (``vit_pos_embed``) is not a param: its rows
come from ``posembed.sincos_2d``. Inside a parent module (``Bagel``) keep these paths at the
top level with ``nn.share_scope(parent, vision_encoder)`` in the parent's ``setup``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from unigrpo_jax.model.config import BagelConfig, ViTConfig
from unigrpo_jax.model.llm import logical
from unigrpo_jax.model.posembed import sincos_2d

Dtype = Any
Params = Any


def patchify(image: np.ndarray, patch_size: int, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Cuts one ``[H, W, C]`` (channels-last) image into row-major patches.

    Args:
      image: ``[H, W, C]``, H and W multiples of ``patch_size``, at most ``max_side`` patches
        per side.
      patch_size: ``p``, pixels per patch side.
      max_side: width of the position grid (``BagelConfig.vit_max_num_patch_per_side``).
    Returns:
      ``patches [h*w, p*p*C]`` with features ordered (row in patch, column in patch, channel)
      and ``position_ids [h*w]`` int32 = ``row * max_side + col`` (h = H/p, w = W/p).
    """
    height, width, _ = image.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f'image of {height}x{width} pixels is not a multiple of the ViT patch '
                         f'size {patch_size}; resize or crop it first')
    rows, cols = height // patch_size, width // patch_size
    if max(rows, cols) > max_side:
        raise ValueError(f'image of {rows}x{cols} patches exceeds the position grid of '
                         f'{max_side}x{max_side} patches; downscale it first')
    patches = einops.rearrange(np.asarray(image), '(h p) (w q) c -> (h w) (p q c)',
                               p=patch_size, q=patch_size)
    position_ids = (np.arange(rows)[:, None] * max_side + np.arange(cols)[None, :]).reshape(-1)
    return patches, position_ids.astype(np.int32)


def pack_images(images: Sequence[np.ndarray], patch_size: int,
                max_side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patchifies ``[H_i, W_i, C]`` images and packs them into one NaViT sequence.

    Returns:
      ``patches [N, p*p*C]``, ``position_ids [N]`` int32 and ``segment_ids [N]`` int32 (image
      index of each token), N = sum of the images' patch counts.
    """
    patches, position_ids = zip(*(patchify(im, patch_size, max_side) for im in images))
    segment_ids = np.repeat(np.arange(len(images), dtype=np.int32), [len(p) for p in patches])
    return np.concatenate(patches), np.concatenate(position_ids), segment_ids


def _layer_norm(eps: float, name: str) -> nn.LayerNorm:
    """LayerNorm with bias, statistics and output in float32 (two-pass variance, like torch)."""
    return nn.LayerNorm(epsilon=eps, dtype=jnp.float32, param_dtype=jnp.float32,
                        use_fast_variance=False, name=name,
                        scale_init=logical(nn.initializers.ones, ('norm',)),
                        bias_init=logical(nn.initializers.zeros, ('norm',)))


def _dense(features: int, in_axis: str | None, out_axis: str, dtype: Dtype,
           name: str) -> nn.Dense:
    """Linear layer with bias, float32 params, computed in ``dtype``."""
    return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, name=name,
                    kernel_init=logical(nn.initializers.lecun_normal(), (in_axis, out_axis)),
                    bias_init=logical(nn.initializers.zeros, (out_axis,)))


class Mlp(nn.Module):
    """``fc2(gelu_tanh(fc1(x)))``: SigLIP's MLP and Bagel's connector."""

    hidden: int
    out: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``[N, in] -> [N, out]``."""
        h = _dense(self.hidden, 'embed', 'mlp', self.dtype, 'fc1')(x)
        return _dense(self.out, 'mlp', 'embed', self.dtype, 'fc2')(nn.gelu(h, approximate=True))


class SelfAttention(nn.Module):
    """Multi-head attention with biased q/k/v/out projections and a boolean mask."""

    config: ViTConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        """``x [N, embed]``, ``mask [N, N]`` bool (query, key) -> ``[N, embed]``.

        Logits and softmax in float32, scale ``head_dim^-0.5``.
        """
        c = self.config
        dense = dict(dtype=self.dtype, param_dtype=jnp.float32,
                     bias_init=logical(nn.initializers.zeros, ('heads', 'kv')),
                     kernel_init=logical(nn.initializers.lecun_normal(),
                                         ('embed', 'heads', 'kv')))
        heads = (c.num_attention_heads, c.head_dim)
        q, k, v = (nn.DenseGeneral(heads, name=f'{n}_proj', **dense)(x) for n in 'qkv')
        out = jax.nn.dot_product_attention(q, k, v, mask=mask[None, None],
                                           scale=c.head_dim ** -0.5)
        return nn.DenseGeneral(
            c.hidden_size, axis=(-2, -1), dtype=self.dtype, param_dtype=jnp.float32,
            kernel_init=logical(nn.initializers.lecun_normal(), ('heads', 'kv', 'embed')),
            bias_init=logical(nn.initializers.zeros, ('embed',)), name='out_proj')(out)


class EncoderLayer(nn.Module):
    """Pre-LN SigLIP layer: ``x += attn(LN1(x)); x += mlp(LN2(x))``. Scanned over layers."""

    config: ViTConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> tuple[jax.Array, None]:
        """``x [N, embed]``, ``mask [N, N]`` bool -> ``(x [N, embed], None)``."""
        c = self.config
        h = _layer_norm(c.layer_norm_eps, 'layer_norm1')(x)
        x = x + SelfAttention(c, self.dtype, name='self_attn')(h, mask)
        h = _layer_norm(c.layer_norm_eps, 'layer_norm2')(x)
        mlp = Mlp(c.intermediate_size, c.hidden_size, self.dtype, name='mlp')
        return x + mlp(h), None


class SiglipVisionTower(nn.Module):
    """Patch + learned position embedding, the scanned pre-LN layers and ``post_layernorm``.

    The learned position table has ``config.num_positions`` rows, indexed by the position ids
    (``row * vit_max_num_patch_per_side + col``; both give 70 x 70 for the release).
    """

    config: ViTConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, patches: jax.Array, position_ids: jax.Array,
                 segment_ids: jax.Array) -> jax.Array:
        """``patches [N, p*p*C]``, ``position_ids [N]``, ``segment_ids [N]`` -> ``[N, embed]``.

        Tokens attend to every token with the same segment id. The output is float32
        (``post_layernorm``).
        """
        c = self.config
        x = _dense(c.hidden_size, None, 'embed', self.dtype, 'patch_embedding')(patches)
        x = x + nn.Embed(
            c.num_positions, c.hidden_size, dtype=self.dtype, param_dtype=jnp.float32,
            embedding_init=logical(nn.initializers.normal(0.02), ('positions', 'embed')),
            name='position_embedding')(position_ids)
        mask = segment_ids[:, None] == segment_ids[None, :]
        layers = nn.scan(
            EncoderLayer, variable_axes={'params': 0}, split_rngs={'params': True},
            in_axes=(nn.broadcast,), length=c.num_hidden_layers,
            metadata_params={nn.PARTITION_NAME: 'layers'})(c, self.dtype, name='layers')
        x, _ = layers(x, mask)
        return _layer_norm(c.layer_norm_eps, 'post_layernorm')(x)


class VisionEncoder(nn.Module):
    """SigLIP tower (``vit``), connector MLP (``connector``) and the fixed sin-cos positions."""

    config: ViTConfig
    max_side: int
    llm_hidden_size: int
    dtype: Dtype = jnp.float32

    def setup(self):
        self.vit = SiglipVisionTower(self.config, self.dtype)
        self.connector = Mlp(self.llm_hidden_size, self.llm_hidden_size, self.dtype)

    def features(self, patches: jax.Array, position_ids: jax.Array,
                 segment_ids: jax.Array) -> jax.Array:
        """SigLIP output after ``post_layernorm``: ``[N, vit embed]`` float32."""
        return self.vit(patches, position_ids, segment_ids)

    def __call__(self, patches: jax.Array, position_ids: jax.Array,
                 segment_ids: jax.Array) -> jax.Array:
        """LLM inputs ``connector(features) + vit_pos_embed[position_ids]``, ``[N, llm]`` f32."""
        out = self.connector(self.features(patches, position_ids, segment_ids))
        pos = sincos_2d(position_ids, self.max_side, self.llm_hidden_size)
        return out.astype(jnp.float32) + pos


def vision_encoder(config: BagelConfig) -> VisionEncoder:
    """The ``VisionEncoder`` of a Bagel config (which must have a ViT)."""
    if config.vit is None:
        raise ValueError('this Bagel config has no ViT (no vit_config.json in the checkpoint '
                         'directory); image understanding inputs cannot be embedded')
    return VisionEncoder(config.vit, config.vit_max_num_patch_per_side, config.llm.hidden_size,
                         jnp.dtype(config.dtype))


def init_params(config: BagelConfig, rng: jax.Array) -> Params:
    """Random ``{'vit': ..., 'connector': ...}`` params (float32 arrays, no axis metadata).

    ``vision_encoder(config).init`` gives the same tree boxed with logical axis names.
    """
    vit = config.vit
    patch_dim = vit.patch_size ** 2 * vit.num_channels
    variables = vision_encoder(config).init(
        rng, jnp.zeros((1, patch_dim), jnp.float32), jnp.zeros((1,), jnp.int32),
        jnp.zeros((1,), jnp.int32))
    return nn.unbox(variables['params'])


def _variables(params: Params) -> dict[str, Params]:
    return {'params': {'vit': params['vit'], 'connector': params['connector']}}


def siglip_features(params: Params, config: BagelConfig, patches: jax.Array,
                    position_ids: jax.Array, segment_ids: jax.Array) -> jax.Array:
    """SigLIP tower output ``[N, vit embed]`` float32 (after ``post_layernorm``).

    Args:
      params: a tree with (at least) the keys ``vit`` and ``connector``, e.g. all Bagel params.
      config: the Bagel config (ViT sizes, ``vit_max_num_patch_per_side``, compute dtype).
      patches: ``[N, p*p*C]`` packed patches (``pack_images``).
      position_ids: ``[N]`` int, ``row * max_side + col``.
      segment_ids: ``[N]`` int, tokens attend within their segment (image).
    """
    return vision_encoder(config).apply(_variables(params), patches, position_ids, segment_ids,
                                        method=VisionEncoder.features)


def vit_embeddings(params: Params, config: BagelConfig, patches: jax.Array,
                   position_ids: jax.Array, segment_ids: jax.Array) -> jax.Array:
    """LLM input embeddings of ViT tokens ``[N, llm_hidden]`` float32 (args as
    ``siglip_features``): ``connector(siglip(patches)) + vit_pos_embed[position_ids]``."""
    return vision_encoder(config).apply(_variables(params), patches, position_ids, segment_ids)
