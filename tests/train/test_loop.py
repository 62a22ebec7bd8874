"""The whole RL loop at tiny scale on CPU: runs, resumes exactly, and survives a dead reward
server without losing the batch (its config checks: test_settings.py)."""

import json
import os
import textwrap

import jax
import numpy as np
import pytest

from configs import bagel_grpo
from unigrpo_jax.loading import factory
from unigrpo_jax.train import loop, run_dir


def _config(**kw):
    cfg = bagel_grpo.get_config('tiny')
    cfg.update(eval_every=0, checkpoint_every=1)
    cfg.parallelism.update(mesh=(1, 1, 1), num_devices=1)
    for k, v in kw.items():
        node, *path = k.split('.')
        target = cfg
        for p in [node, *path][:-1]:
            target = target[p]
        target[[node, *path][-1]] = v
    return cfg


def _metrics(workdir):
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        return [json.loads(line) for line in f]


def test_resume_gives_the_same_params_as_an_uninterrupted_run(tmp_path):
    full = loop.train(_config(total_steps=3), str(tmp_path / 'full'))
    loop.train(_config(total_steps=1), str(tmp_path / 'split'))
    resumed = loop.train(_config(total_steps=3), str(tmp_path / 'split'))
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(a, b)
    rows = _metrics(str(tmp_path / 'full'))
    assert [r['step'] for r in rows] == [1, 2, 3]
    assert rows[0]['parity/first_minibatch_text_max_abs_logp_diff'] < 1e-5
    assert rows[0]['parity/first_minibatch_image_max_abs_logp_diff'] < 1e-5
    assert os.path.isdir(tmp_path / 'full' / 'checkpoints' / '3')


def test_loop_on_eight_devices(tmp_path):
    cfg = _config(total_steps=1, eval_every=1)
    cfg.parallelism.update(mesh=(-1, 1, 1), num_devices=-1)
    state = loop.train(cfg, str(tmp_path))
    assert len(jax.tree.leaves(state.params)[0].sharding.device_set) == 8
    rows = _metrics(str(tmp_path))
    # The eval reward curve starts at step 0 (the starting point), then every eval_every steps.
    assert [(r['step'], 'eval/reward_mean' in r) for r in rows] == [(0, True), (1, False),
                                                                     (1, True)]
    assert sorted(os.listdir(tmp_path / 'samples')) == ['step_000000.png', 'step_000001.png']


def test_lora_loop_trains_only_the_adapters(tmp_path):
    cfg = _config(total_steps=1)
    cfg.lora.update(enabled=True, rank=4, alpha=8.0)
    state = loop.train(cfg, str(tmp_path))
    paths = {'/'.join(str(getattr(k, 'key', k)) for k in path)
             for path, _ in jax.tree_util.tree_leaves_with_path(state.params)}
    assert paths and all(p.endswith(('/a', '/b')) for p in paths)
    assert _metrics(str(tmp_path))[0]['parity/first_minibatch_text_max_abs_logp_diff'] < 1e-5
    # Read back for sampling: the base with the trained adapters merged in.
    run = run_dir.load(str(tmp_path))
    with pytest.raises(ValueError, match='kept no moving average'):  # ema_decay was 0
        run_dir.load(str(tmp_path), weights='ema')
    _, base, _ = factory.build_model(cfg.model, seed=cfg.seed)
    assert jax.tree.structure(run.params) == jax.tree.structure(base)
    assert any(not np.allclose(np.asarray(a, np.float32), np.asarray(b, np.float32))
               for a, b in zip(jax.tree.leaves(run.params), jax.tree.leaves(base)))


