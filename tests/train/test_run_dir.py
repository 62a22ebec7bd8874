"""Run directories read back (RL and SFT), and the launchers built on them: sample.py on prompts
the model never saw, evaluate.py on an RL run; the ShapesEval RL configs validate."""

import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from configs import shapes_flowgrpo, shapes_textgrpo, shapes_unigrpo
from unigrpo_jax.loading import orbax_io
from unigrpo_jax.train import loop, run_dir
from unigrpo_jax.train import optimizer as opt_lib
from unigrpo_jax.train.settings import settings

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SFT_THINK = os.path.join(REPO, 'checkpoints', 'shapes_sft_think')


def _test_config(module):
    config = module.get_config('test')
    config.parallelism.update(mesh=(1, 1, 1), num_devices=1)
    return config


@pytest.mark.parametrize('module,think,mode,window', [
    (shapes_unigrpo, True, 'unigrpo', 3), (shapes_flowgrpo, False, 'flowgrpo', 3),
    (shapes_textgrpo, True, 'textgrpo', 0)])
def test_shapes_rl_configs_validate(module, think, mode, window):
    config = module.get_config()
    s = settings(config, 1)
    assert (s.rollout.think, config.objective.mode, s.schedule.window_size) == (
        think, mode, window)
    arm = 'shapes_sft_think' if think else 'shapes_sft_nothink'
    assert config.model.checkpoint.endswith(arm)
    # The same batch and learning rates in every arm (the comparison of docs/results.md); the
    # steps as chosen per arm on the validation prompts (FlowGRPO 200, the others 100).
    base = shapes_unigrpo.get_config()
    assert (config.batch_size, config.rollout.group_size, config.optimizer.to_dict()) == (
        base.batch_size, base.rollout.group_size, base.optimizer.to_dict())
    assert config.total_steps == (2 if mode == 'flowgrpo' else 1) * base.total_steps == (
        200 if mode == 'flowgrpo' else 100)


def test_rl_run_directory_sample_and_evaluate(tmp_path, launch):
    workdir = str(tmp_path / 'rl')
    config = _test_config(shapes_unigrpo)
    config.optimizer.ema_decay = 0.5  # the run keeps a moving average: read by default
    state = loop.train(config, workdir)
    run = run_dir.load(workdir)
    assert (run.kind, run.step, run.think, run.image_size) == ('rl', 2, True, (32, 32))
    assert run.checkpoint.endswith('(moving average)')
    ema = opt_lib.evaluated_params(state.params, state.opt_state)
    for a, b in zip(jax.tree.leaves(ema), jax.tree.leaves(run.params)):
        np.testing.assert_array_equal(np.asarray(a), b)
    raw = run_dir.load(workdir, weights='params')
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(raw.params)):
        np.testing.assert_array_equal(np.asarray(a), b)
    assert any(not np.array_equal(a, b)
               for a, b in zip(jax.tree.leaves(raw.params), jax.tree.leaves(run.params)))
    first = run_dir.load(workdir, step=1, weights='params')
    assert first.step == 1 and any(
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(raw.params)))
    with pytest.raises(ValueError, match='only RL run directories'):
        run_dir.load(SFT_THINK, weights='ema')
    with pytest.raises(FileNotFoundError, match=r'no checkpoint of step 7; saved steps: \[1, 2\]'):
        run_dir.load(workdir, step=7)
    with pytest.raises(ValueError, match='only RL run directories'):
        run_dir.load(SFT_THINK, step=1)

    # Prompts never seen (held-out colour-shape pairs, a blank line counted in the indices).
    prompts = tmp_path / 'new.jsonl'
    lines = [{'tag': 'colors', 'include': [{'class': 'triangle', 'count': 1, 'color': 'yellow'}],
              'prompt': 'a photo of a yellow triangle'}, None,
             {'tag': 'counting', 'include': [{'class': 'circle', 'count': 4}],
              'prompt': 'a photo of four circles'}]
    prompts.write_text('\n'.join(json.dumps(x) if x else '' for x in lines) + '\n')
    out = tmp_path / 'samples'
    launch(['launch/sample.py', f'--workdir={workdir}', f'--prompts={prompts}',
             f'--out={out}', '--samples=2'])
    names = sorted(p for p in os.listdir(out) if p.endswith('.png'))
    assert names == ['0_0.png', '0_1.png', '2_0.png', '2_1.png']
    assert np.asarray(Image.open(out / '2_1.png')).shape == (32, 32, 3)
    records = [json.loads(x) for x in open(out / 'samples.jsonl')]
    assert [(r['prompt_index'], r['sample_index']) for r in records] == [
        (0, 0), (2, 0), (0, 1), (2, 1)]  # in the order drawn
    assert all(r['thinking'].startswith('<think>') for r in records)

    stdout = launch(['launch/evaluate.py', f'--workdir={workdir}', '--per_tag=1', '--cfg=1',
                      f'--out={tmp_path / "eval"}'])
    assert '| think=on cfg=1 |' in stdout and 'step 2' in stdout
    assert '(moving average)' in stdout
    stdout = launch(['launch/evaluate.py', f'--workdir={workdir}', '--per_tag=1', '--cfg=1',
                     '--step=1', '--weights=params', f'--out={tmp_path / "eval1"}'])
    assert '| think=on cfg=1 |' in stdout and '(step 1)' in stdout
    assert '(moving average)' not in stdout


def test_sft_directories_and_errors(tmp_path):
    run = run_dir.load(SFT_THINK)  # an exported SFT checkpoint
    assert (run.kind, run.think, run.step) == ('sft', True, None)
    assert run.model.ae.kind == 'identity' and orbax_io.is_converted(run.checkpoint)
    with pytest.raises(FileNotFoundError, match='not a run directory'):
        run_dir.load(str(tmp_path))
    os.makedirs(tmp_path / 'rl')
    run_dir.save_config(str(tmp_path / 'rl'), shapes_unigrpo.get_config())
    with pytest.raises(FileNotFoundError, match='no checkpoint'):
        run_dir.load(str(tmp_path / 'rl'))


def test_sample_checks_every_prompt_before_drawing(tmp_path):
    import subprocess
    import sys
    prompts = tmp_path / 'prompts.jsonl'
    good = {'tag': 'single_object', 'include': [{'class': 'circle', 'count': 1}],
            'prompt': 'a photo of a circle'}
    prompts.write_text('\n'.join(json.dumps(x) for x in [
        good, good, {**good, 'prompt': 'a photo of a zebra'}]) + '\n')
    out = tmp_path / 'samples'
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = subprocess.run(
        [sys.executable, 'launch/sample.py', f'--workdir={SFT_THINK}', f'--prompts={prompts}',
         f'--out={out}'], cwd=root, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, JAX_PLATFORMS='cpu'))
    assert result.returncode == 1
    assert f'{prompts}:3:' in result.stderr and 'zebra' in result.stderr, result.stderr[-2000:]
    assert 'Traceback' not in result.stderr
    assert not out.exists() or not any(p.suffix == '.png' for p in out.iterdir())
