"""launch/demo.py end to end at test scale: run directories, report, plot and grids."""

import json
import os

from configs import shapes_unigrpo
from unigrpo_jax.experiments import demo

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_demo_writes_runs_and_report(tmp_path, launch):
    out = tmp_path / 'demo'
    stdout = launch(['launch/demo.py', '--config=configs/shapes_unigrpo.py:test',
                     '--config.parallelism.num_devices=1', f'--out={out}', '--eval_per_tag=1'],
                    timeout=600)
    assert 'overall' in stdout and 'report:' in stdout
    report = (out / 'report.md').read_text()
    assert '| SFT (think), think=on cfg=1 |' in report
    assert '| UniGRPO step 2, think=on cfg=2 |' in report
    assert '## This run against the documented seeds' in report
    assert '- think=on cfg=2: this run ' in report  # beside the documented spread over seeds
    with open(os.path.join(REPO, 'docs', 'results', 'shapes_gains.json')) as f:
        documented = json.load(f)
    gain = documented['UniGRPO (think)']['cfg=2']['gain']
    steps = documented['steps']['UniGRPO (think)']
    assert (f'documented over seeds {documented["seeds"]} ({steps} steps): '
            f'{gain["mean"]:+.1f} ± {gain["std"]:.1f}') in report
    assert '## The drawer alone' in report and '| 1 object | 2 |' in report  # 2 single-object prompts
    for path in ('reward_curve.png', 'eval_unigrpo/grid_think_on_cfg_2.png',
                 'sft_think/MANIFEST.json', 'unigrpo/rl_config.json'):
        assert (out / path).exists(), path
    # Both run directories are what launch/sample.py accepts.
    prompts = tmp_path / 'prompts.jsonl'
    with open(os.path.join(REPO, 'data', 'shapes_eval', 'eval_prompts.jsonl')) as f:
        prompts.write_text(''.join(f.readlines()[:3]))
    for run in ('sft_think', 'unigrpo'):
        launch(['launch/sample.py', f'--workdir={out / run}', f'--prompts={prompts}',
                f'--out={tmp_path / run}'])
        assert (tmp_path / run / '2_0.png').exists()


def test_demo_from_scratch_trains_both_sft_stages(tmp_path):
    config = shapes_unigrpo.get_config('test')
    config.parallelism.num_devices, config.total_steps = 1, 1
    said = []
    report = demo.run(config, str(tmp_path), from_scratch=True, sft_scale=',test', per_tag=1,
                      say=said.append)
    said = '\n'.join(said)
    assert 'stage1 (10 of 20 steps)' in said and 'stage2 (10 of 20 steps)' in said
    assert 'initialised from' in said and report == str(tmp_path / 'report.md')
    for path in ('sft_think_stage1/final', 'sft_think/final', 'unigrpo/rl_config.json'):
        assert (tmp_path / path).exists(), path
    assert '| UniGRPO step 1, think=on cfg=1 |' in (tmp_path / 'report.md').read_text()


def test_the_run_is_put_beside_the_documented_seeds_or_says_what_is_missing():
    before = {'think=on cfg=2': {'overall': 0.70}}
    after = {'think=on cfg=2': {'overall': 0.75}}
    documented = {'seeds': [0, 1], 'steps': {demo.ARM: 100},
                  demo.ARM: {'cfg=2': {'gain': {'mean': 4.0, 'std': 1.5, 'values': [3.0, 5.0]}}}}
    assert demo.documented_lines(before, after, documented) == [
        'think=on cfg=2: this run +5.0 points; documented over seeds [0, 1] (100 steps): '
        '+4.0 ± 1.5 (per seed +3.0 / +5.0)']
    assert 'no documented distribution' in demo.documented_lines(before, after, {})[0]
