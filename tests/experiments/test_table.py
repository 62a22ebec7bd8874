"""The Table-2 runner's plan, checks and report pieces (unigrpo_jax/experiments/table.py); the
runs themselves are launch/shapes_results.py's (docs/results.md, "Commands")."""

import json

import pytest

from unigrpo_jax.errors import ConfigError
from unigrpo_jax.experiments import table
from unigrpo_jax.shapes import prompts as shapes_prompts


def _plan(**kw):
    return table.Plan(**{**dict(out='/o', steps=40, seeds=(0, 1), ablation_seeds=(0,),
                                arms=('unigrpo', 'flowgrpo')), **kw})


def test_every_run_of_a_plan_has_its_own_workdir_and_the_ablation_reuses_unigrpo():
    runs = table.runs(_plan())
    assert [(part, config, seed, workdir) for part, _, config, seed, workdir, _ in runs] == [
        ('flowgrpo', 'shapes_flowgrpo', 0, '/o/shapes_flowgrpo_s0'),
        ('flowgrpo', 'shapes_flowgrpo', 1, '/o/shapes_flowgrpo_s1'),
        ('unigrpo', 'shapes_unigrpo', 0, '/o/shapes_unigrpo_s0'),
        ('unigrpo', 'shapes_unigrpo', 1, '/o/shapes_unigrpo_s1'),
        ('ablation', 'shapes_unigrpo', 0, '/o/shapes_unigrpo_none_s0'),
        ('ablation', 'shapes_unigrpo', 0, '/o/shapes_unigrpo_latent_kl_s0'),
        ('unigrpo', 'shapes_unigrpo', 0, '/o/shapes_unigrpo_s0')]  # velocity MSE: the arm
    assert [r[5] for r in runs[4:]] == [{'regularizer': 'none'}, {'regularizer': 'latent_kl'},
                                        {'regularizer': 'velocity_mse'}]
    assert table.runs(_plan(ablation_seeds=()))[-1][4] == '/o/shapes_unigrpo_s1'


def test_per_arm_steps_override_the_common_budget_and_unknown_names_are_refused():
    plan = _plan(arm_steps={'flowgrpo': 200})
    assert table.steps(plan, 'shapes_flowgrpo') == 200 and table.steps(plan, 'shapes_unigrpo') == 40
    for bad, message in [(dict(arms=('unigrpo', 'grpo')), r"--arms: \['grpo'\] unknown"),
                         (dict(arm_steps={'flow': 3}), r"--arm_steps: \['flow'\] unknown"),
                         (dict(only=('sft', 'eval')), r"--only: \['eval'\] unknown")]:
        with pytest.raises(ConfigError, match=message):
            table.check(_plan(**bad))


def test_accuracy_table_is_mean_and_sample_std_over_seeds():
    def row(overall):
        return {'think=on cfg=2': {**dict.fromkeys(shapes_prompts.TAGS, 0.5), 'overall': overall}}
    text = table.accuracy_table({'UniGRPO (think)': [row(0.70), row(0.80)]}, 'cfg=2')
    assert text.splitlines()[2].endswith('| 75.0 ± 7.1 |')  # std of 70 and 80 with n - 1


def test_mean_curve_averages_runs_evaluated_at_the_same_steps(tmp_path):
    for name, values in (('a', (0.5, 0.7)), ('b', (0.7, 0.9)), ('c', (0.6,))):
        (tmp_path / name).mkdir()
        steps = (10, 20)[:len(values)]
        (tmp_path / name / 'metrics.jsonl').write_text(''.join(
            json.dumps({'step': s, 'eval/reward_mean': v}) + '\n' for s, v in zip(steps, values)))
    steps, mean = table.mean_curve([str(tmp_path / 'a'), str(tmp_path / 'b')], last=20)
    assert steps == [10, 20] and mean == pytest.approx([0.6, 0.8])
    with pytest.raises(ValueError, match='evaluated at different steps'):
        table.mean_curve([str(tmp_path / 'a'), str(tmp_path / 'c')], last=20)
