"""Bagel model configuration: frozen dataclasses read from a checkpoint directory.

A Bagel release folder has no single config file; the official loader builds ``BagelConfig`` in
code from ``llm_config.json`` and ``vit_config.json`` plus overrides (``qk_norm=True``, untied
``lm_head``, ViT ``num_hidden_layers - 1``; see ``shared/docs/bagel.md`` §1). ``load_config``
reproduces that, reading every size from the files so that nothing is tied to one checkpoint.
The configs are hashable so they can be static arguments of ``jax.jit``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from unigrpo_jax.errors import ConfigError

# Bagel's defaults for the fields its loader sets in code (app.py:50-60).
_RELEASE_BAGEL_DEFAULTS = dict(
    latent_patch_size=2,
    max_latent_size=64,
    vit_max_num_patch_per_side=70,
    connector_act='gelu_pytorch_tanh',
    interpolate_pos=False,
    timestep_shift=1.0,
)

# The FLUX.1 autoencoder values hard-coded in Bagel's ``load_ae`` (autoencoder.py:339-351).
_FLUX_AE_DEFAULTS = dict(
    resolution=256,
    in_channels=3,
    downsample=8,
    ch=128,
    out_ch=3,
    ch_mult=(1, 2, 4, 4),
    num_res_blocks=2,
    z_channels=16,
    scale_factor=0.3611,
    shift_factor=0.1159,
    groupnorm_groups=32,
    groupnorm_eps=1e-6,
)


@dataclasses.dataclass(frozen=True)
class LLMConfig:
    """Qwen2 Mixture-of-Transformers decoder (both experts share every size)."""

    vocab_size: int  # rows of the token embedding and of lm_head
    hidden_size: int  # width of the residual stream
    intermediate_size: int  # width of the SwiGLU MLPs
    num_hidden_layers: int  # decoder layers, each with an understanding and a generation expert
    num_attention_heads: int  # query heads (head_dim = hidden_size / num_attention_heads)
    num_key_value_heads: int  # key/value heads (grouped-query attention), divides the query heads
    rope_theta: float = 1e6  # RoPE base frequency
    rms_norm_eps: float = 1e-6  # eps of the RMSNorms

    @property
    def head_dim(self) -> int:
        # Bagel never reads a head_dim field (modeling_qwen2.py:236).
        return self.hidden_size // self.num_attention_heads

    def validate(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f'llm hidden_size={self.hidden_size} is not divisible by '
                f'num_attention_heads={self.num_attention_heads}')
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f'llm num_attention_heads={self.num_attention_heads} is not divisible by '
                f'num_key_value_heads={self.num_key_value_heads}')
        if self.head_dim % 2:
            raise ConfigError(f'llm head_dim={self.head_dim} must be even for RoPE')


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """SigLIP NaViT vision tower. ``num_hidden_layers`` is the number of layers *used*."""

    hidden_size: int  # width of the tower
    intermediate_size: int  # width of its MLPs
    num_hidden_layers: int  # layers used (vit_config.json's count minus one, as Bagel uses it)
    num_attention_heads: int  # attention heads
    patch_size: int  # pixels per patch side
    image_size: int  # pixels per side of the image the learned position table was trained at
    num_channels: int = 3  # input image channels
    layer_norm_eps: float = 1e-6  # eps of the LayerNorms

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_positions(self) -> int:
        """Rows of SigLIP's learned position table: ``(image_size // patch_size)^2``."""
        return (self.image_size // self.patch_size) ** 2


AE_KINDS = ('flux', 'identity')


@dataclasses.dataclass(frozen=True)
class AEConfig:
    """The autoencoder with Bagel's latent scale and shift.

    ``kind='flux'``: the FLUX encoder + decoder (every field below is used).
    ``kind='identity'``: pixel space (ShapesEval), latents ``scale * (x - shift)`` of the pixels
    themselves; no params, ``z_channels == in_channels``, downsample 1, the conv fields unused.
    """

    in_channels: int = 3  # image channels the encoder reads
    out_ch: int = 3  # image channels the decoder writes
    ch: int = 128  # base width of the conv levels
    # Widths of the conv levels in units of ch; every level but the last halves the resolution.
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2  # ResNet blocks per encoder level (the decoder has one more)
    z_channels: int = 16  # latent channels
    scale_factor: float = 0.3611  # latents are scale_factor * (z - shift_factor)
    shift_factor: float = 0.1159  # subtracted before the scale (see scale_factor)
    groupnorm_groups: int = 32  # groups of the GroupNorms
    groupnorm_eps: float = 1e-6  # eps of the GroupNorms
    resolution: int = 256  # the release's nominal resolution (exported; no size depends on it)
    kind: str = 'flux'  # one of AE_KINDS: 'flux' (the FLUX autoencoder) or 'identity' (pixels)

    def __post_init__(self):
        if self.kind not in AE_KINDS:
            raise ConfigError(f'autoencoder kind={self.kind!r}; expected one of {AE_KINDS}')
        if self.kind == 'identity' and self.z_channels != self.in_channels:
            raise ConfigError(
                f'identity autoencoder has z_channels={self.z_channels} but in_channels='
                f'{self.in_channels}: its latents are the pixels, so set z_channels=in_channels')

    @property
    def downsample(self) -> int:
        """Image pixels per latent pixel side: ``2^(len(ch_mult) - 1)``, 1 for ``identity``. A
        ``downsample`` key beside the fields (``ae_config.json``, ``model.random.ae``) is
        checked against it (when absent: 8 for flux, 1 for identity)."""
        if self.kind == 'identity':
            return 1
        return 2 ** (len(self.ch_mult) - 1)


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
    """Bagel's special token ids (data/data_utils.py:130-165)."""

    bos: int  # <|im_start|>
    eos: int  # <|im_end|>
    start_of_image: int  # <|vision_start|>
    end_of_image: int  # <|vision_end|>


@dataclasses.dataclass(frozen=True)
class BagelConfig:
    """The whole model: LLM, optional ViT, autoencoder and Bagel's connectors."""

    llm: LLMConfig  # the Mixture-of-Transformers decoder
    vit: ViTConfig | None  # the vision tower (None: none; text-to-image does not read it)
    ae: AEConfig  # the autoencoder between images and latents
    tokens: SpecialTokens  # the special token ids (a run takes them from its tokenizer)
    latent_patch_size: int = 2  # latent pixels per latent token side
    # Side of the latent tokens' position grid: an image has at most this many tokens per side
    # (max_latent_size * latent_downsample pixels).
    max_latent_size: int = 64
    vit_max_num_patch_per_side: int = 70  # patches per side of the ViT position grid
    # Shift of the flow times SFT trains on (shapes/sft/objective.py); the RL and evaluation grids take
    # theirs from rollout.shift and eval.shift.
    timestep_shift: float = 1.0
    frequency_embedding_size: int = 256  # width of the sinusoidal timestep features
    # Compute dtype of the transformer ('float32' for parity, 'bfloat16' for speed; a config's
    # ``model.dtype``). Params, log-probs, the ODE/SDE state and the autoencoder stay float32.
    dtype: str = 'float32'
    # Rematerialisation of the decoder layers in the backward pass: None, or a policy name of
    # ``jax.checkpoint_policies`` (e.g. 'nothing_saveable', 'dots_with_no_batch_dims_saveable';
    # a config's ``parallelism.remat_policy``).
    remat_policy: str | None = None
    # Attention kernel (``attention.KERNELS``, from a config's ``model.attention`` by
    # ``attention.kernel_for``): 'xla' (explicit float32 softmax; the parity path) or a fused
    # kernel for image blocks ('pallas' on TPU, 'cudnn' on GPUs, 'dot_product' elsewhere).
    attention: str = 'xla'

    @property
    def latent_channels(self) -> int:
        return self.ae.z_channels

    @property
    def latent_token_dim(self) -> int:
        """Features per latent token: ``patch * patch * z_channels``."""
        return self.latent_patch_size ** 2 * self.ae.z_channels

    @property
    def latent_downsample(self) -> int:
        """Image pixels per latent token side: VAE downsample x latent patch."""
        return self.ae.downsample * self.latent_patch_size

    def replace(self, **kw: Any) -> 'BagelConfig':
        return dataclasses.replace(self, **kw)


def _read_json(path: str) -> dict[str, Any]:
    if not os.path.exists(path):
        raise ConfigError(f'missing config file {path}')
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f'{path} is not valid JSON: {e}') from e


