"""One UniGRPO iteration as a function: rollout -> score -> advantages -> PPO updates.

``build_programs`` compiles what an RL run executes (the compute-dtype copy of the policy the
rollout samples from, the rollout, the reference forward, minibatch selection, the train step)
with the placements of ``train.step``;
``rl_step`` runs one iteration on a batch of prompts and returns the new train state and its
metrics. It writes nothing (no checkpoints, logs or files): ``train.loop`` drives it.

The ratios' old log-probs and step means: the first update on a rollout batch takes them from
its own forward (the params are still those that drew the samples, so they are the rollout
policy's, and every ratio is exactly 1 in every dtype), and records them for the batch's later
updates (``objective.record_old``); with several minibatches every chain's old values come from
one forward of the update's loss before any update (``make_old_values_fn``), so no chain keeps
the rollout's. The rollout's own values are compared with that first forward
(``parity/rollout_*``); beyond ``Settings.parity_bounds`` (per term, on its own ratio's scale:
``Term.parity_metric``) the step raises ``ParityError``.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils

from unigrpo_jax.model import bagel
from unigrpo_jax.model.config import BagelConfig
from unigrpo_jax.parallel import distributed, sharding
from unigrpo_jax.rl import advantages, compaction, objective, replay
from unigrpo_jax.rollout import rollout as rollout_lib
from unigrpo_jax.rollout import trajectory
from unigrpo_jax.train import lora as lora_lib
from unigrpo_jax.train import step as step_lib
from unigrpo_jax.train.settings import Settings


# The stream of an RL step's key that the terms' preparations draw from (the rollout draws from
# the key itself).
PREPARE_STREAM = 1


class RewardError(RuntimeError):
    """The reward function failed or returned something other than finite scores."""


class ParityError(RuntimeError):
    """The update's log-probs of the rollout's own samples, under the rollout's params, differ
    from the rollout's by more than ``Settings.parity_bounds`` allows."""


@dataclasses.dataclass(frozen=True)
class RunFunctions:
    """The jitted functions of an RL run and the placements they were compiled for."""

    place: step_lib.Placement
    policy_sharding: Any  # where the params the rollout samples from live
    policy: Callable     # (state.params, frozen) -> those params, in the compute dtype
    rollout: Callable    # (policy params, ae_params, system_ids, ids, lengths, key) -> Rollout
    # (TrainBatch, chains [M], in_update [M]) -> the chains with signal (rl.compaction)
    compact: Callable
    # {chains of a bucket: (frozen, TrainBatch, key) -> the batch with its terms' preparations}
    reference: dict[int, Callable]
    select: Callable     # (TrainBatch, idx [M]) -> the minibatch, placed for train_step
    # {chains of a bucket: (state, frozen, TrainBatch) -> every chain's old values}; only
    # with several minibatches (make_old_values_fn)
    old_values: dict[int, Callable]
    # {minibatch chains: (state, frozen, TrainBatch) -> (state, metrics, per-chain values)}
    train_step: dict[int, Callable]
    record: Callable     # (TrainBatch, idx [M], per-chain values) -> objective.record_old's batch


def rl_loss(config: BagelConfig, obj: objective.ObjectiveConfig,
            param_shardings: Any = None, split_terms: bool = False) -> step_lib.Losses:
    """The full fine-tuning RL loss for ``step_lib.make_train_step`` (trainable = params; the
    frozen reference enters through the batch's preparations); with ``split_terms`` one part
    per slot of the objective (``step_lib.Losses``: each micro-step replays the context once per
    term, with the memory of the larger term).

    The float32 params are cast to the compute dtype first (``bagel.compute_params``: the
    forward is bitwise the one of the float32 params, the gradient flows back to them), and
    with ``param_shardings`` the cast copy is constrained to the params' own (sharded)
    placement: with fsdp the weights are then gathered in the compute dtype, half the bytes of
    float32 for bfloat16, instead of gathered in float32 and cast after."""
    dtype = jnp.dtype(config.dtype)

    def part(slots):
        def loss(params, frozen, batch, step, totals):
            del frozen, step
            compute = bagel.compute_params(params, dtype)
            if param_shardings is not None:
                compute = jax.tree.map(jax.lax.with_sharding_constraint, compute,
                                       param_shardings)
            return objective.loss_fn(compute, batch, config, obj, totals, slots)
        return loss

    if not split_terms:
        return part(None)
    return tuple(part((t.slot,)) for t in obj.terms)


