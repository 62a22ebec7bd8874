"""launch/train.py on a config a user got wrong: one line naming the field, no traceback."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_missing_checkpoint_is_one_clear_line(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS='cpu')
    env.pop('XLA_FLAGS', None)
    out = subprocess.run([sys.executable, 'launch/train.py', '--config=configs/bagel_grpo.py',
                          f'--workdir={tmp_path}'], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 1
    assert 'Traceback' not in out.stderr, out.stderr[-3000:]
    assert "launch/train.py: config.model.checkpoint='': set --config.model.checkpoint" in (
        out.stderr)
    assert not os.listdir(tmp_path)  # nothing was written before the check


def _train(*flags):
    env = dict(os.environ, JAX_PLATFORMS='cpu')
    env.pop('XLA_FLAGS', None)
    return subprocess.run([sys.executable, 'launch/train.py', *flags], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_an_override_of_no_field_or_a_bad_value_is_one_line(tmp_path):
    for flag, message in [
            ('--config.rollout.nosuch=1', "--config.rollout.nosuch: the config has no field "
                                          "'nosuch'"),
            ('--config.total_steps=abc', 'flag --config.total_steps=abc: invalid literal')]:
        out = _train('--config=configs/bagel_grpo.py:tiny', f'--workdir={tmp_path}', flag)
        assert out.returncode == 1 and message in out.stderr, out.stderr[-3000:]
        assert 'Traceback' not in out.stderr
