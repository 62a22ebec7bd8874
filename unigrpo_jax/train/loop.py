"""The UniGRPO RL loop: prompts -> rollout -> decode -> reward -> advantages -> PPO epochs of
train steps -> metrics -> periodic evaluation -> checkpoint.

``train(config, workdir)`` is what ``launch/train.py`` runs and what a notebook can call.
Starting again with the same ``workdir`` resumes from its latest checkpoint and continues
exactly (same prompts, same random numbers, same params). SIGTERM saves a checkpoint and
returns; a non-finite loss skips that update (counted), and ``max_skipped_updates`` in a row
stop the run; a non-finite state is never saved.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions

from unigrpo_jax import viz
from unigrpo_jax.convert import tokenizer as tokenizer_lib
from unigrpo_jax.data import prompts as data_lib
from unigrpo_jax.model import factory, latents
from unigrpo_jax.model.config import ConfigError
from unigrpo_jax.parallel import mesh as mesh_lib
from unigrpo_jax.parallel import sharding
from unigrpo_jax.rewards import registry
from unigrpo_jax.rl import advantages as adv_lib
from unigrpo_jax.rl import objective, replay
from unigrpo_jax.rollout import eval_sampler
from unigrpo_jax.rollout import rollout as rollout_lib
from unigrpo_jax.train import checkpointing, step as step_lib
from unigrpo_jax.train import lora as lora_lib
from unigrpo_jax.train import run_dir
from unigrpo_jax.train import optimizer as opt_lib
from unigrpo_jax.train.validate import validate


class TrainingError(RuntimeError):
    """The run cannot continue (e.g. repeated non-finite losses)."""


def maybe_initialize_distributed(config) -> None:
    """``jax.distributed.initialize()`` on a pod/cluster (``config.distributed``: auto|on|off)."""
    mode = config.distributed
    if mode == 'off':
        return
    launched = any(v in os.environ for v in ('JAX_COORDINATOR_ADDRESS', 'SLURM_NTASKS',
                                             'OMPI_COMM_WORLD_SIZE', 'TPU_WORKER_HOSTNAMES'))
    if mode == 'on' or launched:
        jax.distributed.initialize()


def encode_prompts(tokenizer, tokens, items: list[dict], max_len: int):
    """``(ids [B, max_len] int32, lengths [B])`` of the segments ``[bos] prompt [eos]``."""
    ids = np.full((len(items), max_len), tokens.eos, np.int32)
    lengths = np.zeros((len(items),), np.int32)
    for i, item in enumerate(items):
        seg = tokenizer_lib.encode_segment(tokenizer, tokens, item['prompt'])
        if len(seg) > max_len:
            raise ConfigError(f'prompt {item["prompt"]!r} has {len(seg)} tokens, more than '
                              f'config.data.max_prompt_tokens={max_len}')
        ids[i, :len(seg)], lengths[i] = seg, len(seg)
    return ids, lengths


def _system_ids(config, tokenizer, tokens):
    if not config.rollout.think or not config.system_prompt:
        return None
    return np.asarray(tokenizer_lib.encode_segment(tokenizer, tokens, config.system_prompt),
                      np.int32)


def _sample_weights(config, informative, closed):
    """Chains that enter the loss: informative groups; truncated chains per the config."""
    weight = np.ones_like(informative, np.float32)
    if config.objective.skip_zero_variance_groups:
        weight *= informative
    if config.truncated_think == 'drop' and config.rollout.think:
        weight *= closed
    return weight


def _rewards(config, reward_fn, images, items, closed):
    g = config.rollout.group_size
    metadata = [item for item in items for _ in range(g)]
    scores = np.asarray(reward_fn(np.asarray(images), metadata), np.float32)
    if scores.shape != (len(metadata),) or not np.isfinite(scores).all():
        raise TrainingError(f'the reward returned {scores!r} for {len(metadata)} images')
    if config.truncated_think == 'zero' and config.rollout.think:
        scores = np.where(closed, scores, 0.0)
    return scores


def _advantages(config, scores, closed):
    o = config.objective
    if config.truncated_think == 'drop' and config.rollout.think:
        # Dropped chains must not shape their group's statistics: give them the group mean.
        groups = scores.reshape(-1, config.rollout.group_size)
        keep = closed.reshape(groups.shape)
        means = (groups * keep).sum(1, keepdims=True) / np.maximum(keep.sum(1, keepdims=True), 1)
        scores = np.where(keep, groups, means).reshape(-1)
    adv, informative = adv_lib.group_advantages(
        jnp.asarray(scores), config.rollout.group_size, std=o.advantage_std,
        eps=o.advantage_eps, clip=o.advantage_clip)
    return np.asarray(adv), np.asarray(informative)


class _Preemption:
    """Turns SIGTERM into a flag checked at step boundaries."""

    def __init__(self):
        self.requested = False
        try:
            signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. a notebook worker)
            pass

    def _handle(self, signum, frame):
        del signum, frame
        logging.warning('SIGTERM: saving a checkpoint and stopping after this step')
        self.requested = True


def train(config, workdir: str):
    """Runs (or resumes) the RL loop; returns the final ``TrainState``."""
    maybe_initialize_distributed(config)
    n = config.parallelism.num_devices
    devices = jax.devices()[:n] if n > 0 else jax.devices()
    shape = validate(config, len(devices))
    os.makedirs(workdir, exist_ok=True)
    is_main = jax.process_index() == 0
    if is_main:
        run_dir.save_config(workdir, config)
    writer = metric_writers.create_default_writer(workdir, just_logging=not is_main)

    tokenizer, tokens, _ = tokenizer_lib.load_tokenizer(config.tokenizer)
    config_model, params, ae = factory.build_model(config.model, seed=config.seed, tokens=tokens)
    if len(tokenizer) > config_model.llm.vocab_size:
        raise ConfigError(f'the tokenizer has {len(tokenizer)} tokens, more than the model '
                          f'vocab_size={config_model.llm.vocab_size}')
    config_model = config_model.replace(remat_policy=config.parallelism.remat_policy)
    data_dir = config.data.data_dir or os.path.join(workdir, 'tfds')
    train_prompts = data_lib.PromptStream(data_lib.load_prompts(config.data.train, data_dir),
                                          config.batch_size // jax.process_count(), config.seed)
    eval_items = data_lib.load_prompts(config.data.eval, data_dir)[:config.eval_prompts]
    reward_fn = registry.make_reward(config.reward.name, config.reward.options)
    eval_reward_fn = registry.make_reward(config.eval_reward.name, config.eval_reward.options)
    system_ids = _system_ids(config, tokenizer, tokens)

    mesh = mesh_lib.make_mesh(shape, devices)
    rc = rollout_lib.rollout_config(config.rollout)
    obj = objective.objective_config(config)
    optimizer = opt_lib.make_optimizer(
        config.optimizer, config.total_steps * config.ppo_epochs * config.num_minibatches)
    rules = sharding.strategy_rules(config.parallelism.strategy,
                                    config.parallelism.rules.to_dict())
    rollout_fn = rollout_lib.make_rollout_fn(config_model, rc, mesh)
    max_len = config.data.max_prompt_tokens
    chains = config.batch_size * rc.group_size
    minibatch = chains // config.num_minibatches
    example = _batch_shapes(config_model, rc, system_ids, max_len, minibatch)
    spec = lora_lib.lora_spec(config.lora)
    if spec is None:
        place = step_lib.placement(config_model, optimizer, mesh, rules, example)
        state = step_lib.init_state(params, optimizer, place)
        train_step = step_lib.make_train_step(config_model, obj, optimizer, place)
        policy = lambda trainable, frozen: trainable  # noqa: E731
    else:
        place = lora_lib.lora_placement(config_model, spec, optimizer, mesh, rules, example)
        state = step_lib.init_state(
            lora_lib.init_lora(params, spec, jax.random.key(config.seed + 2)), optimizer, place)
        train_step = lora_lib.make_lora_train_step(config_model, obj, spec, optimizer, place)
        policy = jax.jit(lambda trainable, frozen: lora_lib.merge(frozen, trainable, spec))
    # Full fine-tuning: a frozen copy in the compute dtype (bf16 for the 7B config, float32 on
    # a CPU); LoRA: the base itself (the model, adapters off).
    ref_params = step_lib.reference_params(params, place, jnp.dtype(config_model.dtype))
    del params
    select = jax.jit(lambda b, idx: replay.select_chains(b, idx), out_shardings=place.batch)

    mgr = checkpointing.manager(workdir, max_to_keep=config.checkpoint_max_to_keep,
                                keep_period=config.checkpoint_keep_period)
    restored = checkpointing.restore(mgr, state)
    start = 0
    if restored is not None:
        state, meta = restored
        start = int(meta['step'])
        logging.info('resumed from step %d (%s)', start, meta)
    report = periodic_actions.ReportProgress(num_train_steps=config.total_steps, writer=writer)
    preempt = _Preemption()
    pool = concurrent.futures.ThreadPoolExecutor(1)
    base_key = jax.random.key(config.seed)
    skipped_in_a_row = 0
    ae_dev = jax.device_put(ae, sharding.replicated(mesh))

    def meta(step):
        return {'step': step, 'seed': config.seed, 'data_position': step * config.batch_size}

    def evaluate(step):
        _evaluate(config, config_model, rc, policy(state.params, ref_params), ae_dev, tokenizer,
                  tokens, system_ids, eval_items, eval_reward_fn, writer, workdir, step)

    if config.eval_every and start == 0:
        evaluate(0)  # the starting point of the eval reward curve
    for step in range(start, config.total_steps):
        t0 = time.time()
        items = train_prompts.batch(step)
        ids, lengths = encode_prompts(tokenizer, tokens, items, max_len)
        key = jax.random.fold_in(base_key, step)
        out = rollout_fn(policy(state.params, ref_params), ae_dev, system_ids, ids, lengths, key)
        closed = np.asarray(out.think_closed) if rc.think else np.ones(chains, bool)
        t_rollout = time.time()
        future = pool.submit(_rewards, config, reward_fn, out.images, items, closed)
        try:
            scores = future.result()  # the host waits here; the device keeps its queue
        except Exception as e:
            # Keep the batch retryable: the state before this step is saved, and resuming
            # regenerates exactly this rollout (prompts and random numbers depend on the step).
            checkpointing.save(mgr, step, state, meta(step))
            mgr.wait_until_finished()
            raise TrainingError(f'reward for step {step + 1} failed: {e}. The state before this '
                                f'step is checkpointed in {workdir}; fix the reward and run '
                                'again with the same --workdir to retry this batch.') from e
        t_reward = time.time()
        adv, informative = _advantages(config, scores, closed)
        weight = _sample_weights(config, informative, closed)
        batch = replay.train_batch(out, jnp.asarray(system_ids if system_ids is not None
                                                    else np.zeros((0,), np.int32)),
                                   jnp.asarray(adv), jnp.asarray(weight))
        metrics = []
        for epoch in range(config.ppo_epochs):
            order = np.random.default_rng([config.seed, step, epoch]).permutation(chains)
            for mb in np.split(order, config.num_minibatches):
                state, m = train_step(state, ref_params, select(batch, jnp.asarray(mb)))
                metrics.append(m)
        metrics = jax.device_get(metrics)
        t_done = time.time()
        skipped = sum(float(m['skipped']) for m in metrics)
        skipped_in_a_row = skipped_in_a_row + 1 if skipped else 0
        scalars = {k: float(np.mean([m[k] for m in metrics])) for k in metrics[0]}
        scalars.update({
            'reward/mean': float(scores.mean()), 'reward/std': float(scores.std()),
            'think/closed_fraction': float(closed.mean()), 'skipped_updates': skipped,
            'parity/first_minibatch_text_max_abs_logp_diff':
                float(metrics[0].get('parity/text_max_abs_logp_diff', 0.0)),
            'parity/first_minibatch_image_max_abs_logp_diff':
                float(metrics[0].get('parity/image_max_abs_logp_diff', 0.0)),
            'time/step_s': t_done - t0,
            'time/rollout_s': t_rollout - t0,  # until the rollout's outputs are on the host
            'time/reward_s': t_reward - t_rollout,
            'time/update_s': t_done - t_reward,
        })
        writer.write_scalars(step + 1, scalars)
        if is_main:
            with open(os.path.join(workdir, 'metrics.jsonl'), 'a') as f:
                f.write(json.dumps({'step': step + 1, **scalars}) + '\n')
        report(step + 1)
        logging.info('step %d/%d: reward %.3f, %.1f s (rollout %.1f, reward %.1f, update %.1f)',
                     step + 1, config.total_steps, scalars['reward/mean'],
                     scalars['time/step_s'], scalars['time/rollout_s'], scalars['time/reward_s'],
                     scalars['time/update_s'])
        if skipped_in_a_row >= config.max_skipped_updates:
            raise TrainingError(f'{skipped_in_a_row} steps in a row had a non-finite loss or '
                                'gradient (updates skipped); stopping. Lower the learning rates '
                                'or check the rewards.')
        done = step + 1 == config.total_steps
        if config.eval_every and ((step + 1) % config.eval_every == 0 or done):
            evaluate(step + 1)
        if skipped == 0 and ((step + 1) % config.checkpoint_every == 0 or done or
                             preempt.requested):
            checkpointing.save(mgr, step + 1, state, meta(step + 1))
        if preempt.requested:
            break
    mgr.wait_until_finished()
    mgr.close()
    pool.shutdown()
    writer.flush()
    return state


def _batch_shapes(config_model, rc, system_ids, max_len, minibatch):
    """A ``TrainBatch`` of zeros with a minibatch's shapes (to derive shardings)."""
    h, w = latents.token_grid(*rc.image_size, config_model.latent_downsample)
    n, f = h * w, config_model.latent_token_dim
    t = rc.max_think_tokens if rc.think else 0
    s = 0 if system_ids is None else len(system_ids)
    b, ww = minibatch, rc.window_size
    z = lambda *shape, dtype=jnp.float32: jnp.zeros(shape, dtype)  # noqa: E731
    return replay.TrainBatch(
        system_ids=z(s, dtype=jnp.int32), prompt_ids=z(b, max_len, dtype=jnp.int32),
        prompt_lengths=z(b, dtype=jnp.int32), think_tokens=z(b, t, dtype=jnp.int32),
        think_logprobs=z(b, t), think_mask=z(b, t, dtype=bool), think_closed=z(b, dtype=bool),
        t=z(ww), t_next=z(ww), x_t=z(b, ww, n, f), x_next=z(b, ww, n, f), logp=z(b, ww),
        mean=z(b, ww, n, f), advantages=z(b), sample_weight=z(b))


