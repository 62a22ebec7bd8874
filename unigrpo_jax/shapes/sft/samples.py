"""SFT data for ShapesEval: prompt + layout + image + plan, laid out as the rollout sees them.

One sample is the sequence the think-then-draw rollout (``generate.generate_eval`` /
``make_rollout_fn`` with ``system_ids=None``) builds, in Bagel's training segments (bagel.md §8):

=========================  =======================  ====================  ======================
segment                    tokens                   positions             mode / loss
=========================  =======================  ====================  ======================
prompt                     ``[bos] prompt [eos]``   ``0 .. p-1``          causal, no loss
think (think arm only)     ``[bos] plan [eos]``     ``p .. p+q-1``        causal, CE: logits at
                                                                          ``bos .. y_n`` predict
                                                                          ``y_1 .. eos``
image                      ``[soi] x_t [eoi]``      ``p+q`` (all)         noise: full inside,
                                                                          nobody else sees it;
                                                                          flow-matching MSE
=========================  =======================  ====================  ======================

(``plan`` = ``plan.plan_text(layout)``, ``<think> red square at r0c2 ; ... </think>``; there is no
system segment.) This is exactly the rollout's cache: ``build_context`` prefills the prompt
segment at ``0 .. p-1``, ``generate_think`` feeds ``bos, y_1, ..`` from position ``p`` and closes
with ``eos``, and the image block sits at the next position ``p+q`` attending to all of it.

For classifier-free guidance, with probability ``text_dropout`` a sample keeps no text at all
(``p = q = 0``): the image block at position 0 sees an empty context, which is the evaluation's
text-unconditional branch (think: system only = nothing; no think: empty).

Batches have a static shape: the prompt and think segments are right-padded to
``max_prompt_tokens`` and ``max_think_tokens + 1`` (the rollout's T sampled tokens + its bos)
with eos (``convert.tokenizer.encode_segments``, as the RL loop pads its prompts); padding keys
are masked (``layout_mask``), so positions stay consecutive over the valid tokens.
The packed order is ``[prompt | think | soi, eoi]`` (understanding expert, ``n_und`` tokens) then
the latent tokens (generation expert), as the rollout's ``_image_blocks`` packs them.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from unigrpo_jax.loading import tokenizer as tokenizer_lib
from unigrpo_jax.model import latents
from unigrpo_jax.model.config import BagelConfig
from unigrpo_jax.shapes import plan, prompts, world


@dataclasses.dataclass(frozen=True)
class Layout:
    """Static segment sizes of a batch (hashable: a static argument of the jitted step)."""

    prompt_len: int   # P: padded prompt segment, bos and eos included
    think_len: int    # Q: padded think segment [bos] plan [eos]; 0 without thinking
    image_grid: tuple[int, int]  # (h, w) latent token grid; N = h * w tokens

    @property
    def image_tokens(self) -> int:
        return self.image_grid[0] * self.image_grid[1]

    @property
    def n_und(self) -> int:
        """Understanding-expert tokens: prompt, think, soi, eoi."""
        return self.prompt_len + self.think_len + 2

    @property
    def length(self) -> int:
        return self.n_und + self.image_tokens


def layout(config: BagelConfig, data_cfg, think: bool) -> Layout:
    """The ``Layout`` of a config's ``data`` section."""
    h, w = latents.token_grid(*data_cfg.image_size, config.latent_downsample)
    return Layout(prompt_len=data_cfg.max_prompt_tokens,
                  think_len=data_cfg.max_think_tokens + 1 if think else 0, image_grid=(h, w))


@dataclasses.dataclass
class Batch:
    """Host arrays of one SFT batch of B samples (F = latent_token_dim)."""

    prompt_ids: np.ndarray      # [B, P] int32, [bos] prompt [eos], right-padded with eos
    prompt_lengths: np.ndarray  # [B] int32 (0: text dropped)
    think_ids: np.ndarray       # [B, Q] int32, [bos] plan [eos], right-padded
    think_lengths: np.ndarray   # [B] int32 (0: text dropped or no thinking)
    x0: np.ndarray              # [B, N, F] float32 clean latent tokens
    metadata: list              # [B] prompt metadata (GenEval format)
    layouts: list               # [B] world layouts

    def arrays(self) -> dict[str, np.ndarray]:
        """The device inputs of the train step."""
        return dict(prompt_ids=self.prompt_ids, prompt_lengths=self.prompt_lengths,
                    think_ids=self.think_ids, think_lengths=self.think_lengths, x0=self.x0)


def pixels_to_unit(images: np.ndarray) -> np.ndarray:
    """uint8 ``[..., H, W, 3]`` -> float32 in [-1, 1] (the autoencoder's pixel range)."""
    return images.astype(np.float32) / 127.5 - 1.0


