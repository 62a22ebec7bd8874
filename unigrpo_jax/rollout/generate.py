"""Evaluation images: (greedy) thinking, then Bagel's ODE sampler with classifier-free guidance.

Contexts as Bagel's inferencer (bagel.md §4.4): with think, cond = system + prompt + think,
text-uncond = system only, img-uncond = system + prompt; without, cond = prompt, text-uncond =
empty, img-uncond = prompt. One image per prompt. The context and reasoning steps are the
rollout's own (``rollout.build_context``, ``rollout.generate_think``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from unigrpo_jax.model import context, latents
from unigrpo_jax.model.config import BagelConfig
from unigrpo_jax.rollout import eval_sampler
from unigrpo_jax.rollout.rollout import build_context, cache_size, decode_latents, generate_think
from unigrpo_jax.rollout.sampling import TokenSampler

GREEDY = TokenSampler(temperature=0.0, top_k=0, top_p=1.0)


@functools.partial(jax.jit, static_argnames=('config', 'sampler', 'think_tokens',
                                             'token_sampler', 'image_size', 'decode_pieces'))
def generate_eval(params, ae_params, config: BagelConfig, sampler: eval_sampler.SamplerConfig,
                  system_ids, prompt_ids, prompt_lengths, key, *, think_tokens: int,
                  token_sampler: TokenSampler, image_size: tuple[int, int],
                  forced_think=None, decode_pieces: int = 1):
    """Draws one image per prompt.

    Args:
      system_ids: ``[S]`` the system segment (thinking only) or None.
      prompt_ids, prompt_lengths: ``[B, P]``, ``[B]``.
      think_tokens: the most reasoning tokens to sample; 0: no thinking (no system segment).
      token_sampler: how reasoning tokens are sampled (``GREEDY`` for evaluation).
      forced_think: ``(ids [B, <= think_tokens + 2], lengths [B])``, given reasoning segments
        ``[bos] y [eos]`` to draw from instead of generating them (thinking only; the returned
        tokens are then empty): how well the image phase renders a plan, apart from planning.
      decode_pieces: images are decoded in that many sequential pieces
        (``rollout.decode_latents``; the images per device decodes one per device at a time).
    Returns:
      ``(images [B, H, W, 3] uint8, think_tokens [B, T], think_mask [B, T])``.
    """
    b = prompt_ids.shape[0]
    system = system_ids if think_tokens else None
    size = cache_size(0 if system is None else system.shape[0], prompt_ids.shape[1],
                      think_tokens)
    text_uncond, img_uncond = build_context(params, config, system, prompt_ids, prompt_lengths,
                                            size)
    keys = jax.random.split(key, b)
    cond = img_uncond
    tokens, mask = jnp.zeros((b, 0), jnp.int32), jnp.zeros((b, 0), bool)
    if forced_think is not None:
        if not think_tokens:
            raise ValueError('forced_think needs thinking (think_tokens > 0)')
        cond, _ = context.prefill_text(params, config, img_uncond, *forced_think)
    elif think_tokens:
        cond, tokens, _, mask, _ = generate_think(params, config, img_uncond, keys, token_sampler,
                                                  think_tokens)
    h, w = latents.token_grid(*image_size, config.latent_downsample)
    pos = jnp.asarray(latents.position_ids(h, w, config.max_latent_size))
    noise = jax.vmap(lambda k: jax.random.normal(k, (h * w, config.latent_token_dim)))(
        jax.vmap(lambda k: jax.random.split(k)[1])(keys))
    traj = eval_sampler.sample_ode(params, config, sampler, noise, pos, cond, text_uncond,
                                   img_uncond)
    return (decode_latents(ae_params, config, traj.final, image_size, decode_pieces), tokens,
            mask)