def unprepared(place: step_lib.Placement):
    """The shardings of a batch before ``objective.prepare`` (no ``extras`` yet)."""
    return place.batch.replace(extras={})


def make_reference_fn(config: BagelConfig, obj: objective.ObjectiveConfig,
                      place: step_lib.Placement, micro_batches: int):
    """``reference(frozen, batch, key) -> batch`` with the terms' preparations
    (``objective.prepare``; the frozen params are the reference for full fine-tuning and the
    base for LoRA), jitted, in ``micro_batches`` sequential pieces of the rollout batch (the
    memory of one piece; piece j draws from ``fold_in(key, j)``). Runs once per rollout
    batch."""
    before = unprepared(place)

    def reference(frozen, batch, key):
        pieces = trajectory.split_micro_batches(batch, micro_batches)

        def one(j):
            piece = jax.lax.with_sharding_constraint(trajectory.micro_batch(pieces, j), before)
            return objective.prepare(frozen, config, piece, obj,
                                     jax.random.fold_in(key, j)).extras

        outs = jax.lax.map(one, jnp.arange(micro_batches))
        return batch.replace(extras=trajectory.merge_micro_batches(outs))

    return jax.jit(sharding.traced_on(place.mesh, reference),
                   in_shardings=(place.ref_params, before, sharding.replicated(place.mesh)),
                   out_shardings=place.batch)


def make_old_values_fn(loss: step_lib.Losses, place: step_lib.Placement, micro_batches: int,
                       totals: Callable):
    """``old_values(state, frozen, batch) -> (recorded, scalars)``: ``recorded {name: [B, ...]}``
    the per-chain values the terms record as old values (``trajectory.PER_CHAIN_METRICS``) of
    every chain of ``batch`` at the state's params, in ``micro_batches`` sequential pieces, before
    any update; ``scalars``: the rollout-vs-update parity over all chains (``parity/rollout_*``,
    the max over pieces) and ``grad_norm/rollout_batch``, the norm of the whole batch's gradient.

    It is the update's own computation (``step.accumulated_gradient``), gradient included (its
    norm is returned), so that XLA compiles the forward as in the update: a forward alone fuses differently and its log-probs differ from the update's by
    rounding (1e-6 in bf16 on ``configs/bagel_grpo.py:tiny``), outside the 1e-6 flow clip.
    With these old values every minibatch's first ratio is exactly 1 in every dtype."""

    def old_values(state, frozen, batch):
        grads, _, metrics, recorded = step_lib.accumulated_gradient(
            loss, state.params, frozen, batch, state.step, totals(batch), micro_batches,
            place.batch)
        scalars = {k: jnp.max(v) for k, v in metrics.items() if k.startswith('parity/rollout_')}
        scalars['grad_norm/rollout_batch'] = optax.tree.norm(grads)
        return step_lib.merge_per_chain(recorded), scalars

    return jax.jit(sharding.traced_on(place.mesh, old_values),
                   in_shardings=(place.state, place.ref_params, place.batch),
                   out_shardings=(place.batch.advantages, sharding.replicated(place.mesh)))


