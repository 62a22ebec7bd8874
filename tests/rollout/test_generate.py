"""Evaluation generation (greedy thinking, then the ODE with CFG) on a random tiny Bagel."""

import jax
import jax.numpy as jnp
import numpy as np

from configs import bagel_grpo
from unigrpo_jax.loading import factory
from unigrpo_jax.rollout import eval_sampler, generate


def test_eval_generation_runs_with_and_without_think():
    cfg = bagel_grpo.get_config('tiny')
    config, params, ae = factory.build_model(cfg.model)
    t = config.tokens
    prompts = np.random.default_rng(0).integers(0, 100, (4, 6)).astype(np.int32)
    prompts[:, 0], prompts[:, -1] = t.bos, t.eos
    system = jnp.array([t.bos, 5, 6, 7, t.eos], jnp.int32)
    sc = eval_sampler.sampler_config(cfg.eval)
    for think_tokens in (cfg.rollout.max_think_tokens, 0):
        images, tokens, mask = generate.generate_eval(
            params, ae, config, sc, system, jnp.asarray(prompts), jnp.full((4,), 6),
            jax.random.key(0), think_tokens=think_tokens, token_sampler=generate.GREEDY,
            image_size=tuple(cfg.rollout.image_size))
        assert images.shape == (4, 32, 32, 3) and images.dtype == jnp.uint8
        assert tokens.shape == mask.shape == (4, think_tokens)
        if think_tokens:
            assert bool(mask[:, 0].all())  # every chain samples at least one token
