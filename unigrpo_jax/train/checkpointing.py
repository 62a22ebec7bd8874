"""Checkpoints of training runs: the Orbax ``CheckpointManager`` of a run's train state
(async saves, a preservation policy, exact resume of params, optimizer state, step, data
position and RNG seed), reading a run's params alone, and params-only checkpoint
directories with their tokenizer (SFT)."""

from __future__ import annotations

import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp

from unigrpo_jax import errors
from unigrpo_jax.loading import orbax_io
from unigrpo_jax.loading.pipeline import TOKENIZER_DIR


def manager(workdir: str, *, max_to_keep: int, keep_period: int | None) -> ocp.CheckpointManager:
    """Keeps the latest ``max_to_keep`` checkpoints plus every ``keep_period``-th step."""
    policies = [ocp.checkpoint_managers.LatestN(max_to_keep)]
    if keep_period:
        policies.append(ocp.checkpoint_managers.EveryNSteps(keep_period))
    options = ocp.CheckpointManagerOptions(
        enable_async_checkpointing=True,
        cleanup_tmp_directories=True,  # a save cut short (a crash, a full disk) leaves none
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies))
    return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'),
                                 options=options)


def save(mgr: ocp.CheckpointManager, step: int, state, meta: dict) -> None:
    """Saves ``state`` (must be finite: the loop never saves a non-finite state) and ``meta``."""
    mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                           meta=ocp.args.JsonSave(meta)), force=True)


class CheckpointError(RuntimeError):
    """A checkpoint could not be written."""


def raise_if_save_failed(mgr: ocp.CheckpointManager) -> None:
    """Raises ``CheckpointError`` in one line (where, why, what to do) when a background save
    has failed (e.g. a full disk), so the run stops at once instead of training on unsaved."""
    try:
        mgr.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except  (any failure of the writer)
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        latest = mgr.latest_step()
        raise CheckpointError(
            f'saving a checkpoint under {mgr.directory} failed ({type(e).__name__}: {reason}); '
            'free disk space or fix the directory, then run again with the same --workdir: it '
            f'resumes from step {latest if latest is not None else 0}') from e


def restore(mgr: ocp.CheckpointManager, abstract_state) -> tuple[object, dict] | None:
    """The latest ``(state, meta)``, placed like ``abstract_state``; None without a checkpoint."""
    step = mgr.latest_step()
    if step is None:
        return None
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          abstract_state)
    try:
        out = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                        meta=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except  (Orbax's many ways to fail a read)
        damaged = os.path.join(mgr.directory, str(step))
        earlier = [s for s in mgr.all_steps() if s < step]
        advice = (f'remove {damaged} to resume from step {max(earlier)}' if earlier else
                  'no earlier checkpoint is left: use a new --workdir')
        reason = errors.first_line(e)
        raise CheckpointError(f'the checkpoint of step {step} ({damaged}) cannot be read '
                              f'({type(e).__name__}: {reason}); it is damaged (a crash or a '
                              f'full disk while it was written?): {advice}') from e
    return out['state'], out['meta']


WEIGHTS = ('params', 'ema')  # what restore_params reads: the params, or their moving average


def _ema_index(opt_state_meta) -> int | None:
    """Where ``train.optimizer.params_ema``'s state sits in a saved optimizer chain (None: the
    run kept no moving average)."""
    if isinstance(opt_state_meta, (list, tuple)):
        for i, entry in enumerate(opt_state_meta):
            if isinstance(entry, dict) and set(entry) == {'ema'}:
                return i
    return None


def restore_params(workdir: str, step: int | None = None,
                   weights: str = 'params') -> tuple[dict, dict]:
    """``(params, meta)`` of the checkpoint at ``step`` (None: the latest) under ``workdir``, as
    host numpy arrays; ``weights='ema'``: the moving average of the params the optimizer kept
    (``optimizer.ema_decay`` > 0) instead of the params.

    Reads only those arrays (not the rest of the optimizer state), whatever mesh saved them: for
    sampling and evaluation. Raises FileNotFoundError when the run has no checkpoint (at
    ``step``), ValueError for ``weights='ema'`` when the run kept no moving average.
    """
    if weights not in WEIGHTS:
        raise ValueError(f'weights={weights!r}; expected one of {WEIGHTS}')
    directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    mgr = ocp.CheckpointManager(directory, item_handlers={
        'state': ocp.PyTreeCheckpointHandler(), 'meta': ocp.JsonCheckpointHandler()})
    saved = mgr.all_steps() if os.path.isdir(directory) else []
    if not saved:
        raise FileNotFoundError(f'{workdir} has no checkpoint under {directory}')
    if step is None:
        step = max(saved)
    elif step not in saved:
        raise FileNotFoundError(f'{workdir} has no checkpoint of step {step}; saved steps: '
                                f'{sorted(saved)}')
    tree = mgr.item_metadata(step)['state'].tree

    def abstract(meta_tree):
        return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), meta_tree)

    index = _ema_index(tree['opt_state'])
    if weights == 'params':
        target = {'params': abstract(tree['params'])}
    elif index is None:
        mgr.close()
        raise ValueError(f'{workdir} kept no moving average of its params (its '
                         'optimizer.ema_decay was 0): read its params (weights=params)')
    else:  # the chain's other entries are left out (a partial restore)
        chain = [None] * len(tree['opt_state'])
        chain[index] = {'ema': abstract(tree['opt_state'][index]['ema'])}
        target = {'opt_state': chain}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    out = mgr.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(target, restore_args=restore_args, partial_restore=True),
        meta=ocp.args.JsonRestore()))
    mgr.close()
    state = out['state']
    return (state['params'] if weights == 'params' else state['opt_state'][index]['ema'],
            out['meta'])


def save_params_dir(directory: str, config, params, tokenizer_dir: str | None = None, *,
                    overwrite: bool = True) -> None:
    """A params-only checkpoint (SFT ``step_<k>/``, ``final/``, the shipped models):
    ``convert.orbax_io.save_params`` (configs and params; no autoencoder params, the
    ShapesEval model's identity autoencoder has none) plus a copy of the tokenizer under
    ``TOKENIZER_DIR``. ``convert.orbax_io.load_params`` reads it back."""
    orbax_io.save_params(directory, config, params, {}, overwrite=overwrite)
    if tokenizer_dir is not None:
        target = os.path.join(directory, TOKENIZER_DIR)
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(tokenizer_dir, target)
