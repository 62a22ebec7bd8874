"""The evaluation sampler: Bagel's deterministic Euler ODE with classifier-free guidance.

bagel.md §5.6-5.7. ``num_timesteps`` grid points give ``num_timesteps - 1`` model evaluations
(per active CFG branch) inside one ``lax.scan``; guidance runs only while
``interval[0] < t <= interval[1]`` (a ``lax.cond``, so inactive steps cost one pass).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from unigrpo_jax.model import context, guidance, latents
from unigrpo_jax.model.config import BagelConfig
from unigrpo_jax.model.kv_cache import KVCache


@dataclasses.dataclass(frozen=True)
class GuidanceConfig:
    """Bagel's CFG settings (defaults: the notebook's text-to-image values)."""

    text_scale: float = 4.0
    img_scale: float = 1.0
    interval: tuple[float, float] = (0.4, 1.0)
    renorm: str = 'global'
    renorm_min: float = 0.0

    def __post_init__(self):
        if self.renorm not in guidance.RENORM_TYPES:
            raise ValueError(f'cfg renorm={self.renorm!r}; expected one of {guidance.RENORM_TYPES}')
        lo, hi = self.interval
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f'cfg interval={self.interval} must satisfy 0 <= lo <= hi <= 1')


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    num_timesteps: int = 50
    shift: float = 3.0
    cfg: GuidanceConfig = GuidanceConfig()

    def __post_init__(self):
        if self.num_timesteps < 2:
            raise ValueError(f'num_timesteps={self.num_timesteps} must be >= 2 (N points give '
                             'N - 1 steps)')


@dataclasses.dataclass(frozen=True)
class SamplerPath:
    """What the sampler returns; ``x`` includes the initial noise: ``[steps + 1, batch, ...]``."""

    x: jax.Array
    v: jax.Array
    t: jax.Array
    cfg_active: jax.Array

    @property
    def final(self) -> jax.Array:
        return self.x[-1]


jax.tree_util.register_dataclass(SamplerPath, data_fields=['x', 'v', 't', 'cfg_active'],
                                 meta_fields=[])


@functools.partial(jax.jit, static_argnames=('config', 'sampler'))
def sample_ode(params, config: BagelConfig, sampler: SamplerConfig, noise: jax.Array,
               position_ids: jax.Array, cond: KVCache, text_uncond: KVCache,
               img_uncond: KVCache | None = None) -> SamplerPath:
    """Denoises ``noise [batch, tokens, latent_token_dim]`` from t = 1 to 0.

    Args:
      position_ids: ``[tokens]`` latent position ids of the image's token grid.
      cond, text_uncond, img_uncond: the three contexts (KV caches) of Bagel's CFG; the
        image-unconditional one is needed only with ``img_scale > 1``.
    Returns:
      the ``SamplerPath`` (float32): states, combined velocities, times, CFG flags per step.
    """
    cfg = sampler.cfg
    use_img = cfg.img_scale > 1.0
    if use_img and img_uncond is None:
        raise ValueError(f'img_scale={cfg.img_scale} > 1 needs the img_uncond context')
    grid = latents.timesteps(sampler.num_timesteps, sampler.shift)
    b = noise.shape[0]

    def velocity(cache, x, t):
        return context.image_velocity(params, config, cache, x, jnp.full((b,), t), position_ids)[0]

    def step(x, ts):
        t, t_next = ts
        v_cond = velocity(cond, x, t)
        active = (t > cfg.interval[0]) & (t <= cfg.interval[1]) & (cfg.text_scale > 1.0)

        def guided():
            v_img = velocity(img_uncond, x, t) if use_img else None
            return guidance.combine(v_cond, velocity(text_uncond, x, t), v_img,
                                    text_scale=cfg.text_scale, img_scale=cfg.img_scale,
                                    renorm=cfg.renorm, renorm_min=cfg.renorm_min)

        v = jax.lax.cond(active, guided, lambda: v_cond)
        x_next = x - v * (t - t_next)
        return x_next, (x_next, v, active)

    x_final, (xs, vs, active) = jax.lax.scan(step, noise.astype(jnp.float32),
                                             (grid[:-1], grid[1:]))
    del x_final
    return SamplerPath(x=jnp.concatenate([noise[None].astype(jnp.float32), xs]), v=vs,
                      t=grid[:-1], cfg_active=active)


def sampler_config(c, cfg_text_scale: float | None = None) -> SamplerConfig:
    """A ``SamplerConfig`` from a config's ``eval`` section (``cfg_text_scale`` overrides its
    text-CFG scale; 1 = no guidance)."""
    text_scale = c.cfg_text_scale if cfg_text_scale is None else cfg_text_scale
    return SamplerConfig(
        num_timesteps=c.num_timesteps, shift=c.shift,
        cfg=GuidanceConfig(text_scale=float(text_scale), img_scale=c.cfg_img_scale,
                           interval=tuple(c.cfg_interval), renorm=c.cfg_renorm_type,
                           renorm_min=c.cfg_renorm_min))
