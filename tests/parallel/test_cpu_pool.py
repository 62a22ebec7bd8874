"""XLA:CPU's thread pool, sized so that sharded programs on emulated devices cannot deadlock."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_COUNT_POOL = """
from unigrpo_jax.parallel import mesh
mesh.reserve_cpu_collective_threads({threads})
import jax, os
jax.numpy.ones(2).block_until_ready()
names = [open(f'/proc/self/task/{{t}}/comm').read() for t in os.listdir('/proc/self/task')]
print(sum('XLAEigen' in n for n in names))
"""


def _pool_threads(threads, **env):
    env = {**{k: v for k, v in os.environ.items() if k != 'PJRT_NPROC'},
           'XLA_FLAGS': '--xla_force_host_platform_device_count=8', **env}
    out = subprocess.run([sys.executable, '-c', _COUNT_POOL.format(threads=threads)], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not os.path.isdir('/proc/self/task'), reason='counts threads in /proc')
def test_reserved_threads_size_the_pool_and_an_explicit_setting_wins():
    assert _pool_threads(48) == 48
    assert _pool_threads(48, PJRT_NPROC='12') == 12
