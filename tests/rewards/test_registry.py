"""Rewards built by name: registration, discovery, look-up, options as dict or ConfigDict,
errors."""

import subprocess
import sys
import textwrap

import ml_collections
import numpy as np
import pytest

from unigrpo_jax import discovery
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
    assert {'remote', 'geneval_remote', 'shapes'} <= set(registry.names())
    assert registry.names() == sorted(registry.names())


def test_a_fresh_process_finds_the_built_in_rewards_by_registration_alone():
    """No module is imported or listed by the caller: the first look-up discovers them."""
    code = textwrap.dedent('''
        import sys
        from unigrpo_jax.rewards import registry
        assert 'unigrpo_jax.shapes.reward' not in sys.modules
        print(' '.join(registry.names()))
        registry.make_reward('shapes', {'strict': True})
    ''')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert {'remote', 'geneval_remote', 'shapes'} <= set(out.stdout.split())


def write_module(root, dotted: str, source: str) -> None:
    """Writes module ``dotted`` (packages get an ``__init__.py``) under ``root``."""
    *packages, name = dotted.split('.')
    directory = root
    for package in packages:
        directory = directory / package
        directory.mkdir(exist_ok=True)
        (directory / '__init__.py').touch()
    (directory / f'{name}.py').write_text(textwrap.dedent(source))


@pytest.fixture
def user_modules(tmp_path, monkeypatch):
    """A directory on sys.path for modules of one's own; they are unloaded after the test."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


USER_REWARD = '''
    import numpy as np
    from unigrpo_jax.rewards import registry

    @registry.register('user_constant')
    def user_constant(options):
        return lambda images, metadata: np.full([len(images)], options['value'], np.float32)
'''


def test_a_reward_of_a_user_module_is_found_as_module_colon_name(user_modules):
    write_module(user_modules, 'my_rewards_pkg.scoring', USER_REWARD)
    assert 'user_constant' not in registry.names()
    reward = registry.make_reward('my_rewards_pkg.scoring:user_constant', {'value': 0.5})
    np.testing.assert_array_equal(reward(np.zeros([2, 4, 4, 3], np.uint8), [{}] * 2),
                                  np.full([2], 0.5, np.float32))
    assert registry.is_registered('my_rewards_pkg.scoring:user_constant')
    assert 'user_constant' in registry.names()  # registered now, also by its plain name


def test_module_colon_name_errors_name_the_module_and_the_registered_rewards(user_modules):
    write_module(user_modules, 'my_rewards_mod', USER_REWARD)
    with pytest.raises(ValueError, match=r"'my_rewards_mod' registers no reward 'other'.*shapes"):
        registry.make_reward('my_rewards_mod:other', {})
    with pytest.raises(ValueError, match=r"cannot import module 'no_such_module_xyz'.*shapes"):
        registry.make_reward('no_such_module_xyz:user_constant', {})
    assert not registry.is_registered('no_such_module_xyz:user_constant')
    assert not registry.is_registered('no_such_reward')
    with pytest.raises(ValueError, match='expected "name" or "module:name"'):
        registry.make_reward(':user_constant', {})


def test_a_user_module_that_fails_to_import_raises_its_own_error(user_modules):
    write_module(user_modules, 'my_broken_rewards', 'import no_such_dependency_xyz\n')
    with pytest.raises(ModuleNotFoundError, match='no_such_dependency_xyz'):
        registry.make_reward('my_broken_rewards:anything', {})


def test_discovery_imports_rewards_modules_and_package_reward_modules(user_modules, monkeypatch):
    """The conventional places of a package: ``<pkg>.rewards.<name>`` and ``<pkg>.<sub>.reward``;
    other modules are not imported."""
    register_as = '''
        from unigrpo_jax.rewards import registry
        registry.register({name!r})(lambda options: None)
    '''
    for module, name in [('fake_root.rewards.general', 'fake_general'),
                         ('fake_root.drawing.reward', 'fake_drawing'),
                         ('fake_root.drawing.other', 'fake_not_found')]:
        write_module(user_modules, module, register_as.format(name=name))
    monkeypatch.setattr(discovery, 'PACKAGE', 'fake_root')
    monkeypatch.setattr(registry, '_discovered', False)
    assert registry.reward_modules() == ['fake_root.drawing.reward', 'fake_root.rewards.general']
    assert 'fake_root.drawing' not in sys.modules  # found on disk, not by importing
    found = set(registry.names())
    assert {'fake_general', 'fake_drawing'} <= found
    assert 'fake_not_found' not in found
    assert 'fake_root.drawing.other' not in sys.modules


def test_a_name_with_a_colon_cannot_be_registered():
    with pytest.raises(ValueError, match='without ":"'):
        registry.register('a:b')


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
