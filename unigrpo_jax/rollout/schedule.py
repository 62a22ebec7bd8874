"""How a training chain is sampled: the token sampler and the denoising schedule with its SDE
window. One frozen object, held by both the rollout (``rollout.RolloutConfig``) and the
objective (``rl.objective.ObjectiveConfig``): the replay recomputes the rollout's log-probs
with the very settings that sampled them. Built and checked from a config by
``train.settings``.
"""

from __future__ import annotations

import dataclasses

import jax

from unigrpo_jax.model import latents
from unigrpo_jax.model.config import BagelConfig
from unigrpo_jax.rollout.sampling import TokenSampler


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Static (hashable) sampling settings of a training chain.

    ``num_timesteps`` grid points ``t = shift(linspace(1, 0, N))`` give ``N - 1`` steps; a window
    of ``window_size`` consecutive steps starting in ``{window_min_start, ..., window_max_start}``
    (drawn per rollout batch) is stochastic with noise level ``noise_level``; ``window_size = 0``:
    every step is an ODE step (no image term to train).
    """

    tokens: TokenSampler
    num_timesteps: int
    shift: float
    noise_level: float
    window_size: int
    window_max_start: int
    window_min_start: int
    image_size: tuple[int, int]

    def timesteps(self) -> jax.Array:
        """``[num_timesteps]`` float32, from 1 (noise) to 0."""
        return latents.timesteps(self.num_timesteps, self.shift)

    def token_grid(self, config: BagelConfig) -> tuple[int, int]:
        """The ``(h, w)`` latent token grid of an image of ``image_size``."""
        return latents.token_grid(*self.image_size, config.latent_downsample)