def _require(d: dict[str, Any], key: str, path: str) -> Any:
    if key not in d:
        raise ConfigError(f'{path} has no field {key!r}')
    return d[key]


def llm_config_from_json(path: str) -> LLMConfig:
    d = _read_json(path)
    fields = ('vocab_size', 'hidden_size', 'intermediate_size', 'num_hidden_layers',
              'num_attention_heads', 'num_key_value_heads')
    cfg = LLMConfig(
        **{k: int(_require(d, k, path)) for k in fields},
        rope_theta=float(d.get('rope_theta', 1e6)),
        rms_norm_eps=float(d.get('rms_norm_eps', 1e-6)),
    )
    if d.get('rope_scaling'):
        raise ConfigError(f'{path}: rope_scaling={d["rope_scaling"]!r} is not supported by Bagel')
    cfg.validate()
    return cfg


def vit_config_from_json(path: str) -> ViTConfig:
    """SigLIP config as Bagel's loader uses it: one layer fewer than the json says."""
    d = _read_json(path)
    layers = int(_require(d, 'num_hidden_layers', path)) - 1
    return ViTConfig(
        hidden_size=int(_require(d, 'hidden_size', path)),
        intermediate_size=int(_require(d, 'intermediate_size', path)),
        num_hidden_layers=layers,
        num_attention_heads=int(_require(d, 'num_attention_heads', path)),
        patch_size=int(_require(d, 'patch_size', path)),
        image_size=int(_require(d, 'image_size', path)),
        num_channels=int(d.get('num_channels', 3)),
        layer_norm_eps=float(d.get('layer_norm_eps', 1e-6)),
    )


