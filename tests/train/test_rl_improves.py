"""A short RL run raises the mean reward on a fixed seed, through the whole loop.

From the shipped ShapesEval SFT model (thinking), UniGRPO trains for a few steps on 8 fixed
prompts whose colours are free, with a reward that is easy to climb: the fraction of the
canvas drawn in red (registered below). Both terms can raise it: plans that choose red, and
denoising steps that draw more red. The mean reward is measured on the same prompts and rollout
key before and after, with the rollout the loop trains on (sampled thinking, SDE window,
CFG-free), so the difference is the policy's, not the prompts' or the noise's. (The partial-credit
ShapesEval reward moves too slowly for a test of CI length: docs/results.md.)
"""

import json

import jax
import jax.numpy as jnp
import numpy as np

from configs import shapes_unigrpo
from unigrpo_jax.convert import factory
from unigrpo_jax.convert import tokenizer as tokenizer_lib
from unigrpo_jax.parallel import mesh as mesh_lib
from unigrpo_jax.rewards import registry
from unigrpo_jax.rollout import rollout as rollout_lib
from unigrpo_jax.shapes import world
from unigrpo_jax.train import loop, settings

PROMPTS = ['a photo of a circle', 'a photo of a square', 'a photo of a triangle',
           'a photo of two circles', 'a photo of three squares', 'a photo of two triangles',
           'a photo of a circle and a square', 'a photo of a square left of a triangle']


@registry.register('test_red_fraction')
def red_fraction(options):
    del options
    red = np.asarray(world.COLORS['red'], np.float32)

    def reward(images, metadata):
        del metadata
        distance = np.linalg.norm(images.astype(np.float32) - red, axis=-1)
        return (distance < 100).mean(axis=(1, 2)) * 10.0  # ~1 for one red object

    return reward


def _config(prompt_file: str):
    config = shapes_unigrpo.get_config('test')
    config.update(total_steps=6, batch_size=8, eval_every=0, checkpoint_every=6)
    config.data.train = prompt_file
    config.reward.name = 'test_red_fraction'
    config.rollout.update(group_size=8, num_timesteps=10, window_size=2, window_max_start=7)
    config.optimizer.update(lr_und=1e-3, lr_gen=3e-4)
    config.parallelism.update(mesh=(1, 1, 1), num_devices=1)
    return config


def _mean_reward(params, config, model, items, tokenizer, tokens):
    rc = settings.rollout_config(config)
    mesh = mesh_lib.make_mesh((1, 1, 1), jax.devices()[:1])
    ids, lengths = tokenizer_lib.encode_segments(tokenizer, tokens, [m['prompt'] for m in items],
                                                 config.data.max_prompt_tokens)
    out = rollout_lib.make_rollout_fn(model, rc, mesh)(
        params, {}, None, jnp.asarray(ids), jnp.asarray(lengths), jax.random.key(123))
    metadata = [m for m in items for _ in range(rc.group_size)]
    reward = registry.make_reward(config.reward.name)
    return float(np.mean(reward(np.asarray(out.images), metadata)))


def test_short_unigrpo_run_raises_the_mean_reward(tmp_path):
    items = [{'tag': 'custom', 'include': [], 'prompt': p} for p in PROMPTS]
    prompt_file = tmp_path / 'prompts.jsonl'
    prompt_file.write_text(''.join(json.dumps(m) + '\n' for m in items))
    config = _config(str(prompt_file))
    tokenizer, tokens, _ = tokenizer_lib.load_tokenizer(config.tokenizer)
    model, sft_params, _ = factory.build_model(config.model, tokens=tokens)
    before = _mean_reward(jax.tree.map(jnp.asarray, sft_params), config, model, items,
                          tokenizer, tokens)
    state = loop.train(config, str(tmp_path / 'rl'))
    after = _mean_reward(state.params, config, model, items, tokenizer, tokens)
    print(f'mean reward before {before:.3f}, after {after:.3f}')
    assert after > before + 0.15, (before, after)
