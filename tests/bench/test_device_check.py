"""The device check (launch/device_check.py, unigrpo_jax/bench/device_check.py) at tiny shapes on
one CPU device, in process: every field of its JSON present and sane (timings unchecked), its
markdown rows, and the launcher's errors for bad flags."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from unigrpo_jax.bench import device_check, parity, programs, sweep

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope='module')
def result():
    return device_check.device_check(True, repeats=1, parity_cases=['text_forward'])


def test_every_field_is_present_and_sane(result, tmp_path):
    d = result['device']
    assert (d['kind'], d['platform']) == ('cpu', 'cpu') and d['peak']['source'] == 'measured'
    assert d['peak']['bf16_flops'] > 1e8 and d['peak']['bandwidth'] > 1e8  # measured on a CPU
    s = result['shapes']
    assert s['tiny'] and (s['layers'], s['hidden'], s['heads'], s['kv_heads']) == (2, 64, 4, 2)
    assert (s['chains'], s['train_chains'], s['think_tokens'], s['latent_tokens']) == (4, 1, 8, 64)

    p = result['parity']
    assert p['status'] == 'ok' and p['cases'] == ['text_forward'] and p['checks'] > 0 and p['failed'] == 0
    assert 0 <= p['worst']['error'] <= p['worst']['tolerance']
    assert p['worst']['tolerance'] >= parity.FORWARD_TOL

    a = result['attention']
    assert a['status'] == 'ok' and a['kernel'] == 'dot_product'  # kernel_for('flash') on a CPU
    assert a['shape'] == dict(batch=1, block=66, context=s['context'], heads=4, kv_heads=2,
                              head_dim=16)
    assert a['max_abs_diff'] <= 2e-2 * a['max_abs']  # bf16 outputs of the same softmax
    assert a['xla_s'] > 0 and a['fused_s'] > 0 and a['speedup'] > 0

    assert set(result['programs']) == set(device_check.PROGRAMS)
    for name, row in result['programs'].items():
        assert row['status'] == 'ok', (name, row)
        assert row['step_s'] > 0 and row['compile_s'] > 0
        # A fraction of a peak measured on a shared machine: finite and positive, no bound on
        # how close to the peak (timings are no test's business).
        assert 0 < row['fraction'] < float('inf'), (name, row['fraction'])
        m = row['memory']
        assert m['predicted'] > 0 and m['argument'] > 0 and m['measured'] is None  # no stats
        assert m['predicted'] == m['argument'] + m['output'] - m['alias'] + m['temp']
    assert result['programs']['decode']['bytes'] > 0
    assert result['programs']['train']['flops'] > result['programs']['denoise']['flops'] > 0

    path = device_check.write_json(result, str(tmp_path / 'a' / 'check.json'))
    assert json.loads(open(path).read())['shapes'] == s


def test_markdown_rows_name_the_device(result):
    lines = device_check.markdown(result).splitlines()
    assert lines[0] == '| device | shapes | measurement | value | notes |'
    rows = lines[2:]
    assert len(rows) == 3 + 2 * len(device_check.PROGRAMS)  # peak, parity, attention
    assert all(r.startswith('| `cpu` | tiny (bagel_grpo.py:tiny), 2 layers |') for r in rows)
    assert '| peak |' in rows[0] and 'not a bf16 peak' in rows[0]
    assert '| fixture parity, float32 | max error' in rows[1]
    assert '| attention `dot_product` vs `xla`, bf16 |' in rows[2]
    assert 'of peak bandwidth' in rows[3] and 'MFU' in rows[4] and 'MFU' in rows[5]
    assert 'measured n/a' in rows[-1] and 'not measured: no device statistics' in rows[-1]


def test_memory_stats_are_none_without_a_peak():
    assert device_check.memory_stats(jax.devices()[0]) is None


class _Device:  # a device whose allocator statistics are given
    def __init__(self, stats):
        self.stats = stats

    def memory_stats(self):
        return self.stats


def test_fill_brings_the_live_bytes_up_to_the_peak():
    device = _Device(dict(bytes_in_use=1000, peak_bytes_in_use=4000))
    assert device_check.memory_stats(device) == device.stats
    assert sum(x.nbytes for x in device_check._fill_to_peak(device)) == 3000


def _program(fn, n=4):
    return programs.Program(fn=jax.jit(fn), abstract=(jax.ShapeDtypeStruct((n,), jnp.float32),),
                            concrete=lambda: (jnp.ones(n),), flops=n, items=n, unit='x/s',
                            threaded=False)


def test_first_call_measures_only_where_the_fill_leaves_room():
    program = _program(lambda x: x * 2)
    compiled = program.fn.lower(*program.abstract).compile()
    device = _Device(dict(bytes_in_use=0, peak_bytes_in_use=100))
    args, rise, why = device_check._first_call(compiled, program, device, 16, None)
    assert rise == 0 and why == '' and args[0].shape == (4,)  # the stats never move here
    _, rise, why = device_check._first_call(compiled, program, device, 16, 110)
    assert rise is None and why == 'the previous peak plus this call would not fit the device'


def test_run_programs_reports_each_program_on_its_own(monkeypatch):
    def broken(x):
        raise RuntimeError('no kernel for this')
    named = {'big': _program(lambda x: x * 2, 64), 'small': _program(lambda x: x + 1),
             'broken': _program(broken)}
    rows = device_check.run_programs(named, repeats=1)
    assert rows['broken'] == {'status': 'error', 'error': 'RuntimeError: no kernel for this'}
    for name, n in (('big', 64), ('small', 4)):
        assert rows[name]['status'] == 'ok' and rows[name]['step_s'] > 0
        assert rows[name]['memory']['predicted'] == 2 * 4 * n  # argument and output, float32
    monkeypatch.setattr(sweep, 'device_memory_limit', lambda: 100)
    rows = device_check.run_programs(named, repeats=1)
    assert rows['small']['status'] == 'ok' and 'step_s' not in rows['big']
    assert rows['big']['status'] == 'does not fit' and '> the device' in rows['big']['error']


def test_model_config_takes_the_7b_widths_from_the_repo():
    from configs import bagel_grpo
    from unigrpo_jax.bench import perf
    config = device_check.model_config(bagel_grpo.get_config(), tiny=False, layers=3)
    assert config.llm == perf.bagel_7b_config(3).llm and config.dtype == 'bfloat16'
    assert config.attention == 'dot_product'  # model.attention='flash' on a CPU


def test_bad_arguments_say_what_was_expected():
    with pytest.raises(ValueError, match=r"parity cases \['nope'\]: expected some of"):
        device_check.check_parity(device_check.FIXTURE, ['nope'])
    with pytest.raises(ValueError, match='layers=0; expected at least 1'):
        device_check.device_check(True, layers=0)


def test_the_launcher_stops_on_a_bad_flag_with_one_line():
    out = subprocess.run([sys.executable, 'launch/device_check.py', '--parity_cases=text,nope'],
                         cwd=_ROOT, capture_output=True, text=True,
                         env=dict(os.environ, JAX_PLATFORMS='cpu'))
    assert out.returncode != 0 and 'Traceback' not in out.stderr, out.stderr[-2000:]
    assert '--parity_cases: expected a comma-separated subset of' in out.stderr
