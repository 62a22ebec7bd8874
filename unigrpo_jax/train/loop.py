"""The UniGRPO RL run: the driver around ``rl_step.rl_step`` (prompts -> rollout -> reward ->
advantages -> PPO updates), with checkpoints, preemption, logging and periodic evaluation.

``train(config, workdir)`` is what ``launch/train.py`` runs and what a notebook can call.
Starting again with the same ``workdir`` resumes from its latest checkpoint and continues
exactly (same prompts, same random numbers, same params; ``metrics.jsonl`` keeps each step
once). SIGTERM finishes the step (or abandons a reward call still running, keeping the state
before the step), saves a checkpoint and raises ``Preempted`` (the launcher exits with its own
code), on every process of a multi-process run even where only one got the signal; a reward
call longer than ``reward_timeout_s`` fails the step the same way, its state kept to retry. A
non-finite loss skips that update (counted, the params stay as they were, so the state stays
finite and is saved as usual), and ``max_skipped_updates`` in a row stop the run.
"""

from __future__ import annotations

import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions

from unigrpo_jax.loading import factory
from unigrpo_jax.loading import tokenizer as tokenizer_lib
from unigrpo_jax.data import prompts as data_lib
from unigrpo_jax.errors import ConfigError
from unigrpo_jax.parallel import distributed
from unigrpo_jax.parallel import mesh as mesh_lib
from unigrpo_jax.parallel import sharding
from unigrpo_jax.rewards import registry
from unigrpo_jax.rl import objective
from unigrpo_jax.train import checkpointing, evaluation, rl_step, run_dir
from unigrpo_jax.train import lora as lora_lib
from unigrpo_jax.train import optimizer as opt_lib
from unigrpo_jax.train import step as step_lib
from unigrpo_jax.train.settings import settings, strategy_rules


class TrainingError(RuntimeError):
    """The run cannot continue (e.g. repeated non-finite losses)."""


class Preempted(RuntimeError):
    """SIGTERM stopped the run after saving the checkpoint of ``step``; run again to resume."""

    def __init__(self, step: int, workdir: str):
        super().__init__(f'preempted (SIGTERM) after step {step}; its checkpoint is saved in '
                         f'{workdir}: run again with the same --workdir to resume')
        self.step = step


def keep_metrics_before(path: str, start: int) -> None:
    """Drops the rows of ``metrics.jsonl`` that a run resuming at ``start`` writes again: the
    steps after its checkpoint, and at ``start == 0`` the starting evaluation too."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        rows = [line for line in f if line.strip()]
    steps = []
    for i, line in enumerate(rows):
        try:
            steps.append(json.loads(line)['step'])
        except json.JSONDecodeError:
            if i + 1 < len(rows):
                raise TrainingError(f'{path}: row {i + 1} of {len(rows)} is not JSON; only a '
                                    'last row cut by a crash is dropped on a resume') from None
            logging.warning('%s: dropping its last row, cut by a crash: %r', path, line[:80])
            steps.append(start + 1)  # dropped below (written again)
    kept = [line for line, step in zip(rows, steps)
            if step < start or (start > 0 and step == start)]
    if len(kept) != len(rows):
        logging.info('metrics.jsonl: dropping %d rows after step %d (written again now)',
                     len(rows) - len(kept), start)
        with open(path, 'w') as f:
            f.writelines(kept)


def check_prompts_fit(tokenizer, tokens, items: list[dict], source: str, length: int) -> None:
    """Raises ``ConfigError`` naming the first prompt of ``items`` (``load_prompts`` examples
    of ``source``) that does not encode into a segment of ``length`` tokens (too long, or
    words outside the vocabulary), with where it is written: a run checks every prompt before
    its first step, not when the prompt's batch comes up."""
    seen = set()
    for item in items:
        if item['prompt'] in seen:
            continue
        seen.add(item['prompt'])
        try:
            tokenizer_lib.encode_segments(tokenizer, tokens, [item['prompt']], length)
        except ValueError as e:
            raise ConfigError(f'{data_lib.where(source, item["index"])}: {e}') from e


