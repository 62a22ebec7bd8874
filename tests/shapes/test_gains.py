"""unigrpo_jax.shapes.gains: per-seed gains over SFT and the paired difference of two arms."""

import numpy as np
import pytest

from unigrpo_jax.shapes import gains


def _rows(values, think='on'):
    return [{f'think={think} cfg=1': {'overall': v / 100}, f'think={think} cfg=2':
             {'overall': (v + 1) / 100}} for v in values]


def test_gains_are_paired_by_seed_and_the_difference_has_a_t_interval():
    results = {'SFT (think)': _rows([70, 60, 65]), 'SFT (no think)': _rows([50, 52, 48], 'off'),
               'UniGRPO (think)': _rows([78, 66, 70]), 'FlowGRPO (no think)':
               _rows([52, 52, 49], 'off')}
    starts = {'UniGRPO (think)': 'SFT (think)', 'FlowGRPO (no think)': 'SFT (no think)'}
    summary = gains.gains(results, ['cfg=1', 'cfg=2'], starts,
                          ('UniGRPO (think)', 'FlowGRPO (no think)'))
    uni = summary['UniGRPO (think)']['cfg=1']['gain']
    assert uni['values'] == [8.0, 6.0, 5.0] and uni['min'] == 5.0
    assert uni['mean'] == pytest.approx(19 / 3) and uni['std'] == pytest.approx(np.std([8, 6, 5], ddof=1))
    d = summary['paired']['cfg=2']
    assert d['values'] == [6.0, 6.0, 4.0]  # (8, 6, 5) - (2, 0, 1)
    half = 4.302653 * np.std([6, 6, 4], ddof=1) / np.sqrt(3)  # t(0.975, 2 df)
    np.testing.assert_allclose(d['ci95'], [16 / 3 - half, 16 / 3 + half], rtol=1e-5)
    table = gains.markdown(summary, ['cfg=1'])
    assert '| UniGRPO (think) | cfg=1 | 65.0 | 71.3 | +8.0 / +6.0 / +5.0 | +6.3 ± 1.5 | +5.0 |' in table
    assert '| cfg=1 | +6.0 / +6.0 / +4.0 |' in table


def test_unequal_seed_counts_are_an_error():
    results = {'SFT (think)': _rows([70, 60]), 'UniGRPO (think)': _rows([78])}
    with pytest.raises(ValueError, match='1 seeds but SFT'):
        gains.gains(results, ['cfg=1'], {'UniGRPO (think)': 'SFT (think)'})
