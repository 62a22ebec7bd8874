"""Joining a multi-process run: argument resolution, and two real processes on localhost
(gloo CPU collectives) that agree or disagree on their config."""

import textwrap

import pytest

from unigrpo_jax.errors import ConfigError
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


def test_one_process_tools_refuse_a_multi_process_launch():
    distributed.require_one_process('launch/sample.py', environ={'SLURM_NTASKS': '1'})
    with pytest.raises(ConfigError, match='launch/sample.py runs in one process'):
        distributed.require_one_process('launch/sample.py', environ={'SLURM_NTASKS': '4'})


def test_local_device_ids_join_a_multi_process_start_only():
    args = distributed.initialize_arguments('auto', environ={'SLURM_NTASKS': '2'},
                                            local_device_ids=['0', '1'])
    assert args == {'local_device_ids': [0, 1]}
    with pytest.raises(ConfigError, match='is for a multi-process run'):
        distributed.initialize_arguments('auto', environ={}, local_device_ids=['0'])


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
    from unigrpo_jax.errors import ConfigError
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




def test_two_processes_join_and_agree(processes):
    for rc, out in processes(_WORKER, [[1e-3], [1e-3]]):
        assert rc == 0 and 'AGREED' in out, out


def test_two_processes_with_different_configs_both_fail_with_a_message(processes):
    for rc, out in processes(_WORKER, [[1e-3], [2e-3]]):
        assert rc == 3 and 'processes [1] run a different config' in out, out


def test_a_missing_process_fails_the_run_instead_of_hanging(processes):
    [(rc, out)] = processes(_WORKER, [[1e-3, 5]])  # process 0 of 2 alone; 5 s to join
    assert rc != 0 and 'DEADLINE_EXCEEDED' in out and 'AGREED' not in out, out


# Argv: PORT PROCESS_ID SLEEP_S: both processes fail with the same error inside
# exit_when_a_process_is_lost after sleeping SLEEP_S[pid] (SLEEP_S negative: exit normally).
_LOST_WORKER = textwrap.dedent('''
    import sys, time
    from unigrpo_jax.parallel import distributed
    port, pid, sleep_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    distributed.initialize('auto', f'127.0.0.1:{port}', 2, pid, timeout_s=60)
    start = time.monotonic()
    try:
        with distributed.exit_when_a_process_is_lost():
            time.sleep(abs(sleep_s))
            if sleep_s >= 0:
                raise ValueError('the same bad input on every process')
    except ValueError as e:
        print(f'RAISED AFTER {time.monotonic() - start:.1f} s:', e)
        sys.exit(3)
    print('FINISHED')
''')


def test_an_error_every_process_meets_is_raised_at_once_not_taken_for_a_lost_process(
        processes):
    for rc, out in processes(_LOST_WORKER, [[0], [1]]):
        assert rc == 3 and 'RAISED AFTER' in out and 'was lost' not in out, out
        assert float(out.split('RAISED AFTER ')[1].split(' s')[0]) < 15, out  # not 40 s


def test_a_process_that_finished_is_not_taken_for_lost(processes):
    # process 1 exits at once; process 0 works on for longer than the watchdog's 30 s
    [(rc0, out0), (rc1, out1)] = processes(_LOST_WORKER, [[-40], [-0.01]], timeout=120)
    assert rc0 == 0 and rc1 == 0 and 'FINISHED' in out0 and 'was lost' not in out0, out0


