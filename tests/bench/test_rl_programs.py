"""The RL run's programs compiled for a TPU slice that is not attached (``bench.rl_programs``
through ``bench.compile_check``; libtpu compiles them on this CPU). Needs libtpu: skipped
without it, except in CI (``CI=true``: ``.ci/run`` installs it), where its absence fails."""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import pytest

from configs import bagel_grpo
from unigrpo_jax.bench import compile_check, rl_programs, targets
from unigrpo_jax.errors import ConfigError
from unigrpo_jax.model import bagel

pytestmark = pytest.mark.filterwarnings(
    'ignore:Error reading persistent compilation cache entry:UserWarning')
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def tpu(monkeypatch):
    monkeypatch.setenv('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
    if not targets.compiler_installed('tpu'):
        if os.environ.get('CI') == 'true':
            pytest.fail("libtpu is not installed; CI must install it (.ci/run)")
        pytest.skip("libtpu not installed: pip install -e '.[tpu-compile]'")


def test_tiny_run_compiles_for_v5p_and_its_state_is_the_analytic_bytes(tpu, tmp_path):
    """Every program of the tiny RL config compiles for v5p-8 (4 chips) with fsdp over the
    chips and fits; the train step's arguments per device hold at least the analytic train
    state (float32 params + Adam's two moments, sharded 4 ways where a dim divides) and at
    most a few times all its inputs' shards (TPU layouts pad the tiny model's small minor
    dimensions to 128 lanes)."""
    config = bagel_grpo.get_config('tiny')
    config.parallelism.update(mesh=(1, -1, 1), strategy='fsdp')
    config.num_minibatches = 2
    rows, ok = compile_check.check(config, 'v5p-8', str(tmp_path))
    assert ok and [r['program'] for r in rows] == ['policy', 'rollout', 'reference', 'select',
                                                   'train_step', 'eval']  # 2 minibatches
    programs = {name: args for name, _, args, _ in
                rl_programs.rl_programs(config, targets.devices(targets.get('v5p-8')))}
    state = programs['train_step'][0]
    model = rl_programs.architecture(config, 'tpu')
    count = sum(x.size for x in jax.tree.leaves(nn.unbox(bagel.abstract_params(model))))
    state_bytes = compile_check.resident_bytes(state)
    assert 12 * count / 4 <= state_bytes <= 12 * count / 2  # mostly sharded 4 ways
    train = next(r for r in rows if r['program'] == 'train_step')
    inputs = compile_check.resident_bytes(programs['train_step'])
    assert state_bytes <= train['mem_argument'] <= 4 * inputs
    assert train['mem_alias'] >= state_bytes  # the donated state is updated in place
    for row in rows:
        assert 0 < row['mem_peak'] < 0.01 * row['device_memory']
        assert row['est_s'] > 0 and row['hlo_bytes'] > 0
        assert (row['hlo_flops'] > 0) == (row['program'] not in ('policy', 'select'))  # no matmul


def test_fewer_prompts_than_chips_split_their_groups(tpu, tmp_path):
    """8 prompts on v5e-16 (16 chips), each group of 4 chains as 2 pieces: the rollout call
    holds one piece (2 chains) per chip, the evaluation pads its 8 prompts to 16, and both
    compile; without the split the config is refused with what to set."""
    config = bagel_grpo.get_config('tiny')
    config.update(batch_size=8, eval_every=1)
    config.parallelism.update(mesh=(1, -1, 1), strategy='fsdp', rollout_group_pieces=2)
    rows, ok = compile_check.check(config, 'v5e-16', str(tmp_path), ['rollout', 'eval'])
    assert ok and [r['program'] for r in rows] == ['rollout', 'eval']
    programs = {name: args for name, _, args, _ in
                rl_programs.rl_programs(config, targets.devices(targets.get('v5e-16')))}
    assert programs['rollout'][3].shape[0] == 16 and programs['eval'][3].shape[0] == 16
    config.parallelism.rollout_group_pieces = 1
    with pytest.raises(ConfigError, match='batch_size=8: the rollout runs data-parallel on all '
                       '16 devices: batch_size x parallelism.rollout_group_pieces'):
        rl_programs.rl_programs(config, targets.devices(targets.get('v5e-16')))


def test_program_estimates_split_the_iteration_estimate_per_call():
    """Per call: the rollout's phases over its calls, the whole reference, one update of
    ``ppo_epochs x num_minibatches``; compiled-free (analytic)."""
    config = bagel_grpo.get_config('tiny')
    config.update(ppo_epochs=2, num_minibatches=2, batch_size=8)
    config.parallelism.rollout_prompts_per_device = 1
    target = targets.get('v5p-8')
    phases = rl_programs.iteration_estimate(config, target, system_len=0)
    per_call = rl_programs.program_estimates(config, target, system_len=0)
    calls = 8 // target.num_devices  # prompts per device, one per call
    assert per_call['rollout'] * calls == pytest.approx(phases['rollout_decode_s']
                                                        + phases['rollout_denoise_s'])
    assert per_call['reference'] == phases['reference_s'] > 0
    assert per_call['train_step'] * 4 == pytest.approx(phases['train_s'])


def test_a_run_that_cannot_fit_is_reported_and_exits_1(tpu, tmp_path):
    """65536 chains of the tiny model per v5e chip (16 GiB) do not fit: the check reports the
    rollout as not fitting and the launcher exits 1 instead of crashing."""
    out = subprocess.run(
        [sys.executable, 'launch/compile_check.py', '--config=configs/bagel_grpo.py:tiny',
         '--target=v5e-16', '--programs=rollout', f'--out_dir={tmp_path}',
         '--config.batch_size=16', '--config.rollout.group_size=65536'],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'ALLOW_MULTIPLE_LIBTPU_LOAD': '1'})
    assert out.returncode == 1, out.stderr[-3000:]
    report = (tmp_path / 'compile_check.md').read_text()
    assert 'rollout' in report and ('RESOURCE_EXHAUSTED' in report or 'does not fit' in report)