def build_programs(model: BagelConfig, s: Settings, optimizer, mesh, rules, rollout_rules,
                   batch_example) -> RunFunctions:
    """The programs of full fine-tuning, or of LoRA when ``s.lora`` is set (the state then
    holds only the adapters; the frozen params are the base). ``rollout_rules``: the strategy
    placing the compute-dtype copy of the policy the rollout samples from."""
    if s.lora is None:
        place = step_lib.placement(model, optimizer, mesh, rules, batch_example)
        loss = rl_loss(model, s.objective, place.params, s.split_terms)
        merged = lambda trainable, frozen: trainable  # noqa: E731
    else:
        place = lora_lib.lora_placement(model, s.lora, optimizer, mesh, rules, batch_example)
        # The merged params are placed like the base (the frozen params).
        loss = lora_lib.adapter_loss(
            rl_loss(model, s.objective, place.ref_params, s.split_terms), s.lora)
        spec = s.lora
        merged = lambda trainable, frozen: lora_lib.merge(frozen, trainable, spec)  # noqa: E731
    dtype = jnp.dtype(model.dtype)
    policy_sharding = sharding.param_shardings(bagel.abstract_params(model), mesh, rollout_rules)
    def policy(trainable, frozen):  # cast where the params live, then gather the copy
        return jax.tree.map(jax.lax.with_sharding_constraint,
                            bagel.compute_params(merged(trainable, frozen), dtype),
                            place.ref_params)

    policy = jax.jit(policy, out_shardings=policy_sharding)
    totals = functools.partial(objective.loss_totals, obj=s.objective)
    return RunFunctions(
        place=place, policy_sharding=policy_sharding, policy=policy,
        rollout=rollout_lib.make_rollout_fn(model, s.rollout, mesh, policy_sharding,
                                            s.rollout_calls, s.rollout_group_pieces),
        compact=jax.jit(functools.partial(compaction.compact, obj=s.objective),
                        out_shardings=unprepared(place)),
        reference={m: make_reference_fn(model, s.objective, place, s.reference_pieces_of(m))
                   for m in s.buckets},
        select=jax.jit(trajectory.select_chains, out_shardings=place.batch),
        old_values={m: make_old_values_fn(loss, place, s.reference_pieces_of(m), totals)
                    for m in s.buckets} if s.num_minibatches > 1 else {},
        train_step={m // s.num_minibatches: step_lib.make_train_step(
            loss, optimizer, place, s.micro_batches_of(m // s.num_minibatches), totals,
            recorded=True) for m in s.buckets},
        record=jax.jit(functools.partial(objective.record_old, obj=s.objective),
                       out_shardings=place.batch, donate_argnums=(0,)))


def reward_with_deadline(reward_fn, timeout_s: float, interrupted: Callable[[], bool],
                         log_every_s: float = 30.0):
    """``reward_fn`` run in a daemon thread that the caller waits on: it raises
    ``TimeoutError`` after ``timeout_s`` seconds and ``InterruptedError`` as soon as
    ``interrupted()`` (e.g. SIGTERM), so a reward that never returns can neither hang the run
    nor keep it from saving; every ``log_every_s`` seconds the log says it is waiting.
    (A thread that never returns is left behind; it does not keep the process alive.)"""
    def call(images, metadata):
        result = {}

        def run():
            try:
                result['scores'] = reward_fn(images, metadata)
            except BaseException as e:  # pylint: disable=broad-except  (re-raised below)
                result['error'] = e

        worker = threading.Thread(target=run, name='reward', daemon=True)
        start = time.monotonic()
        worker.start()
        logged = start
        while worker.is_alive():
            worker.join(0.2)
            now = time.monotonic()
            if not worker.is_alive():
                break
            if interrupted():
                raise InterruptedError(f'stopped while waiting {now - start:.0f} s on the reward')
            if now - start > timeout_s:
                raise TimeoutError(f'the reward did not return within reward_timeout_s='
                                   f'{timeout_s:g} s')
            if now - logged >= log_every_s:
                logging.info('waiting on the reward: %.0f s of reward_timeout_s=%g', now - start,
                             timeout_s)
                logged = now
        if 'error' in result:
            raise result['error']
        return result['scores']

    return call


