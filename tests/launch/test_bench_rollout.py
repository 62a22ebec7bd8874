"""launch/bench_rollout.py on configs/bagel_grpo.py:tiny (the rows it prints, timings unchecked)
and its library, unigrpo_jax.bench.rollout_speed."""

import json
import os
import re
import subprocess
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_SCRIPT = os.path.join(_ROOT, 'launch', 'bench_rollout.py')


def _run(*args):
    # One CPU device (as the benchmark is run here), and cheap XLA compiles: no timing is
    # checked, and compiling dominates the run on a CPU.
    env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_backend_optimization_level=0 '
               '--xla_llvm_disable_expensive_passes=true')
    result = subprocess.run([sys.executable, _SCRIPT, '--config=configs/bagel_grpo.py:tiny',
                             *args], capture_output=True, text=True, env=env, cwd=_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_tiny_prints_every_row(tmp_path):
    out = tmp_path / 'bench.json'
    stdout = _run('--repeats=1', '--rollout_repeats=1', f'--out={out}')
    header, columns, *rows = stdout.splitlines()
    assert header.startswith('backend=cpu') and 'group_size=4' in header
    assert columns.split() == ['measurement', 'batch', 'value', 'unit', 'notes']
    names = [re.match(r'(\D+?) +(\d+) ', row).groups() for row in rows]
    assert names == [('think decode', '1'), ('compiles think decode', '1'),
                     ('denoise step', '1'), ('compiles denoise step', '1'),
                     ('think decode', '4'), ('compiles think decode', '4'),
                     ('denoise step', '4'), ('compiles denoise step', '4'),
                     ('rollout', '4'), ('compiles rollout', '4')], stdout
    assert 'roofline' not in stdout and 'MFU' not in stdout  # GPU only
    result = json.loads(out.read_text())
    assert result['header']['llm_params'] == 165120
    compiles = [r for r in result['rows'] if r['name'].startswith('compiles')]
    assert len(compiles) == 5 and all(r['value'] == 0 for r in compiles), compiles
    assert all(r['value'] > 0 for r in result['rows'] if r['unit'].endswith('/s'))


def test_7b_shapes_are_skipped_on_cpu():
    assert 'skipped: it needs an accelerator' in _run('--shapes=7b')


def test_the_table_has_a_header_line_and_one_aligned_line_per_row():
    from unigrpo_jax.bench import rollout_speed
    text = rollout_speed.table({'backend': 'cpu', 'group_size': 4}, [
        dict(name='rollout', batch=4, value=2.5, unit='images/s', note='1 prompt(s)'),
        dict(name='compiles rollout', batch=4, value=0, unit='recompiles', note='none')])
    assert text.splitlines() == [
        'backend=cpu group_size=4',
        'measurement              batch        value  unit            notes',
        'rollout                      4          2.5  images/s        1 prompt(s)',
        'compiles rollout             4            0  recompiles      none']
