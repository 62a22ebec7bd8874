"""Checkpoint key -> param path of the FLUX autoencoder (``ae.safetensors`` -> ``AutoEncoder``).

Paths are inside the AutoEncoder's params ``{'encoder': ..., 'decoder': ...}``. The param tree
mirrors the checkpoint's module tree, with list indexes folded into names (``down.0`` ->
``down_0``, ``block.1`` -> ``block_1``). Every Conv2d (3x3, the 1x1 ``nin_shortcut`` and the
attention's 1x1 q/k/v/proj_out) becomes an ``nn.Conv`` (``weight`` -> ``kernel``); every
GroupNorm an ``nn.GroupNorm`` (``weight`` -> ``scale``).
"""

from __future__ import annotations

from unigrpo_jax.loading.rules import Rule

# (checkpoint module regex, param module path) of every ResnetBlock.
_RESNET_BLOCKS = (
    (r'(?P<net>encoder|decoder)\.mid\.(?P<block>block_[12])', '{net}/mid/{block}'),
    (r'encoder\.down\.(?P<level>\d+)\.block\.(?P<block>\d+)', 'encoder/down_{level}/block_{block}'),
    (r'decoder\.up\.(?P<level>\d+)\.block\.(?P<block>\d+)', 'decoder/up_{level}/block_{block}'),
)

_CONVS = (
    (r'(?P<net>encoder|decoder)\.(?P<conv>conv_in|conv_out)', '{net}/{conv}'),
    (r'(?P<net>encoder|decoder)\.mid\.attn_1\.(?P<conv>q|k|v|proj_out)', '{net}/mid/attn_1/{conv}'),
    (r'encoder\.down\.(?P<level>\d+)\.downsample\.conv', 'encoder/down_{level}/downsample/conv'),
    (r'decoder\.up\.(?P<level>\d+)\.upsample\.conv', 'decoder/up_{level}/upsample/conv'),
    *((key + r'\.(?P<conv>conv1|conv2|nin_shortcut)', path + '/{conv}')
      for key, path in _RESNET_BLOCKS),
)

_NORMS = (
    (r'(?P<net>encoder|decoder)\.norm_out', '{net}/norm_out'),
    (r'(?P<net>encoder|decoder)\.mid\.attn_1\.norm', '{net}/mid/attn_1/norm'),
    *((key + r'\.(?P<norm>norm1|norm2)', path + '/{norm}') for key, path in _RESNET_BLOCKS),
)

AE_RULES: list[Rule] = [
    *(Rule(key + r'\.weight', path + '/kernel', 'conv') for key, path in _CONVS),
    *(Rule(key + r'\.bias', path + '/bias') for key, path in _CONVS),
    *(Rule(key + r'\.weight', path + '/scale') for key, path in _NORMS),
    *(Rule(key + r'\.bias', path + '/bias') for key, path in _NORMS),
]