def _evaluate(config, config_model, rc, params, ae, tokenizer, tokens, system_ids, items,
              reward_fn, writer, workdir, step):
    """Held-out reward (evaluation sampler: ODE + CFG) and a sample grid with thinking text."""
    sc = eval_sampler.sampler_config(config.eval)
    scores, images_all, texts = [], [], []
    for i in range(0, len(items), config.batch_size):
        chunk = items[i:i + config.batch_size]
        ids, lengths = encode_prompts(tokenizer, tokens, chunk, config.data.max_prompt_tokens)
        images, think, mask = rollout_lib.generate_eval(
            params, ae, config_model, rc, sc, system_ids, jnp.asarray(ids), jnp.asarray(lengths),
            jax.random.key(config.seed + 1), greedy=config.eval.greedy_think)
        images = np.asarray(images)
        scores.append(np.asarray(reward_fn(images, chunk), np.float32))
        images_all.append(images)
        texts += [tokenizer.decode(np.asarray(t)[np.asarray(m)], skip_special_tokens=False)
                  for t, m in zip(think, mask)]
    scores = np.concatenate(scores)
    writer.write_scalars(step, {'eval/reward_mean': float(scores.mean())})
    grid_n = min(16, len(texts))
    captions = [f'{it["prompt"]} | {tx}' for it, tx in zip(items[:grid_n], texts[:grid_n])]
    grid = viz.image_grid(np.concatenate(images_all)[:grid_n], captions)
    writer.write_images(step, {'eval/samples': grid[None]})
    if jax.process_index() == 0:
        os.makedirs(os.path.join(workdir, 'samples'), exist_ok=True)
        viz.save_png(grid, os.path.join(workdir, 'samples', f'step_{step:06d}.png'))
        with open(os.path.join(workdir, 'metrics.jsonl'), 'a') as f:
            f.write(json.dumps({'step': step, 'eval/reward_mean': float(scores.mean())}) + '\n')
    return scores
