"""Rewards by name: a factory registered under a name builds a reward function from options.

A reward is ``reward(images, metadata) -> scores``: ``images`` uint8 ``[B, H, W, 3]``,
``metadata`` one GenEval-format dict per image (``tag``, ``include``, ``exclude``, ``prompt``),
``scores`` float32 ``[B]``. A factory takes the reward's options (a ``ConfigDict`` or a plain
dict) and returns the reward::

    @registry.register('remote')
    def remote_reward(options) -> Reward: ...

    reward = registry.make_reward('remote', {'url': 'http://host:18085'})

The modules in ``REWARD_MODULES`` are imported on the first look-up, so every built-in reward is
registered without its module having been imported by the caller.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

Reward = Callable[[np.ndarray, list[dict]], np.ndarray]
RewardFactory = Callable[[Mapping[str, Any]], Reward]

REWARD_MODULES = ('unigrpo_jax.rewards.remote', 'unigrpo_jax.rewards.shapes')

_factories: dict[str, RewardFactory] = {}


def _qualified_name(factory: RewardFactory) -> str:
    return f'{factory.__module__}.{factory.__qualname__}'


def register(name: str) -> Callable[[RewardFactory], RewardFactory]:
    """Decorator registering a reward factory under ``name``; returns the factory unchanged."""

    def add(factory: RewardFactory) -> RewardFactory:
        known = _factories.get(name)
        # The same function registered again (its module reloaded) replaces itself.
        if known is not None and _qualified_name(known) != _qualified_name(factory):
            raise ValueError(f'reward {name!r} is already registered by {_qualified_name(known)}; '
                             f'{_qualified_name(factory)} needs another name')
        _factories[name] = factory
        return factory

    return add


def _import_reward_modules() -> None:
    for module in REWARD_MODULES:
        importlib.import_module(module)


def names() -> list[str]:
    """The registered reward names, sorted."""
    _import_reward_modules()
    return sorted(_factories)


def make_reward(name: str, options: Mapping[str, Any] | None = None) -> Reward:
    """Builds the reward registered as ``name`` from ``options`` (a ConfigDict or dict)."""
    _import_reward_modules()
    if name not in _factories:
        raise ValueError(f'unknown reward {name!r}; registered rewards: {", ".join(names())}')
    return _factories[name]({} if options is None else options)
