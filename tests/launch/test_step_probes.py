"""launch/bench_rl_step.py and launch/probe_flow_signal.py on configs/bagel_grpo.py:tiny: the
rows they print and write (timings and rewards unchecked, only that they are measured)."""

import json


def test_bench_rl_step_splits_the_step_and_rates_each_phase(tmp_path, launch):
    out = tmp_path / 'bench.json'
    stdout = launch(['launch/bench_rl_step.py', '--config=configs/bagel_grpo.py:tiny',
                     f'--workdir={tmp_path / "run"}', '--steps=2', f'--out={out}',
                     '--config.update_chains=all'], timeout=900)  # one update size
    assert 'mean of the 1 of 2 steps' in stdout and '| update |' in stdout, stdout
    result = json.loads(out.read_text())
    phases = result['phases']
    assert set(phases) == {'rollout', 'reward', 'reference', 'update'}
    assert 0.5 < sum(p['share'] for p in phases.values()) <= 1.0 + 1e-6  # the split covers the step
    for name in ('rollout', 'reference', 'update'):
        assert phases[name]['roofline_s'] > 0 and 0 < phases[name]['fraction'], phases
    assert result['matmul_flops'] > 1e8 and result['bandwidth'] > 1e8


def test_probe_flow_signal_reports_each_variant(tmp_path, launch):
    stdout = launch(['launch/probe_flow_signal.py', '--config=configs/bagel_grpo.py:tiny',
                     f'--out={tmp_path}', '--steps=1', '--window_starts=1'], timeout=900)
    results = json.loads((tmp_path / 'signal.json').read_text())
    assert list(results) == ['initial_noise=chain, window start in [0, 2]',
                             'initial_noise=group, window start in [0, 2]',
                             'initial_noise=group, window start 1'], results
    for r in results.values():
        assert r['reward/group_std'] >= 0 and 0 <= r['reward/constant_group_fraction'] <= 1
    assert '| initial_noise=chain, window start in [0, 2] |' in stdout
    assert (tmp_path / 'v2' / 'metrics.jsonl').exists()
