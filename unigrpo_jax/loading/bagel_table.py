"""Checkpoint keys of Bagel's language model and heads -> Flax param paths.

Layers are stacked on a leading axis (``stack='i'``); each MoT weight exists once per expert,
unsuffixed for the understanding expert (``und``) and ``_moe_gen`` for the generation expert
(``gen``). The two ``pos_embed`` tables are fixed sin-cos tables, not params: see
``FIXED_TABLES``.
"""

from __future__ import annotations

from unigrpo_jax.loading.rules import Rule

EXPERTS = (('und', ''), ('gen', '_moe_gen'))

_LM = r'language_model\.model\.'
_LAYER = _LM + r'layers\.(?P<i>\d+)\.'
_OUT = 'language_model/layers/{e}/'

LLM_RULES: list[Rule] = [
    Rule(_LM + r'embed_tokens\.weight', 'language_model/embed_tokens/embedding'),
    Rule(_LM + r'norm\.weight', 'language_model/norm/scale'),
    Rule(_LM + r'norm_moe_gen\.weight', 'language_model/norm_gen/scale'),
    Rule(r'language_model\.lm_head\.weight', 'language_model/lm_head/kernel', 'linear'),
    *(rule for e, sfx in EXPERTS for rule in (
        Rule(_LAYER + rf'(?P<n>input_layernorm|post_attention_layernorm){sfx}\.weight',
             _OUT.format(e=e) + '{n}/scale', stack='i'),
        Rule(_LAYER + rf'self_attn\.(?P<p>[qkv]_proj){sfx}\.weight',
             _OUT.format(e=e) + '{p}/kernel', 'linear', stack='i'),
        Rule(_LAYER + rf'self_attn\.(?P<p>[qkv]_proj){sfx}\.bias',
             _OUT.format(e=e) + '{p}/bias', 'flat', stack='i'),
        Rule(_LAYER + rf'self_attn\.o_proj{sfx}\.weight',
             _OUT.format(e=e) + 'o_proj/kernel', 'linear', in_dims=2, stack='i'),
        Rule(_LAYER + rf'self_attn\.(?P<n>[qk]_norm){sfx}\.weight',
             _OUT.format(e=e) + '{n}/scale', stack='i'),
        Rule(_LAYER + rf'mlp{sfx}\.(?P<p>gate_proj|up_proj|down_proj)\.weight',
             _OUT.format(e=e) + '{p}/kernel', 'linear', stack='i'),
    )),
]

HEAD_RULES: list[Rule] = [
    Rule(r'time_embedder\.mlp\.(?P<n>[02])\.weight', 'time_embedder/mlp_{n}/kernel', 'linear'),
    Rule(r'time_embedder\.mlp\.(?P<n>[02])\.bias', 'time_embedder/mlp_{n}/bias'),
    Rule(r'(?P<n>vae2llm|llm2vae)\.weight', '{n}/kernel', 'linear'),
    Rule(r'(?P<n>vae2llm|llm2vae)\.bias', '{n}/bias'),
]

# Fixed 2-D sin-cos tables stored in the checkpoint: key -> (BagelConfig field giving the grid
# side, what the width is). The converter checks them against ``posembed.sincos_2d_table``.
FIXED_TABLES = {
    'latent_pos_embed.pos_embed': 'max_latent_size',
    'vit_pos_embed.pos_embed': 'vit_max_num_patch_per_side',
}
