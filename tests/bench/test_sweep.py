"""The sharding sweep (launch/bench_sharding.py, unigrpo_jax/bench/sweep.py) on 8 emulated CPU
devices: its rows, memory and collective numbers, failure rows, and the meshes."""

import csv
import os
import subprocess
import sys

import pytest

from configs import bagel_grpo
from unigrpo_jax.bench import programs, report, sweep
from unigrpo_jax.train import settings

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_SCRIPT = os.path.join(_ROOT, 'launch', 'bench_sharding.py')


def _sweep(out, *args) -> list[dict]:
    # Cheap XLA compiles (no timing is checked; compiling dominates on a CPU).
    env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=(
        '--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0 '
        '--xla_llvm_disable_expensive_passes=true'))
    result = subprocess.run([sys.executable, _SCRIPT, '--config=configs/bagel_grpo.py:tiny',
                             f'--out={out}', '--repeats=1', *args],
                            capture_output=True, text=True, env=env, cwd=_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ('bench.csv', 'bench.md', 'bench.png'):
        assert (out / name).stat().st_size > 0
    with open(out / 'bench.csv') as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == report.COLUMNS
        return list(reader)


@pytest.fixture(scope='module')
def rollout_rows(tmp_path_factory):
    """decode and denoise: tiny on 1 device and on fsdp=8 (executed), 7b with 2 layers (compile
    only, over a 0.5 GiB limit), and a mesh needing 16 devices."""
    out = tmp_path_factory.mktemp('sweep')
    rows = _sweep(out, '--sizes=tiny,7b', '--layers=2', '--strategies=dp,fsdp',
                  '--programs=decode,denoise', '--meshes=1,1,1;1,8,1;16,1,1',
                  '--memory_limit_gb=0.5')
    assert (out / 'bench.md').read_text().startswith('| size | strategy | mesh |')
    return {(r['size'], r['strategy'], r['mesh'], r['program']): r for r in rows}


def test_every_row_is_reported(rollout_rows):
    assert len(rollout_rows) == 2 * 3 * 2 * 2
    for (size, _, mesh, _), row in rollout_rows.items():
        if mesh == '16x1x1':  # an impossible mesh is a row, not a crash
            assert row['status'] == 'error' and 'needs 16 devices' in row['error'], row
        elif size == 'tiny':
            assert row['status'] == 'ok', row
            assert float(row['step_s']) > 0 and float(row['throughput']) > 0
            assert row['mfu'] == ''  # no peak FLOP/s for a CPU
        else:  # never allocated: compiled, its memory over the limit
            assert row['status'] == 'does not fit' and 'GiB per device > limit' in row['error']
            assert row['step_s'] == '' and float(row['compile_s']) > 0


@pytest.mark.parametrize('size', ['tiny', '7b'])
@pytest.mark.parametrize('program', ['decode', 'denoise'])
def test_fsdp_shards_params_and_communicates(rollout_rows, size, program):
    rows = {(s, m): rollout_rows[(size, s, m, program)] for s in ('dp', 'fsdp')
            for m in ('1x1x1', '1x8x1')}
    # The params are the programs' arguments: fsdp holds a shard of the embed-sharded ones.
    dp, fsdp = (int(rows[(s, '1x8x1')]['mem_argument']) for s in ('dp', 'fsdp'))
    assert fsdp < dp / 2, (dp, fsdp)
    # One device never communicates; fsdp gathers weights; dp reads only its own chains.
    for s in ('dp', 'fsdp'):
        assert int(rows[(s, '1x1x1')]['coll_bytes']) == 0
    assert int(rows[('fsdp', '1x8x1')]['coll_bytes']) > 0
    assert int(rows[('fsdp', '1x8x1')]['coll_all_gather']) > 0
    assert int(rows[('dp', '1x8x1')]['coll_bytes']) == 0


def test_train_step_row(tmp_path):
    (row,) = _sweep(tmp_path, '--sizes=tiny', '--strategies=fsdp', '--programs=train',
                    '--meshes=1,8,1')
    assert row['status'] == 'ok' and row['throughput_unit'] == 'tokens/s', row
    assert int(row['coll_all_reduce']) + int(row['coll_all_gather']) > 0
    assert int(row['mem_alias']) > 0  # the donated train state
    cfg = bagel_grpo.get_config('tiny')
    config = programs.model_config('tiny', cfg)
    rc = settings.rollout_config(cfg)
    obj = settings.objective_config(cfg, rc.schedule)
    w = programs.workload(rc, obj, 8, 32, 32)
    assert float(row['model_flops']) == programs.train_step_flops(config, obj, w)


def test_meshes():
    assert sweep.parse_meshes('8,1,1; 1,4,2;') == [(8, 1, 1), (1, 4, 2)]
    with pytest.raises(ValueError, match='expected 3 sizes'):
        sweep.parse_meshes('4,2')
    assert sweep.default_meshes(1) == [(1, 1, 1)]
    assert sweep.default_meshes(8) == [(1, 1, 1), (8, 1, 1), (1, 8, 1), (1, 4, 2), (4, 1, 2)]
