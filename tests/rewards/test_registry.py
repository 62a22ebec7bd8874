"""Rewards built by name: registration, look-up, options as dict or ConfigDict, errors."""

import ml_collections
import numpy as np
import pytest

from unigrpo_jax.rewards import registry


@pytest.fixture(autouse=True)
def scratch_registry(monkeypatch):
    """Rewards registered by a test are forgotten after it (built-ins stay)."""
    registry.names()  # imports the built-in reward modules
    monkeypatch.setattr(registry, '_factories', dict(registry._factories))


def constant_reward(options):
    value = options['value']

    def reward(images, metadata):
        del metadata
        return np.full([len(images)], value, np.float32)

    return reward


def test_built_in_rewards_are_registered():
    assert {'remote', 'geneval_remote'} <= set(registry.names())
    assert registry.names() == sorted(registry.names())


@pytest.mark.parametrize('options', [{'value': 0.25}, ml_collections.ConfigDict({'value': 0.25})])
def test_make_reward_builds_the_registered_factory_with_its_options(options):
    registry.register('constant')(constant_reward)
    reward = registry.make_reward('constant', options)
    scores = reward(np.zeros([3, 4, 4, 3], np.uint8), [{}] * 3)
    np.testing.assert_array_equal(scores, np.full([3], 0.25, np.float32))
    assert 'constant' in registry.names()


def test_register_returns_the_factory_unchanged():
    assert registry.register('constant')(constant_reward) is constant_reward


def test_unknown_name_raises_naming_it_and_the_registered_ones():
    with pytest.raises(ValueError, match=r"unknown reward 'no_such_reward'.*remote"):
        registry.make_reward('no_such_reward', {})


def test_a_taken_name_cannot_be_registered_by_another_factory():
    registry.register('constant')(constant_reward)
    registry.register('constant')(constant_reward)  # the same factory again (a reload) is fine

    def other(options):
        return constant_reward(options)

    with pytest.raises(ValueError, match=r"'constant' is already registered by .*constant_reward"):
        registry.register('constant')(other)