def ae_config_from_dict(d: dict[str, Any]) -> AEConfig:
    """An AEConfig from ``ae_config.json`` data; missing fields take the FLUX release values.

    ``kind='identity'`` (pixel space) defaults ``z_channels`` to ``in_channels`` and
    ``downsample`` to 1.
    """
    kind = str(d.get('kind', 'flux'))
    if kind == 'identity':
        in_channels = d.get('in_channels', _FLUX_AE_DEFAULTS['in_channels'])
        d = {**_FLUX_AE_DEFAULTS, 'z_channels': in_channels, 'downsample': 1, **d}
    else:
        d = {**_FLUX_AE_DEFAULTS, **d}
    cfg = AEConfig(
        in_channels=int(d['in_channels']), out_ch=int(d['out_ch']), ch=int(d['ch']),
        ch_mult=tuple(int(m) for m in d['ch_mult']), num_res_blocks=int(d['num_res_blocks']),
        z_channels=int(d['z_channels']), scale_factor=float(d['scale_factor']),
        shift_factor=float(d['shift_factor']), groupnorm_groups=int(d['groupnorm_groups']),
        groupnorm_eps=float(d['groupnorm_eps']), resolution=int(d['resolution']), kind=kind)
    if kind == 'identity':
        if int(d['downsample']) != 1:
            raise ConfigError(f'identity autoencoder has downsample={d["downsample"]}, expected 1')
        return cfg
    if int(d['downsample']) != cfg.downsample:
        raise ConfigError(
            f'autoencoder downsample={d["downsample"]} does not match ch_mult={list(cfg.ch_mult)} '
            f'(which gives {cfg.downsample})')
    return cfg


def special_tokens_from_ids(ids: dict[str, int]) -> SpecialTokens:
    keys = dict(bos='bos_token_id', eos='eos_token_id', start_of_image='start_of_image',
                end_of_image='end_of_image')
    missing = [v for v in keys.values() if v not in ids]
    if missing:
        raise ConfigError(f'special token ids {missing} are missing (have {sorted(ids)})')
    return SpecialTokens(**{k: int(ids[v]) for k, v in keys.items()})