def latent_tokens(config: BagelConfig, images: np.ndarray) -> np.ndarray:
    """uint8 images ``[B, H, W, 3]`` -> latent tokens ``[B, N, F]`` (identity autoencoder:
    ``scale * (x - shift)``, then ``latents.patchify``)."""
    ae = config.ae
    if ae.kind != 'identity':
        raise ValueError(f'ShapesEval SFT encodes pixels on the host and needs the identity '
                         f'autoencoder; the config has kind={ae.kind!r}')
    z = ae.scale_factor * (pixels_to_unit(images) - ae.shift_factor)
    return np.asarray(latents.patchify(z, config.latent_patch_size), np.float32)


def make_batch(rng: np.random.Generator, tokenizer, config: BagelConfig, lay: Layout,
               metadata: list[dict], layouts: list, images: np.ndarray,
               text_dropout: float) -> Batch:
    """A training batch of given samples (``images [B, 32, 32, 3]`` uint8 renders of
    ``layouts``); all text of a sample dropped with prob ``text_dropout``."""
    batch_size = len(metadata)
    dropped = rng.random(batch_size) < text_dropout
    prompt_ids, prompt_lengths = tokenizer_lib.encode_segments(
        tokenizer, config.tokens, [m['prompt'] for m in metadata], lay.prompt_len)
    if lay.think_len:
        think_ids, think_lengths = tokenizer_lib.encode_segments(
            tokenizer, config.tokens, [plan.plan_text(lo) for lo in layouts], lay.think_len,
            what='think')
    else:
        think_ids = np.zeros((batch_size, 0), np.int32)
        think_lengths = np.zeros((batch_size,), np.int32)
    prompt_lengths[dropped] = 0
    think_lengths[dropped] = 0
    return Batch(prompt_ids=prompt_ids, prompt_lengths=prompt_lengths, think_ids=think_ids,
                 think_lengths=think_lengths, x0=latent_tokens(config, images), metadata=metadata,
                 layouts=layouts)


def sample_batch(rng: np.random.Generator, tokenizer, config: BagelConfig, lay: Layout,
                 batch_size: int, text_dropout: float) -> Batch:
    """A batch of fresh samples: ``prompts.sample_prompt``, ``prompts.sample_layout``, the
    rendered image and (think arm) its plan; then ``make_batch``."""
    metadata = [prompts.sample_prompt(rng) for _ in range(batch_size)]
    layouts = [prompts.sample_layout(m, rng) for m in metadata]
    images = np.stack([world.render(lay_) for lay_ in layouts])
    return make_batch(rng, tokenizer, config, lay, metadata, layouts, images, text_dropout)


def positions(lay: Layout, prompt_lengths, think_lengths):
    """Rope ids ``[B, L]`` of the packed sequence (jnp): prompt ``i``, think ``p + j``, the
    image block ``p + q``; padding rows keep ids past their segment's end (never attended)."""
    p = prompt_lengths[:, None]
    prompt = jnp.broadcast_to(jnp.arange(lay.prompt_len), (p.shape[0], lay.prompt_len))
    think = p + jnp.arange(lay.think_len)
    image = jnp.broadcast_to(p + think_lengths[:, None], (p.shape[0], 2 + lay.image_tokens))
    return jnp.concatenate([prompt, think, image], axis=1).astype(jnp.int32)


def layout_mask(lay: Layout, prompt_lengths, think_lengths):
    """``[B, L, L]`` bool attention mask (jnp) of Bagel's training segments (bagel.md §8).

    Text queries see valid text keys at or before them (causal over prompt then think); the
    image block (soi, eoi, latents; mode ``noise``) sees every valid text key and itself in
    full; no text query sees the image block. Padding keys are masked; padding queries see
    only themselves (their outputs are unused).
    """
    idx = jnp.arange(lay.length)
    p, q = lay.prompt_len, lay.think_len
    in_prompt = idx[None] < prompt_lengths[:, None]
    in_think = (idx[None] >= p) & (idx[None] < p + think_lengths[:, None])
    valid_text = in_prompt | in_think                      # [B, L]
    is_image = idx >= p + q                                # [L]
    causal = idx[None, :] <= idx[:, None]                  # [L(query), L(key)]
    text_rows = valid_text[:, None, :] & causal[None]      # text query -> valid earlier text
    image_rows = valid_text[:, None, :] | is_image[None, None, :]
    mask = jnp.where(is_image[None, :, None], image_rows, text_rows)
    own = jnp.eye(lay.length, dtype=bool)[None]
    query_valid = (valid_text | is_image[None])[:, :, None]
    return jnp.where(query_valid, mask, own)