def test_dead_reward_server_stops_with_the_batch_kept(tmp_path):
    cfg = _config(total_steps=2)
    cfg.reward.name = 'remote'
    cfg.reward.options = {'url': 'http://127.0.0.1:9', 'retries': 1, 'backoff_s': 0.01,
                          'timeout_s': 0.5}
    with pytest.raises(loop.TrainingError, match='reward for step 1 failed'):
        loop.train(cfg, str(tmp_path))
    assert not os.path.exists(tmp_path / 'metrics.jsonl')  # no step was written
    assert os.path.isdir(tmp_path / 'checkpoints' / '0')  # the state to retry from


def test_sigterm_saves_a_checkpoint_and_exits_with_its_own_code(tmp_path):
    import signal
    import subprocess
    import sys
    import time
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir)
    cmd = [sys.executable, 'launch/train.py', '--config=configs/bagel_grpo.py:tiny',
           f'--workdir={tmp_path}', '--config.total_steps=1000', '--config.eval_every=0',
           '--config.checkpoint_every=1000', '--config.parallelism.num_devices=1',
           '--config.parallelism.mesh=(1,1,1)']
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / 'metrics.jsonl'
    deadline = time.time() + 400
    while not metrics.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err[-3000:]  # launch/train.py's EXIT_PREEMPTED
    assert 'preempted (SIGTERM) after step' in err
    steps = [r['step'] for r in _metrics(str(tmp_path))]
    assert os.path.isdir(tmp_path / 'checkpoints' / str(steps[-1]))
    assert steps[-1] < 1000


def test_a_step_with_a_skipped_update_is_still_saved(tmp_path, monkeypatch):
    real = loop.rl_step.rl_step

    def skipping(*args, **kwargs):  # the update was skipped: the state is the one before it
        state, scalars = real(*args, **kwargs)
        return state, {**scalars, 'skipped_updates': 1.0}
    monkeypatch.setattr(loop.rl_step, 'rl_step', skipping)
    loop.train(_config(total_steps=1, checkpoint_every=10), str(tmp_path))
    assert os.path.isdir(tmp_path / 'checkpoints' / '1')


def test_resume_writes_each_step_of_metrics_once(tmp_path):
    import shutil
    workdir = str(tmp_path)
    loop.train(_config(total_steps=2, eval_every=1), workdir)
    # Lose the last checkpoint (a crash after the metrics of step 2, before its save).
    shutil.rmtree(tmp_path / 'checkpoints' / '2')
    with open(tmp_path / 'metrics.jsonl', 'a') as f:
        f.write('{"step": 3, "reward/me')  # and a last row cut by the crash
    loop.train(_config(total_steps=2, eval_every=1), workdir)
    rows = [(r['step'], 'eval/reward_mean' in r) for r in _metrics(workdir)]
    assert rows == [(0, True), (1, False), (1, True), (2, False), (2, True)], rows
    # A resume asking for fewer steps than the run has says so and leaves the run as it was.
    saved = (tmp_path / 'rl_config.json').read_text()
    with pytest.raises(run_dir.WorkdirError, match=r'checkpoint at step 2, past total_steps=1'):
        loop.train(_config(total_steps=1, eval_every=1), workdir)
    assert (tmp_path / 'rl_config.json').read_text() == saved


def test_a_second_run_on_a_workdir_stops_and_a_crashed_one_leaves_no_lock(tmp_path):
    import subprocess
    import sys
    owner = run_dir.lock(str(tmp_path))  # a run in progress
    with pytest.raises(run_dir.WorkdirError, match=r'in use by another run \(pid \d+ on'):
        loop.train(_config(total_steps=1), str(tmp_path))
    owner.close()
    # A run killed while it holds the lock (SIGKILL: no clean-up) does not block the next one.
    code = ('import sys, os, signal; from unigrpo_jax.train import run_dir; '
            'run_dir.lock(sys.argv[1]); os.kill(os.getpid(), signal.SIGKILL)')
    assert subprocess.run([sys.executable, '-c', code, str(tmp_path)]).returncode == -9
    run_dir.lock(str(tmp_path)).close()


