"""The Bagel model: the MoT language model plus its heads and connectors, as one Linen module.

Params (top level)::

    language_model/...        the Qwen2 MoT decoder, the AR head ``lm_head`` (see llm.py)
    time_embedder/mlp_0, mlp_2  timestep embedder (256 sin-cos features -> SiLU MLP)
    vae2llm                   [latent_token_dim, embed]  latent token -> LLM input
    llm2vae                   [embed, latent_token_dim]  the flow head: LLM hidden -> velocity
    vit/..., connector/...    SigLIP NaViT tower and its connector (only with a ViT config)

The two fixed sin-cos position tables of the checkpoint are not params: rows are computed from
position ids (``posembed.sincos_2d``). The module is used purely: ``Bagel(cfg).apply({'params':
params}, ..., method=...)``; ``unigrpo_jax.model.context`` wraps the methods as functions of
explicit params and KV caches.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from unigrpo_jax.model import posembed, vit
from unigrpo_jax.model.config import BagelConfig
from unigrpo_jax.model.llm import LanguageModel, logical


def timestep_features(t: jax.Array, dim: int) -> jax.Array:
    """Bagel's sinusoidal timestep features, cos first: ``[...] -> [..., dim]`` float32.

    ``f_k = exp(-ln(10000) k / (dim/2))``; t is the flow time in [0, 1] used directly.
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[..., None] * freqs
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class TimestepEmbedder(nn.Module):
    """``TimeEmb(t) = mlp_2(SiLU(mlp_0(features(t))))``."""

    hidden_size: int
    frequency_embedding_size: int

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        e = timestep_features(t, self.frequency_embedding_size)
        init = nn.initializers.normal(0.02)
        bias = logical(nn.initializers.zeros, ('embed',))
        h = nn.Dense(self.hidden_size, kernel_init=logical(init, ('time_freq', 'embed')),
                     bias_init=bias, name='mlp_0')(e)
        return nn.Dense(self.hidden_size, kernel_init=logical(init, ('embed', 'embed_out')),
                        bias_init=bias, name='mlp_2')(nn.silu(h))


