"""launch/demo.py end to end at test scale: run directories, report, plot and grids."""

import json
import os

import pytest

from configs import shapes_uninft, shapes_unigrpo
from unigrpo_jax.errors import ConfigError
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
    assert (f'UniGRPO (think) documented over seeds {documented["seeds"]} ({steps} steps): '
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
    arm = 'UniGRPO (think)'
    documented = {'seeds': [0, 1], 'steps': {arm: 100},
                  arm: {'cfg=2': {'gain': {'mean': 4.0, 'std': 1.5, 'values': [3.0, 5.0]}}}}
    assert demo.documented_lines(before, after, documented, arm) == [
        'think=on cfg=2: this run +5.0 points; UniGRPO (think) documented over seeds [0, 1] '
        '(100 steps): +4.0 ± 1.5 (per seed +3.0 / +5.0)']
    assert ('no documented value for UniGRPO-NFT (think)'
            in demo.documented_lines(before, after, documented, 'UniGRPO-NFT (think)')[0])
    assert 'no documented distribution' in demo.documented_lines(before, after, {}, arm)[0]


def test_the_demo_quotes_the_documented_row_of_the_arm_its_config_trains():
    assert demo.documented_arm(shapes_unigrpo.get_config()) == 'UniGRPO (think)'
    assert demo.documented_arm(shapes_uninft.get_config()) == 'UniGRPO-NFT (think)'
    assert demo.policy_name('UniGRPO-NFT (think)') == 'UniGRPO-NFT'
    with open(demo.DOCUMENTED) as f:  # both rows are documented
        assert {'UniGRPO (think)', 'UniGRPO-NFT (think)'} <= set(json.load(f))
    config = shapes_unigrpo.get_config()
    config.objective.update(mode='textgrpo', image_term='nft')
    with pytest.raises(ConfigError, match='no ShapesEval arm'):
        demo.documented_arm(config)


def test_the_reward_curve_names_how_the_arm_draws_its_rollouts(tmp_path):
    rows = [{'step': s, 'reward/mean': 0.5 + 0.01 * s} for s in range(1, 13)]
    rows.append({'step': 10, 'eval/reward_mean': 0.7})
    (tmp_path / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    window = demo.reward_curves(str(tmp_path), shapes_unigrpo.get_config())
    ode = demo.reward_curves(str(tmp_path), shapes_uninft.get_config())
    assert 'training reward (rollout: SDE window, no CFG)' in window
    assert 'training reward (rollout: ODE, no CFG)' in ode
    steps, values = ode['training reward (rollout: ODE, no CFG)']
    assert steps == list(range(1, 13)) and values[-1] == 0.62
    assert ode['eval reward (240 held-out prompts, ODE + CFG)'] == ([10], [0.7])
