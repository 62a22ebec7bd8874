"""A training run's directory read back for sampling and evaluation: its settings and params.

Accepted directories:

* an RL workdir (``launch/train.py``): ``rl_config.json`` (the experiment config, written when
  the run starts) and ``checkpoints/<step>/`` (the latest one is read; LoRA adapters are merged
  into the base model of ``config.model``);
* an SFT workdir (``launch/train_sft.py``): ``sft_config.json`` and ``final/`` or, while it
  trains, the latest ``step_<k>/``;
* an exported SFT checkpoint (``checkpoints/shapes_sft_*``): ``sft_config.json`` next to the
  params.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import socket
import tempfile
import time

import jax
import jax.numpy as jnp
import ml_collections

from unigrpo_jax.loading import factory
from unigrpo_jax.loading import orbax_io
from unigrpo_jax.loading import tokenizer as tokenizer_lib
from unigrpo_jax.model.config import BagelConfig
from unigrpo_jax.errors import ConfigError
from unigrpo_jax.rl import objective
from unigrpo_jax.train import checkpointing, settings
from unigrpo_jax.train import lora as lora_lib

RL_CONFIG = 'rl_config.json'
SFT_CONFIG = 'sft_config.json'
SFT_FINAL = 'final'


@dataclasses.dataclass
class Run:
    """What sampling needs from a run (both kinds give the same fields)."""

    directory: str
    kind: str                  # 'rl' | 'sft'
    checkpoint: str            # what the params were read from (for messages)
    step: int | None           # the RL step of the checkpoint (None for SFT)
    model: BagelConfig
    params: dict               # policy params (host or device arrays)
    ae_params: dict
    tokenizer_dir: str
    think: bool
    system_prompt: str
    max_prompt_tokens: int
    max_think_tokens: int      # sampled tokens incl. the closing eos
    image_size: tuple[int, int]
    eval: ml_collections.ConfigDict  # sampler settings (config ``eval`` section)


LOCK = '.run_lock'
# Fields a resumed run may change: its length and bookkeeping, how it is laid out on the
# devices (the algorithm is the same; checkpoints restore onto any mesh) and how its rewards
# are reached (a reward server's address, retries and timeouts), and the parity checks' bounds.
RESUMABLE_CHANGES = ('total_steps', 'eval_every', 'checkpoint_every', 'checkpoint_max_to_keep',
                     'checkpoint_keep_period', 'max_skipped_updates', 'distributed',
                     'parity_bound', 'parity_bounds.',
                     'parallelism.', 'reward.options.', 'eval_reward.options.')


class WorkdirError(ConfigError):
    """A workdir another run owns, or a resume whose config differs from the run's."""


def make_writable(workdir: str) -> None:
    """Creates ``workdir`` (and its parents) and checks that a file can be written in it;
    raises ``WorkdirError`` naming it when not (a read-only mount, no permission, a file in
    the way), before a run spends anything on it."""
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.TemporaryFile(dir=workdir):
            pass
    except OSError as e:
        raise WorkdirError(f'--workdir={workdir} cannot be written ({e.strerror or e}): give a '
                           'directory this process can create and write') from e