def score(reward_fn, images: jax.Array, metadata: list[dict]) -> np.ndarray:
    """``[n]`` float32 rewards of ``images [n, H, W, 3]`` (row i described by
    ``metadata[i]``), the same on every process: each process scores the images its own
    devices hold and the rewards are gathered. Raises ``RewardError`` on every process when
    the reward fails or returns bad scores on any of them.
    """
    rows, local = sharding.addressable_rows(images)
    error, cause = '', None
    try:
        scores = (np.asarray(reward_fn(local, [metadata[r] for r in rows]), np.float32)
                  if len(rows) else np.zeros((0,), np.float32))  # its devices' copies' share
        if scores.shape != rows.shape:
            error = (f'the reward returned {scores.size} scores (shape {scores.shape}) for '
                     f'{len(rows)} images')
        elif not np.isfinite(scores).all():
            bad = np.flatnonzero(~np.isfinite(scores))
            error = (f'the reward returned non-finite scores for {len(bad)} of {len(rows)} '
                     f'images (e.g. {scores[bad[0]]} for image {int(rows[bad[0]])})')
    except Exception as e:  # the reward is user code (or a remote server): say where it broke
        error, cause = f'{type(e).__name__}: {e}', e
    if error:
        scores = np.full(rows.shape, np.nan, np.float32)
    every = distributed.gather_rows(rows, scores, len(metadata))
    if error:
        raise RewardError(error) from cause  # the scorer's own traceback stays attached
    if not np.isfinite(every).all():
        raise RewardError('the reward failed on another process (see its log)')
    return every