def test_a_workdir_that_cannot_be_written_stops_the_run_before_anything_starts(tmp_path):
    blocker = tmp_path / 'a_file'
    blocker.write_text('')
    with pytest.raises(run_dir.WorkdirError,
                       match=r'--workdir=.*a_file/run cannot be written \(Not a directory\)'):
        loop.train(_config(total_steps=1), str(blocker / 'run'))
    if os.geteuid() != 0:  # root writes anywhere: a read-only directory is tried by others
        (tmp_path / 'read_only').mkdir(mode=0o555)
        with pytest.raises(run_dir.WorkdirError, match=r'cannot be written \(Permission denied'):
            run_dir.make_writable(str(tmp_path / 'read_only'))


def test_a_resume_with_another_config_names_what_changed(tmp_path):
    loop.train(_config(total_steps=1), str(tmp_path))
    with pytest.raises(run_dir.WorkdirError,
                       match=r"Changed: objective.velocity_mse_weight: 1.5e-05 -> 0.002"):
        loop.train(_config(**{'total_steps': 2, 'objective.velocity_mse_weight': 2e-3}),
                   str(tmp_path))
    with open(tmp_path / 'rl_config.json') as f:  # the run's own config is kept
        saved = json.load(f)
    assert saved["objective"]["velocity_mse_weight"] == 1.5e-5
    # A run saved before a field was added resumes when the field keeps its former behaviour.
    del saved['optimizer']['ema_decay']
    current = json.loads(_config().to_json_best_effort())
    assert run_dir.config_changes(saved, current) == []
    current['optimizer']['ema_decay'] = 0.9
    assert run_dir.config_changes(saved, current) == ['optimizer.ema_decay: 0.0 -> 0.9']


def test_prompts_the_reward_cannot_score_stop_the_run_before_it_compiles(tmp_path):
    prompts = tmp_path / 'prompts.jsonl'
    prompts.write_text(''.join(json.dumps({'prompt': f'a photo of {n} circles'}) + '\n'
                               for n in ('two', 'three') * 8))  # no GenEval "include"
    with pytest.raises(loop.ConfigError, match=r"config.reward.name='shapes': prompt 0 of "
                       r".*prompts.jsonl \('a photo of two circles'\) cannot be scored by "
                       r"reward 'shapes': no \"include\" list"):
        loop.train(_config(**{'total_steps': 1, 'data.train': str(prompts)}),
                   str(tmp_path / 'run'))
    assert not os.path.exists(tmp_path / 'run' / 'checkpoints')


def test_a_prompt_too_long_stops_the_run_before_its_first_step(tmp_path):
    prompts = tmp_path / 'prompts.jsonl'
    long_prompt = 'a photo of ' + 'two circles and ' * 400 + 'a square'
    include = [{'class': 'circle', 'count': 1}]
    items = [{'prompt': 'a photo of a circle', 'include': include}] * 8 + [
        {'prompt': long_prompt, 'include': include}]
    prompts.write_text('\n'.join(json.dumps(x) for x in items[:2]) + '\n\n'
                       + ''.join(json.dumps(x) + '\n' for x in items[2:]))
    with pytest.raises(loop.ConfigError) as e:
        loop.train(_config(**{'total_steps': 1, 'data.train': str(prompts)}),
                   str(tmp_path / 'run'))
    message = str(e.value)
    assert message.startswith(f'{prompts}:10: prompt ') and 'config.data.max_prompt_tokens' in message
    assert f'({len(long_prompt)} characters)' in message and len(message) < 400, message
    assert not os.path.exists(tmp_path / 'run' / 'checkpoints')


