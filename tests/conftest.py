"""Test setup: 8 emulated CPU devices (for data-parallel tests) and exact float32 matmuls."""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update('jax_default_matmul_precision', 'highest')

FIXTURE_DIR = os.path.join(os.path.dirname(__file__), 'fixtures', 'bagel_tiny')


@pytest.fixture(scope='session')
def fixture_dir() -> str:
    return FIXTURE_DIR