def save_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Writes the experiment config an RL run was started with (``load`` reads it)."""
    with open(os.path.join(workdir, RL_CONFIG), 'w') as f:
        f.write(config.to_json_best_effort(indent=1))


def lock(workdir: str):
    """Makes this process the owner of ``workdir`` until the returned file is closed (or the
    process ends, however it ends: the kernel drops the ``flock``, so a crashed run leaves no
    stale lock). Raises ``WorkdirError`` naming the owner when another run holds it. (Local and
    most network file systems honour ``flock``; object stores such as GCS do not.)"""
    path = os.path.join(workdir, LOCK)
    handle = open(path, 'a+')
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or 'unknown'
        handle.close()
        raise WorkdirError(f'workdir {workdir} is in use by another run ({owner}): wait for it '
                           'to end or stop it, or choose another --workdir') from None
    handle.seek(0)
    handle.truncate()
    handle.write(f'pid {os.getpid()} on {socket.gethostname()} since '
                 f'{time.strftime("%Y-%m-%d %H:%M:%S")}\n')
    handle.flush()
    return handle


def _flat(tree, prefix: str = '') -> dict:
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f'{prefix}{k}.'))
    return out


# Fields added after runs may have been saved, with the value that keeps those runs' behaviour:
# a saved config without the field equals a current one with that value.
ADDED_FIELDS = {'optimizer.ema_decay': 0.0}


def config_changes(saved: dict, current: dict) -> list[str]:
    """``'field: saved -> current'`` for each field that differs between two configs (as
    JSON dicts), except ``RESUMABLE_CHANGES`` (and ``ADDED_FIELDS`` absent from ``saved``
    and at their former behaviour's value in ``current``)."""
    a, b = {**ADDED_FIELDS, **_flat(saved)}, _flat(current)
    return [f'{k}: {a.get(k, "(absent)")!r} -> {b.get(k, "(absent)")!r}'
            for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and not any(k == c or (c.endswith('.') and k.startswith(c))
                                                for c in RESUMABLE_CHANGES)]


def check_resume_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Raises ``WorkdirError`` listing the changed fields when ``workdir`` holds a run's
    checkpoints and a config that differs from ``config`` outside ``RESUMABLE_CHANGES``
    (nothing to compare in a new workdir, or one whose run never saved)."""
    path = os.path.join(workdir, RL_CONFIG)
    checkpoints = os.path.join(workdir, 'checkpoints')
    if not os.path.exists(path) or not os.path.isdir(checkpoints) or not os.listdir(checkpoints):
        return
    steps = [int(name) for name in os.listdir(checkpoints) if name.isdigit()]
    if steps and max(steps) > config.total_steps:
        raise WorkdirError(f'{workdir} holds a checkpoint at step {max(steps)}, past '
                           f'total_steps={config.total_steps}: nothing to train. Raise '
                           '--config.total_steps to continue the run, or evaluate it '
                           '(launch/evaluate.py --workdir).')
    with open(path) as f:
        saved = json.load(f)
    changes = config_changes(saved, json.loads(config.to_json_best_effort()))
    if changes:
        shown = '; '.join(changes[:10]) + (f'; and {len(changes) - 10} more'
                                           if len(changes) > 10 else '')
        raise WorkdirError(f'{workdir} holds a run with another config ({RL_CONFIG}); resuming '
                           f'it would mix the two. Changed: {shown}. Use a new --workdir, or '
                           'the run\'s own values (only the run length, checkpoint/eval '
                           'cadence and parallelism may change on a resume).')


def _read_json(path: str) -> ml_collections.ConfigDict:
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def sft_run(directory: str, config: ml_collections.ConfigDict, model: BagelConfig, params,
            checkpoint: str = '') -> Run:
    """A ``Run`` from an SFT config and params (also for params still in memory)."""
    tok = os.path.join(checkpoint, checkpointing.TOKENIZER_DIR) if checkpoint else ''
    return Run(directory=directory, kind='sft', checkpoint=checkpoint or directory, step=None,
               model=model, params=params, ae_params={},
               tokenizer_dir=tok if tok and os.path.isdir(tok) else config.tokenizer,
               think=bool(config.think), system_prompt='',
               max_prompt_tokens=int(config.data.max_prompt_tokens),
               max_think_tokens=int(config.data.max_think_tokens),
               image_size=tuple(config.data.image_size), eval=config.eval)


def _latest_sft_checkpoint(directory: str) -> str:
    final = os.path.join(directory, SFT_FINAL)
    if orbax_io.is_converted(final):
        return final
    steps = sorted((int(m.group(1)), name) for name in os.listdir(directory)
                   if (m := re.fullmatch(r'step_(\d+)', name)))
    for _, name in reversed(steps):
        if orbax_io.is_converted(os.path.join(directory, name)):
            return os.path.join(directory, name)
    if orbax_io.is_converted(directory):
        return directory
    raise FileNotFoundError(f'{directory} has {SFT_CONFIG} but no checkpoint ({SFT_FINAL}/, '
                            'step_<k>/ or params next to the config)')


def _load_rl(directory: str, step: int | None, weights: str | None) -> Run:
    config = _read_json(os.path.join(directory, RL_CONFIG))
    if weights is None:  # the run's own choice (runs before ema_decay existed kept none)
        weights = ('ema' if config.optimizer.get('ema_decay', ADDED_FIELDS['optimizer.ema_decay'])
                   > 0 else 'params')
    tokens = tokenizer_lib.load_tokenizer(config.tokenizer)[1]
    spec = settings.lora_spec(config.lora)
    # The run's checkpoint holds the policy (LoRA: only the adapters, so the base is read too).
    model, base, ae_params = factory.build_model(config.model, seed=config.seed, tokens=tokens,
                                                 with_params=spec is not None)
    params, meta = checkpointing.restore_params(directory, step, weights)
    if spec is not None:  # the checkpoint holds the adapters; the policy is base + adapters
        params = jax.jit(lambda b, a: lora_lib.merge(b, a, spec))(
            jax.tree.map(lambda x: jnp.asarray(x, model.dtype), base), params)
    r = config.rollout
    think = objective.thinks(config.objective.mode)
    where = os.path.join(directory, 'checkpoints') + (' (moving average)' if weights == 'ema'
                                                       else '')
    return Run(directory=directory, kind='rl', checkpoint=where,
               step=int(meta['step']), model=model, params=params, ae_params=ae_params,
               tokenizer_dir=config.tokenizer, think=think,
               system_prompt=config.system_prompt if think else '',
               max_prompt_tokens=int(config.data.max_prompt_tokens),
               max_think_tokens=int(r.max_think_tokens), image_size=tuple(r.image_size),
               eval=config.eval)


def load(directory: str, step: int | None = None, weights: str | None = None) -> Run:
    """The ``Run`` of an RL workdir (its checkpoint at ``step``; None: the latest), an SFT
    workdir or an exported SFT checkpoint (their final or latest params; no ``step``).
    ``weights`` (RL runs): ``'params'`` or ``'ema'`` (``checkpointing.restore_params``); None:
    the moving average when the run kept one (``optimizer.ema_decay`` > 0), else the params."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f'run directory {directory!r} does not exist')
    if os.path.exists(os.path.join(directory, RL_CONFIG)):
        return _load_rl(directory, step, weights)
    if weights is not None:
        raise ValueError(f'weights={weights!r}: only RL run directories ({RL_CONFIG}) choose '
                         f'their weights (an SFT checkpoint holds one set); {directory} is not one')
    if step is not None:
        raise ValueError(f'step={step}: only RL run directories ({RL_CONFIG}) have checkpoints '
                         f'by step; {directory} is not one')
    if os.path.exists(os.path.join(directory, SFT_CONFIG)):
        config = _read_json(os.path.join(directory, SFT_CONFIG))
        checkpoint = _latest_sft_checkpoint(directory)
        model, params, _ = orbax_io.load_params(checkpoint)
        return sft_run(directory, config, model, params, checkpoint)
    raise FileNotFoundError(f'{directory} is not a run directory: it has neither {RL_CONFIG} '
                            f'(launch/train.py) nor {SFT_CONFIG} (launch/train_sft.py)')