_SCORE_WORKER = textwrap.dedent('''
    import os, sys
    os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'
    port, pid, fail_on = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    from unigrpo_jax.parallel import distributed, mesh as mesh_lib, sharding
    distributed.initialize('auto', f'127.0.0.1:{port}', 2, pid, timeout_s=60)
    import jax, numpy as np
    from unigrpo_jax.train import rl_step
    mesh = mesh_lib.make_mesh((4, 2, 1), jax.devices())
    images = np.arange(16 * 2 * 2 * 3, dtype=np.uint8).reshape(16, 2, 2, 3)
    placed = sharding.host_to_global(images, sharding.batch_sharding(mesh))
    rows, local = sharding.addressable_rows(placed)
    assert len(rows) == 8 and (local == images[rows]).all(), rows

    def reward(ims, meta):
        if jax.process_index() == fail_on:
            raise RuntimeError('reward server down')
        return [float(im.sum()) + m['k'] for im, m in zip(ims, meta)]

    assert distributed.any_process(pid == 1) and not distributed.any_process(False)
    items = [{'k': 1000.0 * i} for i in range(8)]
    try:
        got = rl_step.score(reward, placed, [it for it in items for _ in range(2)])
    except rl_step.RewardError as e:
        print('REWARD ERROR:', e)
        sys.exit(3)
    want = images.reshape(16, -1).sum(1) + 1000.0 * np.repeat(np.arange(8), 2)
    assert np.array_equal(got, want.astype(np.float32)), (got, want)
    print('SCORED')
''')


def test_each_process_scores_its_own_images_and_all_get_every_reward(processes):
    for rc, out in processes(_SCORE_WORKER, [[-1]] * 2):
        assert rc == 0 and 'SCORED' in out, out


def test_a_reward_failing_on_one_process_fails_every_process(processes):
    (rc0, out0), (rc1, out1) = processes(_SCORE_WORKER, [[1]] * 2)
    assert rc0 == 3 and 'failed on another process' in out0, out0
    assert rc1 == 3 and 'reward server down' in out1, out1


def test_a_bad_reward_is_named_precisely():
    import jax.numpy as jnp
    import pytest
    from unigrpo_jax.train import rl_step
    images = jnp.zeros((4, 2, 2, 3), jnp.uint8)
    items = [{}] * 4
    with pytest.raises(rl_step.RewardError, match=r'returned 3 scores \(shape \(3,\)\) for 4 '):
        rl_step.score(lambda ims, meta: [1.0] * 3, images, items)
    with pytest.raises(rl_step.RewardError,
                       match=r'non-finite scores for 1 of 4 images \(e.g. nan for image 2\)'):
        rl_step.score(lambda ims, meta: [1.0, 1.0, float('nan'), 1.0], images, items)

    def broken(ims, meta):
        raise KeyError('color')

    with pytest.raises(rl_step.RewardError, match="KeyError: 'color'") as e:
        rl_step.score(broken, images, items)
    assert isinstance(e.value.__cause__, KeyError)  # the scorer's own traceback is kept


_REPLICATED_WORKER = textwrap.dedent('''
    import os, sys
    os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'
    port, pid = sys.argv[1], int(sys.argv[2])
    from unigrpo_jax.parallel import distributed, sharding
    distributed.initialize('auto', f'127.0.0.1:{port}', 2, pid, timeout_s=60)
    import jax, numpy as np
    from jax.sharding import Mesh
    from unigrpo_jax.train import rl_step
    # data 4 x tensor 2, the tensor axis across the two processes: each holds every row.
    devices = np.stack([np.array(jax.devices()[:4]), np.array(jax.devices()[4:])], -1)
    mesh = Mesh(devices.reshape(4, 1, 2), ('data', 'fsdp', 'tensor'))
    images = np.arange(16 * 2 * 2 * 3, dtype=np.uint8).reshape(16, 2, 2, 3)
    placed = sharding.host_to_global(images, sharding.batch_sharding(mesh))
    scored = []

    def reward(ims, meta):
        scored.extend(m['i'] for m in meta)
        return [float(im.sum()) for im in ims]

    got = rl_step.score(reward, placed, [{'i': i} for i in range(16)])
    assert np.array_equal(got, images.reshape(16, -1).sum(1).astype(np.float32))
    print('SCORED', sorted(scored))
''')


def test_rows_replicated_across_processes_are_scored_once(processes):
    import ast
    scored = []
    for rc, out in processes(_REPLICATED_WORKER, [[]] * 2):
        assert rc == 0 and 'SCORED' in out, out
        scored.append(ast.literal_eval(out.split('SCORED ')[1].splitlines()[0]))
    assert sorted(scored[0] + scored[1]) == list(range(16))  # every image once, in all
    assert len(scored[0]) == len(scored[1]) == 8  # the two copies share the work
