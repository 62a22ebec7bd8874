"""The learning check (launch/check_learning.py, shapes/learning_check.py): TextGRPO, FlowGRPO,
UniGRPO and NFT (DiffusionNFT's image term) each raise the share of red on 3 seeds well beyond the batch-to-batch noise; with
both learning rates 0 it does not move; with the reward negated it falls. A failure here means
the gradient (or the loop around it) is wrong, whatever a recipe does."""

import json

import numpy as np
import pytest

from unigrpo_jax.shapes import learning_check


def test_every_term_learns_and_the_controls_do_not(tmp_path, launch):
    stdout = launch(['launch/check_learning.py', f'--workdir={tmp_path}', '--steps=10',
                     '--window=3'], timeout=1500)
    verdicts = json.loads((tmp_path / 'verdicts.json').read_text())
    runs = {(v['check'], v['seed']) for v in verdicts}
    assert runs == {(c, s) for c in ('textgrpo', 'flowgrpo', 'unigrpo', 'nft')
                    for s in (0, 1, 2)} | {
        ('unigrpo_lr0', 0), ('unigrpo_flipped', 0)}, stdout
    assert all(v['passed'] for v in verdicts), stdout


def test_z_scores_a_rise_in_units_of_the_noise():
    first, last, z = learning_check.z_score(np.array([0.0, 0.0, 1.0, 1.0]), 2, noise=0.5)
    assert (first, last) == (0.0, 1.0) and z == pytest.approx(1.0 / (0.5 * np.sqrt(2 / 2)))
    with pytest.raises(ValueError, match='at least 2 x 3'):
        learning_check.z_score(np.zeros(5), 3, noise=1.0)


def test_judge_wants_a_rise_no_move_and_a_fall():
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.01, 12)
    rise = np.linspace(0.0, 0.2, 12) + noise
    verdicts = {(v.check, v.seed): v for v in learning_check.judge({
        ('unigrpo', 0): rise, ('flowgrpo', 0): noise + 0.1,
        ('unigrpo_lr0', 0): noise + 0.1,
        ('unigrpo_flipped', 0): -(0.2 - np.linspace(0.0, 0.2, 12)) + noise,  # logged negated
    }, window=4)}
    assert verdicts[('unigrpo', 0)].passed and verdicts[('unigrpo', 0)].z > 10
    assert not verdicts[('flowgrpo', 0)].passed  # flat: no learning
    assert verdicts[('unigrpo_lr0', 0)].passed
    assert verdicts[('unigrpo_flipped', 0)].passed and verdicts[('unigrpo_flipped', 0)].z < -10
    with pytest.raises(ValueError, match='learning-rate-0 control'):
        learning_check.judge({('unigrpo', 0): rise}, window=4)


def test_check_config_sets_the_reward_and_the_controls():
    from configs import shapes_unigrpo
    base = shapes_unigrpo.get_config('test')
    lr0 = learning_check.check_config(base, 'lr0', '/p.jsonl', 12, 3)
    assert (lr0.optimizer.lr_und, lr0.optimizer.lr_gen, lr0.seed, lr0.total_steps) == (0, 0, 3, 12)
    assert lr0.reward.name == 'color_fraction' and lr0.data.train == '/p.jsonl'
    flipped = learning_check.check_config(base, 'flipped', '/p.jsonl', 12, 0)
    assert flipped.reward.options.sign == -1.0 and flipped.optimizer.lr_und > 0
    with pytest.raises(ValueError, match='unknown change'):
        learning_check.check_config(base, 'faster', '/p.jsonl', 12, 0)
