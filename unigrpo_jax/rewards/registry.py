"""Rewards by name: a factory registered under a name builds a reward function from options.

A reward is ``reward(images, metadata) -> scores``: ``images`` uint8 ``[B, H, W, 3]``,
``metadata`` one GenEval-format dict per image (``tag``, ``include``, ``exclude``, ``prompt``),
``scores`` float32 ``[B]``. A factory takes the reward's options (a ``ConfigDict`` or a plain
dict) and returns the reward::

    @registry.register('remote')
    def remote_reward(options) -> Reward: ...

    reward = registry.make_reward('remote', {'url': 'http://host:18085'})

Registration is all a reward needs. On the first look-up the registry imports every module of
the installed ``unigrpo_jax`` package at a conventional place: ``unigrpo_jax.rewards.<name>``
(general rewards) and ``unigrpo_jax.<package>.reward`` (a package's own reward, e.g.
``unigrpo_jax.shapes.reward`` registers ``shapes``); nothing lists them. A reward of one's own
module is named ``some.module:name``: the look-up imports ``some.module`` (which registers
``name`` with ``@register('name')``) and returns ``name``::

    reward = registry.make_reward('my_rewards:brightness', {})   # my_rewards.py on sys.path
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from unigrpo_jax import discovery

Reward = Callable[[np.ndarray, list[dict]], np.ndarray]
RewardFactory = Callable[[Mapping[str, Any]], Reward]

REWARDS_PACKAGE = 'rewards'   # every module of unigrpo_jax.rewards is imported
REWARD_MODULE = 'reward'      # and the module unigrpo_jax.<package>.reward of every package

_factories: dict[str, RewardFactory] = {}
_metadata_checks: dict[str, Callable[[dict], str | None]] = {}
_discovered = False


class UnknownRewardError(ValueError):
    """No reward is registered under a name (or its ``module:`` cannot be imported)."""


def register(name: str, metadata_problem: Callable[[dict], str | None] | None = None
             ) -> Callable[[RewardFactory], RewardFactory]:
    """Decorator registering a reward factory under ``name``; returns the factory unchanged.

    ``metadata_problem(metadata) -> str | None``: what makes one prompt's metadata unusable
    for this reward (None: usable); ``check_prompts`` runs it on a run's prompts before
    anything is compiled (e.g. ``geneval.metadata_problem`` for a reward needing GenEval's
    ``include`` clauses)."""
    if not name or ':' in name:
        raise ValueError(f'a reward name must be non-empty and without ":", got {name!r}')

    def add(factory: RewardFactory) -> RewardFactory:
        known = _factories.get(name)
        # The same function registered again (its module reloaded) replaces itself.
        if known is not None and (discovery.qualified_name(known)
                                  != discovery.qualified_name(factory)):
            raise ValueError(f'reward {name!r} is already registered by '
                             f'{discovery.qualified_name(known)}; '
                             f'{discovery.qualified_name(factory)} needs another name')
        _factories[name] = factory
        if metadata_problem is not None:
            _metadata_checks[name] = metadata_problem
        return factory

    return add


def reward_modules() -> list[str]:
    """The modules of the installed package that may register rewards, sorted:
    ``unigrpo_jax.rewards.<name>`` and ``unigrpo_jax.<package>.reward``."""
    return discovery.modules_named(REWARD_MODULE, every_module_of=REWARDS_PACKAGE)


def _discover() -> None:
    """Imports ``reward_modules()`` once (their ``@register`` decorators fill the registry)."""
    global _discovered
    if not _discovered:
        discovery.import_all(reward_modules())
        _discovered = True


def _import_user_module(spec: str, module: str) -> None:
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or not (module == e.name or module.startswith(e.name + '.')):
            raise  # the module exists; something it imports does not
        raise UnknownRewardError(f'reward {spec!r}: cannot import module {module!r} ({e}); '
                                 f'registered rewards: {", ".join(sorted(_factories))}') from e


def lookup(name: str) -> RewardFactory:
    """The factory registered as ``name``, or, for ``'some.module:name'``, the factory that
    importing ``some.module`` registers as ``name``. Raises ``UnknownRewardError`` (a
    ValueError) naming the registered rewards."""
    _discover()
    module, colon, short = name.rpartition(':')
    if colon:
        if not module or not short:
            raise UnknownRewardError(f'reward {name!r}: expected "name" or "module:name"')
        _import_user_module(name, module)
        if short not in _factories:
            raise UnknownRewardError(f'module {module!r} registers no reward {short!r}; '
                                     f'registered rewards: {", ".join(names())}')
        return _factories[short]
    if name not in _factories:
        raise UnknownRewardError(f'unknown reward {name!r}; registered rewards: '
                                 f'{", ".join(names())}')
    return _factories[name]


def check_prompts(name: str, items: list[dict], source: str) -> None:
    """Raises ``ValueError`` naming the first prompt of ``items`` (from ``source``, each with
    its ``index``) whose metadata the reward ``name`` cannot score; a reward registered without
    a ``metadata_problem`` accepts any."""
    lookup(name)
    check = _metadata_checks.get(name.rpartition(':')[2])
    for item in items if check else []:
        problem = check(item)
        if problem:
            raise ValueError(f'prompt {item.get("index", "?")} of {source} '
                             f'({item.get("prompt", "")!r}) cannot be scored by reward '
                             f'{name!r}: {problem}')


def is_registered(name: str) -> bool:
    """Whether ``lookup(name)`` finds a reward (``'module:name'`` imports the module)."""
    try:
        lookup(name)
    except UnknownRewardError:
        return False
    return True


def names() -> list[str]:
    """The registered reward names, sorted (the built-in ones and any registered so far)."""
    _discover()
    return sorted(_factories)


def make_reward(name: str, options: Mapping[str, Any] | None = None) -> Reward:
    """Builds the reward registered as ``name`` (or ``'module:name'``, see ``lookup``) from
    ``options`` (a ConfigDict or dict)."""
    return lookup(name)({} if options is None else options)
