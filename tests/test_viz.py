"""Plots of the reports (unigrpo_jax/viz.py)."""

from unigrpo_jax import viz


def test_moving_average_is_trailing_and_as_long_as_its_input():
    assert viz.moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert viz.moving_average([2.0, 4.0], 10) == [2.0, 3.0]
    assert viz.moving_average([], 3) == []


def test_plot_curves_writes_a_png(tmp_path):
    path = tmp_path / 'curve.png'
    viz.plot_curves(str(path), {'reward': ([1, 2, 3], [0.1, 0.2, 0.3])}, title='t')
    assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
