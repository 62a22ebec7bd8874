"""The RL run's periodic evaluation: held-out reward with the evaluation sampler (greedy or
sampled thinking, then Bagel's ODE with CFG) and a sample grid with the thinking text."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from unigrpo_jax import viz
from unigrpo_jax.loading import tokenizer as tokenizer_lib
from unigrpo_jax.model.config import BagelConfig
from unigrpo_jax.parallel import sharding
from unigrpo_jax.rollout import generate
from unigrpo_jax.train import rl_step
from unigrpo_jax.train.settings import Settings

GRID_IMAGES = 16


def make_evaluator(config, s: Settings, model: BagelConfig, mesh: Mesh, tokenizer, tokens,
                   system_ids: np.ndarray | None, items: list[dict], reward_fn, writer,
                   workdir: str) -> Callable:
    """``evaluate(params, ae_params, step) -> scores [len(items)]``: generates one image per
    held-out prompt (chunks of ``s.eval_chunk``, split over the devices of ``mesh``),
    scores it with ``reward_fn`` (each process the images its devices hold; the scores are
    gathered, so every process returns them all) and writes ``eval/reward_mean`` and a grid
    once, from process 0 (``workdir/samples/step_<k>.png``, TensorBoard, a ``metrics.jsonl``
    line)."""
    rc = s.rollout
    think_tokens = rc.max_think_tokens if rc.think else 0
    chunk_size = s.eval_chunk
    prompts_sharding = sharding.batch_sharding(mesh, chunk_size)

    def draw(params, ae_params, chunk, index):
        padded = chunk + chunk[-1:] * (chunk_size - len(chunk))  # a full chunk splits evenly
        ids, lengths = tokenizer_lib.encode_segments(
            tokenizer, tokens, [it['prompt'] for it in padded], config.data.max_prompt_tokens)
        images, think, mask = sharding.traced_on(mesh, generate.generate_eval)(
            params, ae_params, model, s.eval_sampler, system_ids,
            sharding.host_to_global(ids, prompts_sharding),
            sharding.host_to_global(lengths, prompts_sharding),
            jax.random.fold_in(jax.random.key(config.seed + 1), index),  # a chunk's own noise
            think_tokens=think_tokens,
            token_sampler=s.eval_tokens, image_size=rc.schedule.image_size,
            decode_pieces=chunk_size // mesh.size)
        return images, think, mask, padded

    def evaluate(params, ae_params, step: int) -> np.ndarray:
        scores, grid_images, texts = [], [], []
        for i in range(0, len(items), chunk_size):
            chunk = items[i:i + chunk_size]
            images, think, mask, padded = draw(params, ae_params, chunk, i // chunk_size)
            scores.append(rl_step.score(reward_fn, images, padded)[:len(chunk)])
            # The grid's rows (a few) and the thinking tokens, whole on every process.
            wanted = min(len(chunk), GRID_IMAGES - sum(map(len, grid_images)))
            if wanted > 0:
                grid_images.append(multihost_utils.process_allgather(images[:wanted],
                                                                     tiled=True))
            think, mask = (multihost_utils.process_allgather(x, tiled=True) for x in (think, mask))
            texts += [tokenizer.decode(t[m], skip_special_tokens=False)
                      for t, m in zip(think[:len(chunk)], mask[:len(chunk)])]
        scores = np.concatenate(scores)
        writer.write_scalars(step, {'eval/reward_mean': float(scores.mean())})
        grid_n = min(GRID_IMAGES, len(texts))
        captions = [f'{it["prompt"]} | {tx}' for it, tx in zip(items[:grid_n], texts[:grid_n])]
        grid = viz.image_grid(np.concatenate(grid_images), captions)
        writer.write_images(step, {'eval/samples': grid[None]})
        if jax.process_index() == 0:
            os.makedirs(os.path.join(workdir, 'samples'), exist_ok=True)
            viz.save_png(grid, os.path.join(workdir, 'samples', f'step_{step:06d}.png'))
            with open(os.path.join(workdir, 'metrics.jsonl'), 'a') as f:
                f.write(json.dumps({'step': step, 'eval/reward_mean': float(scores.mean())})
                        + '\n')
        return scores

    return evaluate