class Bagel(nn.Module):
    config: BagelConfig

    def setup(self):
        c = self.config
        e = c.llm.hidden_size
        init = nn.initializers.normal(0.02)
        self.language_model = LanguageModel(c.llm, jnp.dtype(c.dtype), c.attention)
        self.time_embedder = TimestepEmbedder(e, c.frequency_embedding_size)
        self.vae2llm = nn.Dense(e, kernel_init=logical(init, ('latent', 'embed')),
                                bias_init=logical(nn.initializers.zeros, ('embed',)))
        self.llm2vae = nn.Dense(c.latent_token_dim, kernel_init=logical(init, ('embed', 'latent')),
                                bias_init=logical(nn.initializers.zeros, ('latent',)))
        if c.vit is not None:
            self.vision = vit.vision_encoder(c)
            nn.share_scope(self, self.vision)  # params at the top: vit/..., connector/...

    # --- inputs -----------------------------------------------------------------------------
    def embed_text(self, ids: jax.Array) -> jax.Array:
        """``[batch, seq]`` token ids -> ``[batch, seq, embed]``."""
        return self.language_model.embed(ids)

    def embed_latents(self, x_t: jax.Array, t: jax.Array, position_ids: jax.Array) -> jax.Array:
        """Latent tokens -> LLM inputs: ``vae2llm(x_t) + TimeEmb(t) + pos_table[position_ids]``.

        Args:
          x_t: ``[batch, tokens, latent_token_dim]`` float32.
          t: ``[batch]`` (one time per image) or ``[batch, tokens]`` flow times.
          position_ids: ``[batch or 1, tokens]`` rows of the ``max_latent_size``-wide grid.
        """
        t = t[:, None] if t.ndim == 1 else t
        pos = posembed.sincos_2d(position_ids, self.config.max_latent_size,
                                 self.config.llm.hidden_size)
        return self.vae2llm(x_t.astype(jnp.float32)) + self.time_embedder(t) + pos

    def embed_vit(self, patches: jax.Array, position_ids: jax.Array,
                  segment_ids: jax.Array) -> jax.Array:
        """Packed ViT patches ``[tokens, p*p*C]`` -> LLM inputs ``[tokens, embed]``."""
        return self.vision(patches, position_ids, segment_ids)

    # --- the decoder and its heads ------------------------------------------------------------
    def decode(self, x, positions, new_mask, *, n_und: int, cache=None, cache_len=None,
               write_cache: bool = False, remat_policy: str | None = None):
        """The MoT decoder (see ``LanguageModel.__call__``); ``remat_policy`` defaults to the
        config's."""
        return self.language_model(x, positions, new_mask, n_und=n_und, cache=cache,
                                   cache_len=cache_len, write_cache=write_cache,
                                   remat_policy=remat_policy or self.config.remat_policy)

    def lm_logits(self, hidden: jax.Array) -> jax.Array:
        """The AR head: ``[..., embed]`` -> ``[..., vocab]`` float32."""
        return self.language_model.logits(hidden)

    def velocity(self, hidden: jax.Array) -> jax.Array:
        """The flow head: ``[..., embed]`` -> ``[..., latent_token_dim]`` float32."""
        return self.llm2vae(hidden.astype(jnp.float32))

    def __call__(self, ids, x_t, t, latent_pos, patches=None, vit_pos=None, vit_seg=None):
        """Touches every param once (for ``init``): one und token per id, then the latents."""
        x = jnp.concatenate([self.embed_text(ids), self.embed_latents(x_t, t, latent_pos)], 1)
        n = x.shape[1]
        h, _ = self.decode(x, jnp.zeros(x.shape[:2], jnp.int32), jnp.ones((1, n, n), bool),
                           n_und=ids.shape[1])
        out = (self.lm_logits(h[:, :ids.shape[1]]), self.velocity(h[:, ids.shape[1]:]))
        if patches is not None:
            out += (self.embed_vit(patches, vit_pos, vit_seg),)
        return out


# The modules that compute in float32 whatever the compute dtype (``lm_head``: float32 logits;
# the latent and timestep embedders and the flow head: float32 in and out). The compute-dtype
# layers cast their params to the compute dtype themselves.
FLOAT32_MODULES = ('lm_head', 'vae2llm', 'llm2vae', 'time_embedder')


def compute_params(params, dtype) -> dict:
    """``params`` (float32) as the model computes with them at compute dtype ``dtype``: cast to
    it, except the params of ``FLOAT32_MODULES`` (kept float32). A forward with the result
    equals the forward with ``params`` bitwise, at about half the memory for bfloat16 (the
    copy the rollout samples from)."""
    def cast(path, x):
        names = {str(getattr(k, 'key', getattr(k, 'name', k))) for k in path}
        return x if names & set(FLOAT32_MODULES) else x.astype(dtype)
    return jax.tree_util.tree_map_with_path(cast, params)


def init_params(config: BagelConfig, rng: jax.Array) -> dict:
    """Random params of the Bagel model (float32), boxed with their logical axis names.

    Use ``flax.linen.unbox`` for plain arrays and ``nn.get_partition_spec`` for the names.
    """
    model = Bagel(config)
    ids = jnp.zeros((1, 1), jnp.int32)
    x_t = jnp.zeros((1, 1, config.latent_token_dim), jnp.float32)
    args = (ids, x_t, jnp.zeros((1,)), jnp.zeros((1, 1), jnp.int32))
    if config.vit is not None:
        p = config.vit.patch_size
        args += (jnp.zeros((1, p * p * config.vit.num_channels)), jnp.zeros((1,), jnp.int32),
                 jnp.zeros((1,), jnp.int32))
    return model.init(rng, *args)['params']


def abstract_params(config: BagelConfig) -> dict:
    """Shapes/dtypes of the params (boxed with logical axes), without allocating them."""
    return jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