def test_the_first_update_is_exactly_on_policy_in_bfloat16(tmp_path):
    loop.train(_config(**{'total_steps': 1, 'model.dtype': 'bfloat16'}), str(tmp_path))
    [row] = _metrics(str(tmp_path))
    # The ratio's old values are the update's own forward: not one window ratio is clipped.
    assert row['parity/first_minibatch_image_max_abs_logp_diff'] <= 1e-7
    assert row['parity/first_minibatch_text_max_abs_logp_diff'] <= 1e-7
    assert row['image/first_minibatch_clip_fraction'] == 0.0
    # The rollout samples with the trainer's numerics (bagel.compute_params): its log-probs
    # are the update's up to decode-vs-prefill rounding (casting every param to bf16 gave
    # 8.9e-4 for the text and 3.6e-6 for the image here; now 0 and 1.9e-6).
    assert row['parity/rollout_text_max_abs_logp_diff'] < 1e-4
    assert row['parity/rollout_image_max_abs_logp_diff'] < 3e-6
    # On the scale of the flow clip (1e-6): the RatioNorm log-ratio, 1.7e-6 here in bf16 (1.1e-7
    # in float32): the rollout's values could not serve as old values inside that clip.
    assert 0.0 < row['parity/rollout_image_max_abs_log_ratio'] < 5e-6


def test_every_minibatch_starts_from_the_update_s_own_old_values_in_bfloat16(tmp_path):
    """Two minibatches, learning rates 0 (the params never move): every ratio of every update
    is exactly 1, the second minibatch's too (its old values come from the update's forward
    before any update, not from the rollout's, which differ by bf16 rounding)."""
    loop.train(_config(**{'total_steps': 1, 'model.dtype': 'bfloat16', 'num_minibatches': 2,
                          'ppo_epochs': 2, 'optimizer.lr_und': 0.0, 'optimizer.lr_gen': 0.0}),
               str(tmp_path))
    [row] = _metrics(str(tmp_path))
    # The rollout's own values differ (measured on all chains before any update) ...
    assert 0 < row['parity/rollout_image_max_abs_logp_diff'] < 3e-6
    assert row['grad_norm/rollout_batch'] > 0
    assert row['parity/image_max_abs_logp_diff'] == 0.0  # every update's ratio: exactly 1
    assert row['parity/text_max_abs_logp_diff'] == 0.0
    assert row['image/clip_fraction'] == 0.0 and row['text/clip_fraction'] == 0.0


@pytest.mark.parametrize('slot, term, metric', [
    ('image', 'flow_grpo', 'parity/rollout_image_max_abs_log_ratio'),
    ('text', 'text_grpo', 'parity/rollout_text_max_abs_logp_diff')])
def test_a_parity_breach_stops_the_run_before_it_saves(tmp_path, slot, term, metric):
    # Each term against its own bound, on its own ratio's scale; the other term's bound is
    # left where it is (float32 rounding stays far below both defaults).
    with pytest.raises(loop.TrainingError, match=rf'in the {term} term: {metric}=.* > '
                                                 rf'parity_bounds.{slot}=1e-12'):
        loop.train(_config(**{'total_steps': 1, f'parity_bounds.{slot}': 1e-12}),
                   str(tmp_path))
    assert not os.path.exists(tmp_path / 'checkpoints' / '1')


def test_a_reward_that_never_returns_times_out_or_yields_to_sigterm():
    import threading
    import time
    from unigrpo_jax.train import rl_step
    release = threading.Event()

    def hang(images, metadata):
        release.wait()
        return [1.0] * len(images)

    start = time.monotonic()
    with pytest.raises(TimeoutError, match='did not return within reward_timeout_s=0.5 s'):
        rl_step.reward_with_deadline(hang, 0.5, lambda: False)(np.zeros((2,)), [{}, {}])
    assert time.monotonic() - start < 5
    with pytest.raises(InterruptedError, match='while waiting'):
        rl_step.reward_with_deadline(hang, 60, lambda: time.monotonic() - start > 1)(
            np.zeros((2,)), [{}, {}])
    release.set()
    assert rl_step.reward_with_deadline(hang, 60, lambda: False)(np.zeros((3,)), []) == [1.0] * 3

    def broken(images, metadata):
        raise KeyError('color')

    with pytest.raises(KeyError, match='color'):  # the reward's own error, unchanged
        rl_step.reward_with_deadline(broken, 60, lambda: False)(np.zeros((1,)), [{}])