def system_ids(config, think: bool, tokenizer, tokens) -> np.ndarray | None:
    """``[S]`` the system segment of a thinking run with a system prompt, else None."""
    if not think or not config.system_prompt:
        return None
    return np.asarray(tokenizer_lib.encode_segment(tokenizer, tokens, config.system_prompt),
                      np.int32)


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
    """Runs (or resumes) the RL loop; returns the final ``TrainState``.

    The run owns ``workdir`` while it runs (``run_dir.lock``: a second run on it stops with a
    message); a resume must keep the run's config (``run_dir.check_resume_config``).
    """
    if not jax.distributed.is_initialized():  # a launcher may have joined with its flags
        distributed.initialize(config.distributed)
    distributed.assert_same_config(config)
    n = config.parallelism.num_devices
    if 0 < n < jax.device_count() and jax.process_count() > 1:
        raise ConfigError(f'config.parallelism.num_devices={n}: a multi-process run uses the '
                          f'devices of every process ({jax.device_count()}); set -1')
    devices = jax.devices()[:n] if n > 0 else jax.devices()
    s = settings(config, len(devices))  # a bad config stops before anything is written
    owner, error = None, ''
    try:
        try:
            run_dir.make_writable(workdir)
            if jax.process_index() == 0:
                owner = run_dir.lock(workdir)
                run_dir.check_resume_config(workdir, config)
        except run_dir.WorkdirError as e:
            error = str(e)
        if distributed.any_process(bool(error)):  # every process stops, none waits
            raise run_dir.WorkdirError(error or 'another process cannot use the workdir (see '
                                       'its log)')
        return _train(config, workdir, devices, s)
    finally:
        if owner is not None:
            owner.close()


