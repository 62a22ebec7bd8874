"""Qwen2 Mixture-of-Transformers decoder: Bagel's language model with two experts per layer.

Every layer holds two complete copies of its weights: the understanding expert (``und``: text,
image markers, ViT tokens) and the generation expert (``gen``: VAE latent tokens). A forward
call takes a packed sequence laid out as ``[und tokens..., gen tokens...]`` with ``n_und`` static,
so each expert runs on a contiguous slice and no compute is spent on the other expert's tokens;
attention is one joint softmax over the cache and all new tokens (their order does not matter
to attention, positions and masks are explicit).

The layers are stacked with ``nn.scan`` (params carry a leading ``layers`` axis) so that the
28-layer 7B model compiles as one layer. Param paths::

    embed_tokens/embedding                 [vocab, embed]
    layers/{und,gen}/input_layernorm/scale [layers, embed]
    layers/{und,gen}/q_proj/{kernel,bias}  [layers, embed, heads, head_dim] / [layers, heads, head_dim]
    layers/{und,gen}/k_proj, v_proj        [layers, embed, kv_heads, head_dim] ...
    layers/{und,gen}/q_norm, k_norm/scale  [layers, head_dim]
    layers/{und,gen}/o_proj/kernel         [layers, heads, head_dim, embed]
    layers/{und,gen}/post_attention_layernorm/scale
    layers/{und,gen}/{gate,up}_proj/kernel [layers, embed, mlp];  down_proj/kernel [layers, mlp, embed]
    norm/scale, norm_gen/scale             [embed]
    lm_head/kernel                         [embed, vocab]
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from unigrpo_jax.model import attention
from unigrpo_jax.model.config import LLMConfig
from unigrpo_jax.model.kv_cache import write_rows

Dtype = Any


def logical(init, axes: tuple[str | None, ...]):
    """An initializer that tags its param with logical axis names for sharding rules."""
    return nn.with_logical_partitioning(init, axes)


class RMSNorm(nn.Module):
    """Qwen2 RMSNorm: ``x * rsqrt(mean(x^2) + eps)`` in float32, cast back, times the gain."""

    eps: float
    axis_name: str = 'norm'

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param('scale', logical(nn.initializers.ones, (self.axis_name,)),
                           (x.shape[-1],), jnp.float32)
        xf = x.astype(jnp.float32)
        normed = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return normed.astype(x.dtype) * scale.astype(x.dtype)


class Expert(nn.Module):
    """One expert's weights of one layer, used in two halves around the joint attention."""

    config: LLMConfig
    dtype: Dtype

    def setup(self):
        c = self.config
        init = nn.initializers.normal(0.02)
        dense = dict(dtype=self.dtype, param_dtype=jnp.float32)
        self.input_layernorm = RMSNorm(c.rms_norm_eps)
        self.q_proj = nn.DenseGeneral(
            (c.num_attention_heads, c.head_dim), use_bias=True, **dense,
            kernel_init=logical(init, ('embed', 'heads', 'kv')),
            bias_init=logical(nn.initializers.zeros, ('heads', 'kv')))
        kv_features = (c.num_key_value_heads, c.head_dim)
        self.k_proj = nn.DenseGeneral(
            kv_features, use_bias=True, **dense,
            kernel_init=logical(init, ('embed', 'kv_heads', 'kv')),
            bias_init=logical(nn.initializers.zeros, ('kv_heads', 'kv')))
        self.v_proj = nn.DenseGeneral(
            kv_features, use_bias=True, **dense,
            kernel_init=logical(init, ('embed', 'kv_heads', 'kv')),
            bias_init=logical(nn.initializers.zeros, ('kv_heads', 'kv')))
        self.q_norm = RMSNorm(c.rms_norm_eps, axis_name='kv')
        self.k_norm = RMSNorm(c.rms_norm_eps, axis_name='kv')
        self.o_proj = nn.DenseGeneral(
            c.hidden_size, axis=(-2, -1), use_bias=False, **dense,
            kernel_init=logical(init, ('heads', 'kv', 'embed')))
        self.post_attention_layernorm = RMSNorm(c.rms_norm_eps)
        mlp_init = logical(init, ('embed', 'mlp'))
        self.gate_proj = nn.Dense(c.intermediate_size, use_bias=False, kernel_init=mlp_init,
                                  **dense)
        self.up_proj = nn.Dense(c.intermediate_size, use_bias=False, kernel_init=mlp_init, **dense)
        self.down_proj = nn.Dense(c.hidden_size, use_bias=False,
                                  kernel_init=logical(init, ('mlp', 'embed')), **dense)

    def qkv(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``x [b, s, embed]`` -> q ``[b, s, heads, head_dim]``, k, v ``[b, s, kv_heads, head_dim]``.

        q and k are RMS-normed per head (before RoPE, which the layer applies).
        """
        h = self.input_layernorm(x)
        q = self.q_norm(self.q_proj(h))
        k = self.k_norm(self.k_proj(h))
        return q, k, self.v_proj(h)

    def finish(self, x: jax.Array, attn: jax.Array) -> jax.Array:
        """Residual output projection and gated SiLU MLP. ``attn [b, s, heads, head_dim]``."""
        x = x + self.o_proj(attn)
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(nn.silu(self.gate_proj(h)) * self.up_proj(h))


def _split_apply(fn_und, fn_gen, x: jax.Array, n_und: int):
    """Applies ``fn_und`` to ``x[:, :n_und]`` and ``fn_gen`` to the rest; concatenates outputs."""
    parts = []
    if n_und > 0:
        parts.append(fn_und(x[:, :n_und]))
    if n_und < x.shape[1]:
        parts.append(fn_gen(x[:, n_und:]))
    if len(parts) == 1:
        return parts[0]
    return jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=1), *parts)


class MoTLayer(nn.Module):
    """One decoder layer (pre-norm), both experts, joint attention, optional cache write."""

    config: LLMConfig
    dtype: Dtype
    n_und: int
    write_cache: bool
    attention_impl: str = 'xla'

    @nn.compact
    def __call__(self, x, layer_cache, positions, new_mask, cache_len):
        """
        Args:
          x: ``[batch, seq, embed]``, und tokens first (``n_und`` of them).
          layer_cache: ``(k, v)`` each ``[batch, cache_size, kv_heads, head_dim]``, or None.
          positions: ``[batch, seq]`` rope ids.
          new_mask: ``[batch or 1, seq, seq]`` bool mask among the new tokens.
          cache_len: ``[batch]`` valid cached rows (write offset), or None without a cache.
        Returns:
          ``(x, layer_cache)``: the layer output and, if ``write_cache``, the cache with the new
          rows written at ``cache_len`` (else the new ``(k, v)`` of the segment).
        """
        und = Expert(self.config, self.dtype, name='und')
        gen = Expert(self.config, self.dtype, name='gen')
        q, k, v = _split_apply(und.qkv, gen.qkv, x, self.n_und)
        cos, sin = attention.rope_tables(positions, self.config.head_dim, self.config.rope_theta)
        q, k = attention.apply_rope(q, cos, sin), attention.apply_rope(k, cos, sin)
        cache_k, cache_v = layer_cache if layer_cache is not None else (None, None)
        attn = attention.joint_attention(q, k, v, new_mask, cache_k, cache_v, cache_len,
                                         impl=self.attention_impl)
        n = self.n_und
        out = _split_apply(lambda xu: und.finish(xu, attn[:, :n]),
                           lambda xg: gen.finish(xg, attn[:, n:]), x, n)
        if self.write_cache:
            return out, (write_rows(cache_k, k, cache_len), write_rows(cache_v, v, cache_len))
        return out, (k, v)


class LanguageModel(nn.Module):
    """Token embedding, the scanned MoT layers, the two final norms and ``lm_head``."""

    config: LLMConfig
    dtype: Dtype = jnp.float32
    attention_impl: str = 'xla'

    def setup(self):
        c = self.config
        self.embed_tokens = nn.Embed(
            c.vocab_size, c.hidden_size, param_dtype=jnp.float32,
            embedding_init=logical(nn.initializers.normal(1.0), ('vocab', 'embed')))
        self.norm = RMSNorm(c.rms_norm_eps)
        self.norm_gen = RMSNorm(c.rms_norm_eps)
        self.lm_head = nn.Dense(c.vocab_size, use_bias=False, dtype=jnp.float32,
                                param_dtype=jnp.float32,
                                kernel_init=logical(nn.initializers.normal(0.02),
                                                    ('embed', 'vocab')))

    def embed(self, ids: jax.Array) -> jax.Array:
        """``[batch, seq]`` int -> ``[batch, seq, embed]`` float32."""
        return self.embed_tokens(ids).astype(jnp.float32)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """``[..., embed]`` final hidden -> ``[..., vocab]`` float32 logits."""
        return self.lm_head(hidden.astype(jnp.float32))

    @nn.compact
    def __call__(self, x, positions, new_mask, *, n_und: int, cache=None, cache_len=None,
                 write_cache: bool = False, remat_policy: str | None = None):
        """Runs all layers and the expert-routed final norm.

        Args:
          x: ``[batch, seq, embed]`` input embeddings, the ``n_und`` und tokens first.
          positions: ``[batch, seq]`` int rope ids.
          new_mask: ``[batch or 1, seq, seq]`` bool attention mask among the new tokens.
          n_und: static number of understanding-expert tokens.
          cache: ``(k, v)`` each ``[layers, batch, size, kv_heads, head_dim]`` or None.
          cache_len: ``[batch]`` valid cached rows.
          write_cache: return the cache with this segment's rows written at ``cache_len``.
          remat_policy: None, or a name in ``jax.checkpoint_policies`` to rematerialise layers.
        Returns:
          ``(hidden [batch, seq, embed] float32, kv)`` where kv is the updated cache
          (``write_cache``) or the segment's own ``(k, v)`` ``[layers, batch, seq, kv_heads, hd]``.
        """
        if write_cache and cache is None:
            raise ValueError('write_cache=True needs a cache')
        layer_cls = MoTLayer
        if remat_policy is not None:
            layer_cls = nn.remat(MoTLayer, policy=getattr(jax.checkpoint_policies, remat_policy),
                                 prevent_cse=False)
        scanned = nn.scan(
            layer_cls, variable_axes={'params': 0}, split_rngs={'params': True},
            in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
            length=self.config.num_hidden_layers,
            metadata_params={nn.PARTITION_NAME: 'layers'})
        layers = scanned(self.config, self.dtype, n_und, write_cache, self.attention_impl,
                         name='layers')
        h, kv = layers(x.astype(self.dtype), cache, positions, new_mask, cache_len)
        h = _split_apply(self.norm, self.norm_gen, h, n_und).astype(jnp.float32)
        return h, kv