def load_config(directory: str, *, tokens: SpecialTokens | None = None,
                dtype: str = 'float32') -> BagelConfig:
    """Builds the BagelConfig of a checkpoint directory.

    Reads ``llm_config.json`` and ``vit_config.json`` (optional: no ViT without it), and, where
    present, ``config.json`` (Bagel fields and special token ids) and ``ae_config.json``. Without
    them the release values of Bagel-7B-MoT are used. Special token ids come from ``tokens``,
    else ``config.json``'s ``new_token_ids``; the real release reads them from the tokenizer
    (see ``unigrpo_jax.loading.tokenizer``).
    """
    if not os.path.isdir(directory):
        raise ConfigError(f'checkpoint directory {directory} does not exist')
    llm = llm_config_from_json(os.path.join(directory, 'llm_config.json'))
    vit_path = os.path.join(directory, 'vit_config.json')
    vit = vit_config_from_json(vit_path) if os.path.exists(vit_path) else None
    bagel_path = os.path.join(directory, 'config.json')
    bagel = _read_json(bagel_path) if os.path.exists(bagel_path) else {}
    ae_path = os.path.join(directory, 'ae_config.json')
    ae = ae_config_from_dict(_read_json(ae_path) if os.path.exists(ae_path) else {})
    if tokens is None:
        if 'new_token_ids' not in bagel:
            raise ConfigError(
                f'no special token ids: {bagel_path} has no new_token_ids; load the tokenizer '
                '(unigrpo_jax.loading.tokenizer.load_tokenizer) and pass its ids as tokens=')
        tokens = special_tokens_from_ids(bagel['new_token_ids'])
    fields = {k: bagel.get(k, v) for k, v in _RELEASE_BAGEL_DEFAULTS.items()}
    if fields['interpolate_pos']:
        raise ConfigError(f'{bagel_path}: interpolate_pos=True is not supported (the release uses '
                          'extrapolated position ids)')
    if fields['connector_act'] != 'gelu_pytorch_tanh':
        raise ConfigError(f'{bagel_path}: connector_act={fields["connector_act"]!r} is not '
                          "supported (expected 'gelu_pytorch_tanh')")
    if 'latent_channels' in bagel and int(bagel['latent_channels']) != ae.z_channels:
        raise ConfigError(f'{bagel_path}: latent_channels={bagel["latent_channels"]} but the '
                          f'autoencoder has z_channels={ae.z_channels}')
    return BagelConfig(
        llm=llm, vit=vit, ae=ae, tokens=tokens,
        latent_patch_size=int(fields['latent_patch_size']),
        max_latent_size=int(fields['max_latent_size']),
        vit_max_num_patch_per_side=int(fields['vit_max_num_patch_per_side']),
        timestep_shift=float(fields['timestep_shift']),
        frequency_embedding_size=int(bagel.get('frequency_embedding_size', 256)),
        dtype=dtype,
    )


def config_from_dict(d: Any, *, dtype: str = 'float32') -> BagelConfig:
    """A BagelConfig from plain data (e.g. a config file's ``model.random`` section).

    Keys: ``llm`` (LLMConfig fields), optional ``vit`` (ViTConfig fields, layers as used),
    ``ae`` (AEConfig fields), ``tokens`` (bos, eos, start_of_image, end_of_image) and the
    BagelConfig scalars (``latent_patch_size``, ``max_latent_size``, ...).
    """
    d = dict(d)
    llm = LLMConfig(**dict(d.pop('llm')))
    llm.validate()
    vit = d.pop('vit', None)
    vit = ViTConfig(**dict(vit)) if vit else None
    ae = ae_config_from_dict(dict(d.pop('ae', {})))
    tokens = SpecialTokens(**dict(d.pop('tokens')))
    unknown = set(d) - {f.name for f in dataclasses.fields(BagelConfig)}
    if unknown:
        raise ConfigError(f'unknown model config fields {sorted(unknown)}')
    return BagelConfig(llm=llm, vit=vit, ae=ae, tokens=tokens, dtype=dtype, **d)
