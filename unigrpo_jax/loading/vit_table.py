"""Checkpoint keys of the SigLIP tower and the connector -> ``vit/...`` and ``connector/...``.

``vit_pos_embed.pos_embed`` is the fixed sin-cos table (``posembed.sincos_2d_table``), not a
param, and has no rule. Param layouts: see ``unigrpo_jax.model.vit``.
"""

from __future__ import annotations

from unigrpo_jax.loading.rules import Rule

_VM = r'vit_model\.vision_model\.'
_LAYER = _VM + r'encoder\.layers\.(?P<i>\d+)\.'

VIT_RULES: list[Rule] = [
    Rule(_VM + r'embeddings\.patch_embedding\.weight', 'vit/patch_embedding/kernel', 'linear'),
    Rule(_VM + r'embeddings\.patch_embedding\.bias', 'vit/patch_embedding/bias'),
    Rule(_VM + r'embeddings\.position_embedding\.weight', 'vit/position_embedding/embedding'),
    Rule(_LAYER + r'(?P<ln>layer_norm[12])\.weight', 'vit/layers/{ln}/scale', stack='i'),
    Rule(_LAYER + r'(?P<ln>layer_norm[12])\.bias', 'vit/layers/{ln}/bias', stack='i'),
    Rule(_LAYER + r'self_attn\.(?P<p>[qkv]_proj)\.weight', 'vit/layers/self_attn/{p}/kernel',
         'linear', stack='i'),
    Rule(_LAYER + r'self_attn\.(?P<p>[qkv]_proj)\.bias', 'vit/layers/self_attn/{p}/bias',
         'flat', stack='i'),
    Rule(_LAYER + r'self_attn\.out_proj\.weight', 'vit/layers/self_attn/out_proj/kernel',
         'linear', in_dims=2, stack='i'),
    Rule(_LAYER + r'self_attn\.out_proj\.bias', 'vit/layers/self_attn/out_proj/bias', stack='i'),
    Rule(_LAYER + r'mlp\.(?P<fc>fc[12])\.weight', 'vit/layers/mlp/{fc}/kernel', 'linear',
         stack='i'),
    Rule(_LAYER + r'mlp\.(?P<fc>fc[12])\.bias', 'vit/layers/mlp/{fc}/bias', stack='i'),
    Rule(_VM + r'post_layernorm\.weight', 'vit/post_layernorm/scale'),
    Rule(_VM + r'post_layernorm\.bias', 'vit/post_layernorm/bias'),
    Rule(r'connector\.(?P<fc>fc[12])\.weight', 'connector/{fc}/kernel', 'linear'),
    Rule(r'connector\.(?P<fc>fc[12])\.bias', 'connector/{fc}/bias'),
]
