"""Checks an RL config before anything is built or compiled.

Every error names the field, its value and what is allowed.
"""

from __future__ import annotations

from unigrpo_jax.model.config import ConfigError
from unigrpo_jax.parallel import mesh as mesh_lib
from unigrpo_jax.parallel import sharding
from unigrpo_jax.rewards import registry
from unigrpo_jax.rl.objective import MODES, REGULARIZERS

TRUNCATED = ('keep', 'zero', 'drop')


def _need(ok: bool, field: str, value, allowed: str) -> None:
    if not ok:
        raise ConfigError(f'config.{field}={value!r}: {allowed}')


def validate(config, num_devices: int) -> tuple[int, ...]:
    """Raises ``ConfigError`` on the first inconsistent field; returns the resolved mesh shape."""
    r, o = config.rollout, config.objective
    _need(config.total_steps >= 0, 'total_steps', config.total_steps, 'must be >= 0')
    _need(o.mode in MODES, 'objective.mode', o.mode, f'expected one of {MODES}')
    _need(o.regularizer in REGULARIZERS, 'objective.regularizer', o.regularizer,
          f'expected one of {REGULARIZERS}')
    _need(r.think == (o.mode != 'flowgrpo'), 'rollout.think', r.think,
          f'objective.mode={o.mode!r} needs rollout.think={o.mode != "flowgrpo"}')
    if o.mode == 'textgrpo':
        _need(r.window_size == 0, 'rollout.window_size', r.window_size,
              'textgrpo samples images by ODE only: set it to 0')
    else:
        _need(r.window_size >= 1, 'rollout.window_size', r.window_size,
              f'objective.mode={o.mode!r} trains the image: needs >= 1')
    steps = r.num_timesteps - 1
    _need(r.window_max_start + r.window_size <= steps, 'rollout.window_max_start',
          r.window_max_start, f'the window (size {r.window_size}) must end within the {steps} '
          f'steps of rollout.num_timesteps={r.num_timesteps}')
    _need(r.group_size >= 2, 'rollout.group_size', r.group_size,
          'GRPO needs >= 2 chains per prompt')
    _need(config.truncated_think in TRUNCATED, 'truncated_think', config.truncated_think,
          f'expected one of {TRUNCATED}')
    _need(config.ppo_epochs >= 1, 'ppo_epochs', config.ppo_epochs, 'must be >= 1')
    _need(0.0 < config.optimizer.final_lr_fraction <= 1.0, 'optimizer.final_lr_fraction',
          config.optimizer.final_lr_fraction, '1 = constant rates, < 1 = cosine decay to it; > 0')
    try:
        shape = mesh_lib.resolve_shape(config.parallelism.mesh, num_devices)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    rules = config.parallelism.rules.to_dict() if config.parallelism.rules else {}
    names = sorted({**sharding.STRATEGIES, **rules})
    _need(config.parallelism.strategy in names, 'parallelism.strategy',
          config.parallelism.strategy, f'expected one of {names}')
    _need(config.batch_size % num_devices == 0, 'batch_size', config.batch_size,
          f'the rollout runs data-parallel on all {num_devices} devices: use a multiple of it')
    chains = config.batch_size * r.group_size
    _need(chains % config.num_minibatches == 0, 'num_minibatches', config.num_minibatches,
          f'must divide batch_size * group_size = {chains}')
    dp = shape[0] * shape[1]
    minibatch = chains // config.num_minibatches
    _need(minibatch % dp == 0, 'num_minibatches', config.num_minibatches,
          f'a minibatch of {minibatch} chains must split over the data-parallel size {dp} '
          f'(mesh {shape})')
    for field in ('reward', 'eval_reward'):
        name = config[field].name
        _need(name in registry.names(), f'{field}.name', name,
              f'expected one of {registry.names()}')
    _need(config.eval_every >= 0 and config.checkpoint_every >= 1, 'checkpoint_every',
          config.checkpoint_every, 'must be >= 1 (and eval_every >= 0)')
    return shape
