"""Joining a multi-process run: argument resolution, and two real processes on localhost
(gloo CPU collectives) that agree or disagree on their config."""

import os
import socket
import subprocess
import sys
import textwrap

import pytest

from unigrpo_jax.model.config import ConfigError
from unigrpo_jax.parallel import distributed


@pytest.mark.parametrize('environ, expected', [
    ({}, None),
    ({'SLURM_NTASKS': '1'}, None),  # an interactive salloc: one process
    ({'SLURM_NTASKS': '4'}, {}),
    ({'OMPI_COMM_WORLD_SIZE': '2'}, {}),
    ({'TPU_WORKER_HOSTNAMES': 'localhost'}, None),  # single-host TPU VM
    ({'TPU_WORKER_HOSTNAMES': 'w0,w1,w2,w3'}, {}),
    ({'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234'}, {}),
])
def test_auto_joins_only_multi_process_launchers(environ, expected):
    assert distributed.initialize_arguments('auto', environ=environ) == expected


def test_explicit_arguments_pass_through_and_off_never_joins():
    args = distributed.initialize_arguments('auto', '127.0.0.1:5', 2, 1, environ={})
    assert args == {'coordinator_address': '127.0.0.1:5', 'num_processes': 2, 'process_id': 1}
    assert distributed.initialize_arguments('off', environ={'SLURM_NTASKS': '8'}) is None
    assert distributed.initialize_arguments('on', environ={}) == {}


@pytest.mark.parametrize('mode, address, n, pid, message', [
    ('sometimes', None, None, None, 'expected one of'),
    ('auto', '127.0.0.1:5', 2, None, "missing \\['process_id'\\]"),
    ('auto', '127.0.0.1:5', 2, 2, 'must be in'),
    ('off', '127.0.0.1:5', 2, 0, 'distributed=off'),
])
def test_bad_arguments_are_named(mode, address, n, pid, message):
    with pytest.raises(ConfigError, match=message):
        distributed.initialize_arguments(mode, address, n, pid, environ={})


_WORKER = textwrap.dedent('''
    import sys
    timeout_s = 60 if len(sys.argv) < 5 else int(sys.argv[4])
    from ml_collections import ConfigDict
    from unigrpo_jax.model.config import ConfigError
    from unigrpo_jax.parallel import distributed
    port, pid, lr = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    assert distributed.initialize('auto', f'127.0.0.1:{port}', 2, pid, timeout_s=timeout_s)
    import jax
    assert jax.process_count() == 2 and jax.process_index() == pid
    try:
        distributed.assert_same_config(ConfigDict({'lr': lr, 'steps': 2}))
    except ConfigError as e:
        print('CONFIG ERROR:', e)
        sys.exit(3)
    print('AGREED')
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _run_pair(lrs, *extra):
    port = _free_port()
    env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
    procs = [subprocess.Popen([sys.executable, '-c', _WORKER, str(port), str(i), str(lr), *extra],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env) for i, lr in enumerate(lrs)]
    try:
        return [(p.wait(timeout=120), p.stdout.read()) for p in procs]
    finally:
        for p in procs:
            p.kill()


def test_two_processes_join_and_agree():
    for rc, out in _run_pair([1e-3, 1e-3]):
        assert rc == 0 and 'AGREED' in out, out


def test_two_processes_with_different_configs_both_fail_with_a_message():
    for rc, out in _run_pair([1e-3, 2e-3]):
        assert rc == 3 and 'processes [1] run a different config' in out, out


def test_a_missing_process_fails_the_run_instead_of_hanging():
    [(rc, out)] = _run_pair([1e-3], '5')  # process 0 of 2 alone; 5 s to join
    assert rc != 0 and 'DEADLINE_EXCEEDED' in out and 'AGREED' not in out, out