def test_sigterm_while_the_reward_hangs_saves_and_exits_75(tmp_path):
    import signal
    import subprocess
    import sys
    import time
    (tmp_path / 'hanging_reward.py').write_text(textwrap.dedent(f'''
        import pathlib, time
        from unigrpo_jax.rewards import registry

        @registry.register('hang')
        def hang(options):
            def reward(images, metadata):
                pathlib.Path({str(tmp_path / 'called')!r}).touch()
                time.sleep(10 ** 6)
            return reward
    '''))
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
               PYTHONPATH=f'{tmp_path}:{root}')
    workdir = tmp_path / 'run'
    cmd = [sys.executable, 'launch/train.py', '--config=configs/bagel_grpo.py:tiny',
           f'--workdir={workdir}', '--config.total_steps=3', '--config.eval_every=0',
           '--config.reward.name=hanging_reward:hang', '--config.parallelism.num_devices=1',
           '--config.parallelism.mesh=(1,1,1)']
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 400
    while not (tmp_path / 'called').exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-3000:]
    assert 'preempted (SIGTERM) after step 0' in err, err[-3000:]
    assert os.path.isdir(workdir / 'checkpoints' / '0')  # the state to retry the batch from


def test_a_failed_background_save_stops_the_run_in_one_line(tmp_path, monkeypatch):
    from unigrpo_jax.train import checkpointing
    real = checkpointing.manager

    def failing_after_the_first_save(*args, **kwargs):
        mgr = real(*args, **kwargs)
        check = mgr.check_for_errors

        def check_for_errors():
            check()
            if mgr.latest_step() is not None and mgr.latest_step() >= 1:
                raise OSError(28, 'No space left on device')
        mgr.check_for_errors = check_for_errors
        return mgr

    monkeypatch.setattr(checkpointing, 'manager', failing_after_the_first_save)
    with pytest.raises(checkpointing.CheckpointError) as e:
        loop.train(_config(total_steps=4), str(tmp_path))
    message = str(e.value)
    assert '\n' not in message and 'No space left on device' in message, message
    assert 'resumes from step 1' in message and str(tmp_path / 'checkpoints') in message
    assert [r['step'] for r in _metrics(str(tmp_path))] == [1]  # it stopped at once
    # A save cut short leaves a temporary directory; the next start ignores and removes it.
    monkeypatch.setattr(checkpointing, 'manager', real)
    os.makedirs(tmp_path / 'checkpoints' / '2.orbax-checkpoint-tmp-1234')
    loop.train(_config(total_steps=2), str(tmp_path))
    assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['1', '2']


def test_a_damaged_checkpoint_is_named_with_the_way_back(tmp_path):
    import shutil
    from unigrpo_jax.train import checkpointing
    loop.train(_config(total_steps=2), str(tmp_path))
    state_dir = tmp_path / 'checkpoints' / '2' / 'state'
    for entry in os.listdir(state_dir):  # a partly deleted checkpoint: its arrays are gone
        if entry.startswith(('d', 'ocdbt', 'manifest')):
            path = state_dir / entry
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(checkpointing.CheckpointError) as e:
        loop.train(_config(total_steps=3), str(tmp_path))
    message = str(e.value)
    assert '\n' not in message and len(message) < 600, message
    assert f'checkpoint of step 2 ({tmp_path / "checkpoints" / "2"}) cannot be read' in message
    assert f'remove {tmp_path / "checkpoints" / "2"} to resume from step 1' in message
    shutil.rmtree(tmp_path / 'checkpoints' / '2')  # as the message says
    loop.train(_config(total_steps=3), str(tmp_path))
    assert [r['step'] for r in _metrics(str(tmp_path))] == [1, 2, 3]
