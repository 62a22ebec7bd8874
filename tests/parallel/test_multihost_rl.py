"""The RL run on 2 real processes x 4 CPU devices (localhost coordinator, gloo collectives)
equals the same run on 1 process x 8 devices: the prompts, rewards, evaluation, metrics and
checkpoints of a multi-host run, and a resume of it."""

import json
import os
import textwrap

import jax
import numpy as np

from configs import bagel_grpo, shapes_unigrpo
from unigrpo_jax.parallel import distributed
from unigrpo_jax.train import checkpointing, loop

# Argv: PORT PROCESS_ID CONFIG WORKDIR TOTAL_STEPS... : one run per total, each resuming the
# last (in the same processes). The XLA and matmul settings of conftest.
_RL_WORKER = textwrap.dedent('''
    import os, sys
    os.environ['XLA_FLAGS'] = ' '.join([
        '--xla_force_host_platform_device_count=4',
        '--xla_cpu_collective_timeout_seconds=900',
        '--xla_cpu_collective_call_terminate_timeout_seconds=900'])
    port, pid, name, workdir, *totals = sys.argv[1:]
    from unigrpo_jax.parallel import distributed, mesh
    mesh.reserve_cpu_collective_threads()
    distributed.initialize('auto', f'127.0.0.1:{port}', 2, int(pid), timeout_s=120)
    import jax
    from absl import logging
    logging.use_absl_handler()
    logging.set_verbosity(logging.INFO)
    jax.config.update('jax_default_matmul_precision', 'highest')
    jax.config.update('jax_compilation_cache_dir', os.environ.get(
        'JAX_TEST_CACHE_DIR', '/tmp/unigrpo_jax_test_compile_cache'))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
    from tests.parallel import test_multihost_rl
    from unigrpo_jax.train import loop
    for steps in totals:
        loop.train(test_multihost_rl.CONFIGS[name](int(steps)), workdir)
    print('TRAINED ON', jax.process_count(), 'PROCESSES')
''')


def _grpo_config(steps):
    cfg = bagel_grpo.get_config('tiny')
    cfg.update(total_steps=steps, eval_every=0, checkpoint_every=1)
    return cfg


def _shapes_config(steps):
    cfg = shapes_unigrpo.get_config('test')
    cfg.update(total_steps=steps, eval_every=1, checkpoint_every=1, batch_size=8)
    return cfg


CONFIGS = {'grpo': _grpo_config, 'shapes': _shapes_config}


def _run_two(processes, name, workdir, *totals):
    results = processes(_RL_WORKER, [[name, workdir, *totals]] * 2, timeout=900)
    for rc, out in results:
        assert rc == 0 and 'TRAINED ON 2 PROCESSES' in out, out[-5000:]
    return results


def _params(workdir):
    params, meta = checkpointing.restore_params(workdir)
    return params, meta['step']


def _assert_close(got, want, atol):
    worst = max(float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))
                for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
    assert worst <= atol, worst


def _metrics(workdir):
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        return [json.loads(line) for line in f]


def test_two_processes_equal_one_and_resume(processes, tmp_path):
    two = str(tmp_path / 'two')
    [(_, log), _] = _run_two(processes, 'grpo', two, 1, 2)  # 1 step, then resumed to 2
    assert 'resumed from step 1' in log
    one = str(tmp_path / 'one')
    loop.train(_grpo_config(2), one)  # this process: 8 devices
    (got, step), (want, _) = _params(two), _params(one)
    assert step == 2
    # Reduction order differs (a cross-process all-reduce); a lost or doubled reduction would
    # move params by about the learning rate (1e-3).
    _assert_close(got, want, atol=2e-5)
    # Metrics written once (by process 0), each step once, and the same rewards.
    rows_two, rows_one = _metrics(two), _metrics(one)
    assert [r['step'] for r in rows_two] == [1, 2]
    np.testing.assert_allclose([r['reward/mean'] for r in rows_two],
                               [r['reward/mean'] for r in rows_one], atol=1e-6)


