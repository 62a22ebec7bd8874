"""launch/demo.py end to end at test scale: run directories, report, plot and grids."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_demo_writes_runs_and_report(tmp_path):
    out = tmp_path / 'demo'
    env = dict(os.environ, JAX_PLATFORMS='cpu')
    env.pop('XLA_FLAGS', None)
    result = subprocess.run(
        [sys.executable, 'launch/demo.py', '--config=configs/shapes_unigrpo.py:test',
         '--config.parallelism.num_devices=1', f'--out={out}', '--eval_per_tag=1'],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert 'overall' in result.stdout and 'report:' in result.stdout
    report = (out / 'report.md').read_text()
    assert '| SFT (think), think=on cfg=1 |' in report
    assert '| UniGRPO step 2, think=on cfg=2 |' in report
    for path in ('reward_curve.png', 'eval_unigrpo/grid_think_on_cfg_2.png',
                 'sft_think/MANIFEST.json', 'unigrpo/rl_config.json'):
        assert (out / path).exists(), path
    # Both run directories are what launch/sample.py accepts.
    prompts = tmp_path / 'prompts.jsonl'
    with open(os.path.join(REPO, 'data', 'shapes_eval', 'eval_prompts.jsonl')) as f:
        prompts.write_text(''.join(f.readlines()[:3]))
    for run in ('sft_think', 'unigrpo'):
        sample = subprocess.run(
            [sys.executable, 'launch/sample.py', f'--workdir={out / run}',
             f'--prompts={prompts}', f'--out={tmp_path / run}'], cwd=REPO, env=env, capture_output=True, text=True,
            timeout=300)
        assert sample.returncode == 0, sample.stderr[-3000:]
        assert (tmp_path / run / '2_0.png').exists()
