"""Test setup: 8 emulated CPU devices (for data-parallel tests) and exact float32 matmuls."""

import os
import subprocess
import sys

# 8 emulated devices share the CI machine's 2 cores (and another pytest worker): a collective's
# participants can arrive far apart, past XLA:CPU's default rendezvous timeout, which aborts
# the process. Give them 15 minutes.
os.environ.setdefault('XLA_FLAGS', ' '.join([
    '--xla_force_host_platform_device_count=8',
    '--xla_cpu_collective_timeout_seconds=900',
    '--xla_cpu_collective_call_terminate_timeout_seconds=900',
    '--xla_cpu_collective_call_warn_stuck_timeout_seconds=120']))
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402
import pytest  # noqa: E402

from unigrpo_jax.parallel.mesh import reserve_cpu_collective_threads  # noqa: E402

reserve_cpu_collective_threads()

jax.config.update('jax_default_matmul_precision', 'highest')
# Tests compile the same tiny programs many times (e.g. a run and its resumption): reuse them.
jax.config.update('jax_compilation_cache_dir',
                  os.environ.get('JAX_TEST_CACHE_DIR', '/tmp/unigrpo_jax_test_compile_cache'))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)

FIXTURE_DIR = os.path.join(os.path.dirname(__file__), 'fixtures', 'bagel_tiny')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='session')
def fixture_dir() -> str:
    return FIXTURE_DIR


@pytest.fixture
def launch():
    """``launch(args, timeout=300) -> stdout``: runs ``python args`` (a launch script) from the
    repository root on one CPU device and fails the test, with the output tail, on a non-zero
    exit."""
    def run(args: list[str], timeout: int = 300) -> str:
        env = dict(os.environ, JAX_PLATFORMS='cpu')
        env.pop('XLA_FLAGS', None)
        out = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=timeout)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        return out.stdout
    return run