def rl_step(programs: RunFunctions, s: Settings, state: step_lib.TrainState, frozen: Any,
            ae_params, system_ids: np.ndarray | None, prompt_ids: np.ndarray,
            prompt_lengths: np.ndarray, items: list[dict], reward_fn, key: jax.Array,
            step: int) -> tuple[step_lib.TrainState, dict[str, float]]:
    """One RL iteration on ``prompts`` prompts (``prompt_ids [prompts, P]``, their metadata
    ``items``); ``key`` draws the rollout's random numbers and ``step`` orders the minibatches.

    Returns the new state and the iteration's scalars: the train steps' metrics averaged over
    minibatches and epochs, rewards, parity of the first minibatch and the time split.
    """
    t0 = time.time()
    out = programs.rollout(programs.policy(state.params, frozen), ae_params, system_ids,
                           prompt_ids, prompt_lengths, key)
    jax.block_until_ready(out)
    t_rollout = time.time()
    chains = s.chains
    closed = (multihost_utils.process_allgather(out.trajectory.think_closed, tiled=True)
              if s.rollout.think else np.ones(chains, bool))
    chain_items = [item for item in items for _ in range(s.rollout.group_size)]
    scores = advantages.chain_rewards(score(reward_fn, out.images, chain_items), closed,
                                      s.truncated_think)
    t_reward = time.time()
    adv, weight = advantages.chain_advantages(
        scores, closed, s.rollout.group_size, truncated_think=s.truncated_think,
        skip_zero_variance_groups=s.skip_zero_variance_groups, std=s.advantage_std,
        eps=s.advantage_eps, clip=s.advantage_clip)
    system = system_ids if system_ids is not None else np.zeros((0,), np.int32)
    chains_placement = programs.place.batch.advantages  # host -> global arrays on the mesh
    whole = sharding.replicated(programs.place.mesh)  # minibatch indices, on every device
    batch = replay.train_batch(out, jnp.asarray(system),
                               sharding.host_to_global(adv, chains_placement),
                               sharding.host_to_global(weight, chains_placement))
    signal = compaction.has_signal(adv, weight)
    n = chains
    if s.update_chains == 'signal':  # the update runs on the chains with signal only
        kept, in_update = compaction.select(signal, s.buckets)
        n = len(kept)
        batch = programs.compact(batch, sharding.host_to_global(kept, whole),
                                 sharding.host_to_global(in_update, whole))
    # The minibatches of every epoch (one: the batch itself, no shuffled copy of it).
    orders = [np.random.default_rng([s.seed, step, epoch]).permutation(n)
              for epoch in range(s.ppo_epochs)] if s.num_minibatches > 1 else None
    minibatches = ([np.split(order, s.num_minibatches) for order in orders] if orders
                   else [[None]] * s.ppo_epochs)
    # The first update takes its old log-probs and means from its own forward (exactly
    # on-policy in every dtype), and records them for the later updates of these chains.
    first = minibatches[0][0] if orders else np.arange(n)
    fresh = np.zeros(n, np.float32)
    fresh[first] = 1.0
    batch = programs.reference[n](frozen, batch.replace(
        fresh_old=sharding.host_to_global(fresh, chains_placement)),
        jax.random.fold_in(key, PREPARE_STREAM))
    before_update = {}  # with several minibatches: parity over all chains, measured before
    if orders:  # every chain's old values from the update's numerics, before any update
        recorded, before_update = programs.old_values[n](state, frozen, batch)
        batch = programs.record(batch, sharding.host_to_global(np.arange(n), whole), recorded)
        # (the first minibatch still takes its own forward's: exactly 1 by construction)
        batch = batch.replace(fresh_old=sharding.host_to_global(fresh, chains_placement))
    jax.block_until_ready(batch)
    t_reference = time.time()
    train_step = programs.train_step[n // s.num_minibatches]
    metrics = []
    for epoch, parts in enumerate(minibatches):
        for k, mb in enumerate(parts):
            idx = None if mb is None else sharding.host_to_global(mb, whole)
            state, m, recorded = train_step(
                state, frozen, batch if idx is None else programs.select(batch, idx))
            metrics.append(m)
            if epoch == 0 and k == 0 and s.ppo_epochs > 1:
                batch = programs.record(batch, sharding.host_to_global(first, whole), recorded)
    metrics = jax.device_get(metrics)
    t_done = time.time()
    scalars = {k: float(np.mean([m[k] for m in metrics])) for k in metrics[0]}
    scalars.update({
        'reward/mean': float(scores.mean()), 'reward/std': float(scores.std()),
        # The signal GRPO has (the spread of rewards within a prompt's group, the groups
        # whose chains all scored the same), over the chains its statistics count.
        **advantages.signal_metrics(
            scores, adv, weight, advantages.counted_chains(closed, s.truncated_think),
            s.rollout.group_size),
        'think/closed_fraction': float(closed.mean()),
        'skipped_updates': sum(float(m['skipped']) for m in metrics),
        # The chains with signal, and the chains the reference and the updates ran on.
        'update/signal_fraction': float(signal.mean()),
        'update/chains': float(n),
        # The first update's ratio against its own old values (0: exactly on-policy), its
        # clipped fraction (0), and its log-probs against the rollout's (the same params:
        # what separates the rollout's computation from the update's).
        'parity/first_minibatch_text_max_abs_logp_diff':
            float(metrics[0].get('parity/text_max_abs_logp_diff', 0.0)),
        'parity/first_minibatch_image_max_abs_logp_diff':
            float(metrics[0].get('parity/image_max_abs_logp_diff', 0.0)),
        'image/first_minibatch_clip_fraction':
            float(metrics[0].get('image/clip_fraction', 0.0)),
        **{k: float(v) for k, v in metrics[0].items() if k.startswith('parity/rollout_')},
        **{k: float(v) for k, v in jax.device_get(before_update).items()},
        'time/step_s': t_done - t0,
        'time/rollout_s': t_rollout - t0,
        'time/reward_s': t_reward - t_rollout,  # with the images' copy to the host
        'time/reference_s': t_reference - t_reward,  # and the advantages
        'time/update_s': t_done - t_reference,
    })
    for term in s.objective.terms:
        if term.parity_metric is None:  # no likelihood of the rollout's samples (NFT)
            continue
        diff, bound = scalars[term.parity_metric], s.parity_bounds[term.slot]
        if diff > bound:
            raise ParityError(
                f'step {step + 1}: the update\'s replay of the rollout\'s samples under the '
                f'params that drew them disagrees with the rollout in the {term.name} term: '
                f'{term.parity_metric}={diff:.3g} > parity_bounds.{term.slot}={bound:g}. The '
                'rollout and the update compute different policies (a dtype, an attention '
                'kernel, a sharding, or a bug). Rerun with --config.model.dtype=float32: if '
                'the difference drops to rounding there (~1e-7), it is bfloat16 rounding and '
                f'--config.parity_bounds.{term.slot} may be raised above it; otherwise the '
                'rollout samples from another policy than the one trained.')
    return state, scalars