def test_a_shapes_eval_step_on_two_processes_equals_one(processes, tmp_path):
    two, one = str(tmp_path / 'two'), str(tmp_path / 'one')
    _run_two(processes, 'shapes', two, 1)
    loop.train(_shapes_config(1), one)
    _assert_close(_params(two)[0], _params(one)[0], atol=2e-5)
    rows_two, rows_one = _metrics(two), _metrics(one)
    # The evaluation (scored on both processes, combined) at steps 0 and 1, and step 1 itself.
    assert [(r['step'], 'eval/reward_mean' in r) for r in rows_two] == [
        (0, True), (1, False), (1, True)]
    for a, b in zip(rows_two, rows_one):
        for key in ('eval/reward_mean', 'reward/mean'):
            if key in a:
                assert abs(a[key] - b[key]) <= 1e-6, (key, a, b)
    assert sorted(os.listdir(os.path.join(two, 'samples'))) == ['step_000000.png',
                                                                 'step_000001.png']


# Argv: PORT PROCESS_ID WORKDIR: process 1 alone gets SIGTERM after its first step (a
# preempted VM); every process must stop after that same step.
_PREEMPTED_WORKER = _RL_WORKER.split('from tests.parallel')[0].replace(
    'port, pid, name, workdir, *totals = sys.argv[1:]', 'port, pid = sys.argv[1:3]') + textwrap.dedent('''
    import signal
    from tests.parallel import test_multihost_rl
    from unigrpo_jax.train import loop
    real = loop.rl_step.rl_step

    def step_then_signal(*args, **kwargs):
        out = real(*args, **kwargs)
        if jax.process_index() == 1 and args[-1] == 0:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    loop.rl_step.rl_step = step_then_signal
    try:
        loop.train(test_multihost_rl.CONFIGS['grpo'](3), sys.argv[3])
    except loop.Preempted as e:
        print('PREEMPTED:', e)
        sys.exit(75)
''')


def test_sigterm_on_one_process_stops_every_process_at_the_same_step(processes, tmp_path):
    workdir = str(tmp_path / 'run')
    for rc, out in processes(_PREEMPTED_WORKER, [[workdir]] * 2, timeout=600):
        assert rc == 75 and 'preempted (SIGTERM) after step 1' in out, out[-5000:]
    assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['1']
    assert [r['step'] for r in _metrics(workdir)] == [1]
    _run_two(processes, 'grpo', workdir, 3)  # and the run resumes from it
    assert [r['step'] for r in _metrics(workdir)] == [1, 2, 3]


# Argv: PORT PROCESS_ID WORKDIR: process 1 is killed (SIGKILL) as its first step starts;
# process 0 must say which process was lost and exit with the launcher's code, not wait in
# its next collective or abort in JAX's shutdown.
_KILLED_WORKER = _PREEMPTED_WORKER.split('import signal')[0] + textwrap.dedent('''
    import signal
    from tests.parallel import test_multihost_rl
    from unigrpo_jax.parallel import distributed
    from unigrpo_jax.train import loop
    real = loop.rl_step.rl_step

    def die_on_process_1(*args, **kwargs):
        if jax.process_index() == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    loop.rl_step.rl_step = die_on_process_1
    with distributed.exit_when_a_process_is_lost():
        loop.train(test_multihost_rl.CONFIGS['grpo'](3), sys.argv[3])
''')


def test_a_killed_process_stops_the_others_with_one_line_naming_it(processes, tmp_path):
    (rc0, out0), (rc1, _) = processes(_KILLED_WORKER, [[str(tmp_path / 'run')]] * 2,
                                      timeout=600)
    assert rc1 == -9
    assert rc0 == distributed.EXIT_PROCESS_LOST, out0[-5000:]
    assert 'unigrpo_jax: process 1 of 2 was lost' in out0, out0[-5000:]
    assert 'Terminating process' not in out0 and 'SIGABRT' not in out0, out0[-5000:]