def _train(config, workdir: str, devices, s):
    is_main = jax.process_index() == 0
    writer = metric_writers.create_default_writer(workdir, just_logging=not is_main)

    tokenizer, tokens, _ = tokenizer_lib.load_tokenizer(config.tokenizer)
    # The config first: the params are placed where the programs want them (below).
    model, _, ae = factory.build_model(config.model, seed=config.seed, tokens=tokens,
                                       with_params=False)
    if len(tokenizer) > model.llm.vocab_size:
        raise ConfigError(f'the tokenizer has {len(tokenizer)} tokens, more than the model '
                          f'vocab_size={model.llm.vocab_size}')
    model = model.replace(remat_policy=config.parallelism.remat_policy)
    data_dir = config.data.data_dir or os.path.join(workdir, 'tfds')
    # Every process holds the whole batch of prompts (they are small); each feeds its own
    # devices' rows into the global arrays (``sharding.host_to_global``).
    train_prompts = data_lib.PromptStream(
        data_lib.weight_by_tag(data_lib.load_prompts(config.data.train, data_dir),
                               config.data.tag_weights),
        config.batch_size, config.seed)
    eval_items = data_lib.load_prompts(config.data.eval, data_dir)[:config.eval_prompts]
    for items, source in ((train_prompts.examples, config.data.train),
                          (eval_items if config.eval_every else [], config.data.eval)):
        check_prompts_fit(tokenizer, tokens, items, source, config.data.max_prompt_tokens)
    for field, items, source in (('reward', train_prompts.examples, config.data.train),
                                 ('eval_reward', eval_items if config.eval_every else [],
                                  config.data.eval)):
        try:  # before anything is compiled or written
            registry.check_prompts(config[field].name, items, source)
        except ValueError as e:
            raise ConfigError(f'config.{field}.name={config[field].name!r}: {e}') from e
    if is_main:  # the config is checked: record it (a resume's allowed changes included)
        run_dir.save_config(workdir, config)
    preempt = _Preemption()
    reward_fn = rl_step.reward_with_deadline(
        registry.make_reward(config.reward.name, config.reward.options), config.reward_timeout_s,
        lambda: preempt.requested)
    system = system_ids(config, s.rollout.think, tokenizer, tokens)

    mesh = mesh_lib.make_mesh(s.mesh_shape, devices)
    optimizer = opt_lib.make_optimizer(config.optimizer, s.total_updates)
    rules, rollout_rules = strategy_rules(config.parallelism)
    max_len = config.data.max_prompt_tokens
    example = objective.batch_shapes(model, s.rollout, s.objective,
                                     0 if system is None else len(system), max_len, s.minibatch)
    programs = rl_step.build_programs(model, s, optimizer, mesh, rules, rollout_rules, example)
    # Each process reads only the shards of the checkpoint its devices hold.
    params = factory.build_model(config.model, seed=config.seed, tokens=tokens,
                                 shardings=programs.place.ref_params)[1]
    trainable = (params if s.lora is None else
                 lora_lib.init_lora(params, s.lora, jax.random.key(config.seed + 2)))
    state = step_lib.init_state(trainable, optimizer, programs.place)
    # Full fine-tuning: a frozen copy in the compute dtype (bf16 for the 7B config, float32 on
    # a CPU); LoRA: the base itself (the model, adapters off).
    frozen = step_lib.reference_params(params, programs.place, jnp.dtype(model.dtype))
    del params, trainable

    mgr = checkpointing.manager(workdir, max_to_keep=config.checkpoint_max_to_keep,
                                keep_period=config.checkpoint_keep_period)
    restored = checkpointing.restore(mgr, state)
    start = 0
    if restored is not None:
        state, meta = restored
        start = int(meta['step'])
        logging.info('resumed from step %d (%s)', start, meta)
    if is_main:
        keep_metrics_before(os.path.join(workdir, 'metrics.jsonl'), start)
    report = periodic_actions.ReportProgress(num_train_steps=config.total_steps, writer=writer)
    base_key = jax.random.key(config.seed)
    skipped_in_a_row = 0
    ae_dev = jax.device_put(ae, sharding.replicated(mesh))
    evaluate = evaluation.make_evaluator(
        config, s, model, mesh, tokenizer, tokens, system, eval_items,
        rl_step.reward_with_deadline(
            registry.make_reward(config.eval_reward.name, config.eval_reward.options),
            config.reward_timeout_s, lambda: preempt.requested), writer, workdir)

    def meta(step):
        return {'step': step, 'seed': config.seed, 'data_position': step * config.batch_size}

    def evaluate_state(state, step):  # the params evaluation reads (the moving average if kept)
        evaluate(programs.policy(opt_lib.evaluated_params(state.params, state.opt_state),
                                 frozen), ae_dev, step)

    if config.eval_every and start == 0:
        evaluate_state(state, 0)  # the curve's start
    for step in range(start, config.total_steps):
        checkpointing.raise_if_save_failed(mgr)  # a save that failed in the background
        items = train_prompts.batch(step)
        ids, lengths = tokenizer_lib.encode_segments(tokenizer, tokens,
                                                     [it['prompt'] for it in items], max_len)
        try:
            state, scalars = rl_step.rl_step(
                programs, s, state, frozen, ae_dev, system, ids, lengths, items,
                reward_fn, jax.random.fold_in(base_key, step), step)
        except rl_step.ParityError as e:  # this step's update is not saved
            raise TrainingError(f'{e} The last checkpoint in {workdir} is before it.') from e
        except rl_step.RewardError as e:
            # Keep the batch retryable: the state before this step is saved, and resuming
            # regenerates exactly this rollout (prompts and random numbers depend on the step).
            checkpointing.save(mgr, step, state, meta(step))
            mgr.wait_until_finished()
            if distributed.any_process(preempt.requested):  # SIGTERM while the reward ran
                mgr.close()
                raise Preempted(step, workdir) from e
            raise TrainingError(f'reward for step {step + 1} failed: {e}. The state before this '
                                f'step is checkpointed in {workdir}; fix the reward and run '
                                'again with the same --workdir to retry this batch.') from e
        skipped = scalars['skipped_updates']
        skipped_in_a_row = skipped_in_a_row + 1 if skipped else 0
        writer.write_scalars(step + 1, scalars)
        if is_main:
            with open(os.path.join(workdir, 'metrics.jsonl'), 'a') as f:
                f.write(json.dumps({'step': step + 1, **scalars}) + '\n')
        report(step + 1)
        logging.info('step %d/%d: reward %.3f, %.1f s (rollout %.1f, reward %.1f, reference '
                     '%.1f, update %.1f)', step + 1, config.total_steps, scalars['reward/mean'],
                     scalars['time/step_s'], scalars['time/rollout_s'], scalars['time/reward_s'],
                     scalars['time/reference_s'], scalars['time/update_s'])
        if skipped_in_a_row >= config.max_skipped_updates:
            raise TrainingError(f'{skipped_in_a_row} steps in a row had a non-finite loss or '
                                'gradient (updates skipped); stopping. Lower the learning rates '
                                'or check the rewards.')
        done = step + 1 == config.total_steps
        if config.eval_every and ((step + 1) % config.eval_every == 0 or done):
            evaluate_state(state, step + 1)
        # Every process stops at the same step (a SIGTERM may reach one host only, or land
        # on different sides of a step boundary): none enters a step the others left.
        stop = distributed.any_process(preempt.requested)
        if (step + 1) % config.checkpoint_every == 0 or done or stop:
            checkpointing.save(mgr, step + 1, state, meta(step + 1))
        if stop and not done:
            mgr.wait_until_finished()
            mgr.close()
            writer.flush()
            raise Preempted(step + 1, workdir)
    mgr.wait_until_finished()
    checkpointing.raise_if_save_failed(mgr)
    mgr.close()
    writer.flush()
    return state
