"""Test setup: 8 emulated CPU devices (for data-parallel tests) and exact float32 matmuls."""

import os
import socket
import subprocess
import sys
import time

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture
def processes(tmp_path):
    """``processes(script, per_process, timeout=180) -> [(exit code, output)]``: runs
    ``python -c script PORT I *per_process[I]`` for each I at once from the repository root,
    all given one fresh free localhost port (a multi-process run's coordinator), on CPU. Output
    goes to files (a full pipe never blocks a process); every process is killed after
    ``timeout`` seconds in all or when the test fails, so nothing hangs or outlives it."""
    def run(script: str, per_process: list[list], timeout: int = 180):
        port = _free_port()
        env = dict(os.environ, JAX_PLATFORMS='cpu')
        env.pop('XLA_FLAGS', None)
        logs = [tmp_path / f'process_{i}_{port}.log' for i in range(len(per_process))]
        procs = []
        try:
            for i, (args, log) in enumerate(zip(per_process, logs)):
                with open(log, 'w') as f:
                    procs.append(subprocess.Popen(
                        [sys.executable, '-c', script, str(port), str(i), *map(str, args)],
                        cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT))
            deadline = time.monotonic() + timeout
            codes = []
            for p in procs:
                try:
                    codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
                except subprocess.TimeoutExpired:
                    codes.append(f'killed after {timeout} s')
                    for q in procs:
                        q.kill()
        finally:
            for p in procs:
                p.kill()
                p.wait()
        return [(code, log.read_text()) for code, log in zip(codes, logs)]
    return run


@pytest.fixture(scope='session')
def tiny_rollout():
    """``tiny_rollout(cfg, config, params, ae, prompts=2)`` (``_tiny_rollout``)."""
    return _tiny_rollout


def _tiny_rollout(cfg, config, params, ae, prompts: int = 2):
    """A rollout of ``prompts`` random prompts (6 tokens, [bos] ... [eos]) x the config's group
    on one device, with a 5-token system segment: ``(rollout, system_ids)``."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from unigrpo_jax.parallel.mesh import make_mesh
    from unigrpo_jax.rollout import rollout as rollout_lib
    from unigrpo_jax.train import settings

    t = config.tokens
    system = jnp.array([t.bos, 5, 6, 7, t.eos], jnp.int32)
    ids = np.random.default_rng(0).integers(0, 100, (prompts, 6)).astype(np.int32)
    ids[:, 0], ids[:, -1] = t.bos, t.eos
    out = rollout_lib.make_rollout_fn(config, settings.rollout_config(cfg),
                                      make_mesh((1, 1, 1), jax.devices()[:1]))(
        params, ae, system, jnp.asarray(ids), jnp.full((prompts,), 6, jnp.int32),
        jax.random.key(0))
    return out, system
