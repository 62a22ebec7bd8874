"""Ahead-of-time compile checks (``bench.compile_check``, ``bench.targets``,
``launch/compile_check.py``): TPU targets compiled by libtpu on this CPU (GPU ones too where
jax's CUDA plugin is installed).

Tests that compile need libtpu (``pip install -e '.[tpu-compile]'``): skipped without it, except
in CI (``CI=true``), whose ``.ci/run`` installs it, where its absence fails them.
"""

import csv
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from unigrpo_jax.bench import compile_check, targets
from unigrpo_jax.errors import ConfigError

# Compile-only executables go into conftest's persistent compilation cache but cannot be read
# back (no client to load them on): jax warns and compiles again.
pytestmark = pytest.mark.filterwarnings(
    'ignore:Error reading persistent compilation cache entry:UserWarning')

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GIB = 2**30


@pytest.fixture
def tpu(monkeypatch):
    # Another pytest-xdist worker may hold libtpu's one-process lock.
    monkeypatch.setenv('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
    if not targets.compiler_installed('tpu'):
        if os.environ.get('CI') == 'true':
            pytest.fail("libtpu is not installed; CI must install it: pip install -e "
                        "'.[tpu-compile]' (.ci/run)")
        pytest.skip("libtpu not installed: pip install -e '.[tpu-compile]'")


def _mesh(target_name: str) -> tuple[targets.Target, Mesh]:
    target = targets.get(target_name)
    return target, Mesh(np.array(targets.devices(target)), ('data',))


def _sharded(mesh: Mesh, shape, spec=P('data'), dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))


def _matmul(mesh: Mesh):
    """``x [n * 1024, 512] f32`` split over the n devices (2 MiB each) @ replicated
    ``w [512, 256] f32`` (0.5 MiB) -> ``[n * 1024, 256]`` split (1 MiB each): no collective."""
    fn = jax.jit(lambda x, w: x @ w, out_shardings=NamedSharding(mesh, P('data')))
    x = _sharded(mesh, (mesh.size * 1024, 512))
    return 'matmul', fn, (x, _sharded(mesh, (512, 256), P()))


def test_memory_per_device_is_the_shard_bytes(tpu):
    target, mesh = _mesh('v5p-8')
    total = jax.jit(lambda x: x.sum(0))  # [4096, 512] split -> [512] replicated: an all-reduce
    rows = compile_check.compile_programs(
        [_matmul(mesh), ('sum', total, (_sharded(mesh, (4 * 1024, 512)),))], target)
    matmul, summed = rows
    assert matmul['mem_argument'] == 1024 * 512 * 4 + 512 * 256 * 4
    assert matmul['mem_output'] == 1024 * 256 * 4
    assert matmul['mem_peak'] == (matmul['mem_argument'] + matmul['mem_output']
                                  - matmul['mem_alias'] + matmul['mem_temp'])
    assert matmul['device_memory'] == target.device_memory
    assert matmul['fraction'] == pytest.approx(matmul['mem_peak'] / target.device_memory)
    assert (matmul['status'], matmul['fits'], matmul['coll_bytes']) == ('ok', True, 0)
    assert matmul['hlo_flops'] == 2 * 1024 * 512 * 256  # one device's matmul
    assert matmul['hlo_bytes'] >= matmul['mem_argument'] + matmul['mem_output']
    assert matmul['est_s'] == max(matmul['hlo_flops'] / target.peak_flops,
                                  matmul['hlo_bytes'] / target.bandwidth)
    assert summed['mem_argument'] == 1024 * 512 * 4
    assert summed['coll_all_reduce'] >= 512 * 4 and summed['coll_ops'] >= 1
    assert summed['status'] == 'ok' and matmul['compile_s'] > 0


def test_registry_memory_is_what_the_tpu_compiler_allows(tpu):
    """Below the registry's HBM a program compiles (and over 90% of it does not fit); above it
    the compiler refuses with RESOURCE_EXHAUSTED and its stated requirement is parsed."""
    target, mesh = _mesh('v5e-16')
    first8 = jax.jit(lambda a: a[:8])

    def program(fraction: float):
        per_device = int(fraction * target.device_memory) // 4 // 1024 * 1024  # f32, tiled
        return f'{fraction}', first8, (_sharded(mesh, (target.num_devices * per_device,)),)

    below, above = compile_check.compile_programs([program(0.99), program(1.01)], target)
    assert below['status'] == 'does not fit' and not below['fits']
    assert below['fraction'] == pytest.approx(0.99, abs=1e-3)
    assert above['status'] == 'RESOURCE_EXHAUSTED' and not above['fits']
    assert above['mem_peak'] is None and 'exceeds available HBM' in above['error']
    assert above['mem_required'] == pytest.approx(1.01 * target.device_memory, abs=0.01 * GIB)
    assert above['fraction'] == pytest.approx(1.01, abs=1e-3)


def test_check_reports_failures_as_rows_and_not_ok(tpu, tmp_path):
    def build(config, devices):
        assert config == 'cfg' and len(devices) == 16
        mesh = Mesh(np.array(devices), ('data',))
        huge = _sharded(mesh, (16 * 8 * GIB,), P('data'), jnp.int8)  # 8 GiB per device
        return [_matmul(mesh),
                ('huge', jax.jit(lambda a: a + 1), (huge,)),  # + 8 GiB output: over 15.75
                ('broken', jax.jit(lambda x: x @ x), (_sharded(mesh, (16, 3)),))]

    rows, ok = compile_check.check('cfg', 'v5e-16', str(tmp_path), build_programs=build)
    assert not ok
    assert [r['status'] for r in rows][:2] == ['ok', 'RESOURCE_EXHAUSTED']
    assert rows[2]['status'].startswith('error: TypeError: dot_general')
    with open(tmp_path / 'compile_check.csv') as f:
        written = list(csv.DictReader(f))
    assert [r['program'] for r in written] == ['matmul', 'huge', 'broken']
    assert written[0]['mem_argument'] == str(rows[0]['mem_argument'])
    table = (tmp_path / 'compile_check.md').read_text()
    assert len(table.splitlines()) == 2 + 3 and '| v5e-16 | huge | RESOURCE_EXHAUSTED |' in table

    rows, ok = compile_check.check('cfg', 'v5e-16', str(tmp_path), names=['matmul'],
                                   build_programs=build,
                                   estimates=lambda config, target: {'matmul': 1.5})
    assert ok and [r['program'] for r in rows] == ['matmul'] and rows[0]['analytic_s'] == 1.5
    assert (tmp_path / 'compile_check.md').read_text().splitlines()[2].endswith(' | 1.5 |')
    with pytest.raises(ConfigError, match='non-empty selection'):
        compile_check.check('cfg', 'v5e-16', str(tmp_path), names=['train'],
                            build_programs=build)


def test_tpu_targets_have_their_devices_and_hosts(tpu):
    kinds = {'v5p': 'TPU v5', 'v5e': 'TPU v5 lite', 'v6e': 'TPU v6 lite'}
    for target in targets.TARGETS.values():
        if target.platform == 'tpu':
            found = targets.devices(target)
            assert len(found) == target.num_devices, target
            assert len({d.process_index for d in found}) == target.hosts, target
            assert {d.device_kind for d in found} == {kinds[target.topology[:3]]}, target


def test_gpu_device_memory_is_the_specs():
    for target in targets.TARGETS.values():
        if target.platform == 'cuda':
            spec = (targets.REPO / target.gpu_spec).read_text()
            size = re.search(r'device_memory_size:\s*(\d+)', spec).group(1)
            assert target.device_memory == int(size), target


@pytest.mark.skipif(targets.compiler_installed('cuda'), reason='jax CUDA plugin installed')
def test_a_missing_compiler_names_the_extra_to_install():
    with pytest.raises(targets.CompilerNotInstalled,
                       match=re.escape("pip install -e '.[gpu-compile]'")):
        targets.devices(targets.get('h100x8'))


@pytest.mark.skipif(not targets.compiler_installed('cuda'),
                    reason="needs the CUDA plugin: pip install -e '.[gpu-compile]'")
def test_gpu_targets_compile_and_are_checked_against_the_device_memory():
    for target in targets.TARGETS.values():
        if target.platform == 'cuda':
            found = targets.devices(target)
            assert len(found) == target.num_devices
            assert len({d.process_index for d in found}) == target.hosts
    target = targets.get('h100x8')
    mesh = Mesh(np.array(targets.devices(target)), ('data',))
    huge = _sharded(mesh, (8 * 100 * GIB,), P('data'), jnp.int8)  # 100 GiB per device
    small, over = compile_check.compile_programs(
        [_matmul(mesh), ('huge', jax.jit(lambda a: a[:8]), (huge,))], target)
    assert small['status'] == 'ok' and small['mem_argument'] == 1024 * 512 * 4 + 512 * 256 * 4
    assert over['status'] == 'does not fit' and over['mem_argument'] == 100 * GIB


def test_launcher_lists_targets_and_rejects_unknown_ones_in_one_line():
    env = dict(os.environ, JAX_PLATFORMS='cpu')
    script = os.path.join('launch', 'compile_check.py')
    listed = subprocess.run([sys.executable, script, '--target=list'], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert all(f'| {name} |' in listed.stdout for name in targets.TARGETS)
    bad = subprocess.run([sys.executable, script, '--target=v5p-17'], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == (
        'launch/compile_check.py: v5p-17: a v5p slice has 8, 16, 32, 64, 128, 256, 512, 1024, '
        '2048, 4096, 8192 TensorCores (2 per chip)')
    assert 'Any size of a family: v5p-N' in listed.stdout


def test_any_slice_size_has_its_topology_and_hosts():
    """Targets of any size a family comes in; the named ones are the same forms."""
    got = {n: (t.topology, t.num_devices, t.hosts) for n, t in (
        (n, targets.get(n)) for n in ('v5p-8', 'v5p-32', 'v5p-64', 'v5p-1024', 'v5e-8',
                                      'v6e-16', 'h100x32', 'h200x4'))}
    assert got == {'v5p-8': ('v5p:2x2x1', 4, 1), 'v5p-32': ('v5p:4x2x2', 16, 4),
                   'v5p-64': ('v5p:4x4x2', 32, 8), 'v5p-1024': ('v5p:8x8x8', 512, 128),
                   'v5e-8': ('v5e:2x4', 8, 2), 'v6e-16': ('v6e:4x4', 16, 4),
                   'h100x32': ('1x4x8', 32, 4), 'h200x4': ('1x1x4', 4, 1)}
    assert targets.get('h200x16').device_memory == targets.get('h200x8').device_memory
    for bad, message in (('v5p-12', 'a v5p slice has 8, 16'), ('v6e-2', 'a v6e slice has 4, 8'),
                         ('h100x12', 'hosts hold 8 GPUs'), ('a100x8', "unknown target 'a100x8'; "
                                                            'expected v5p-N')):
        with pytest.raises(ConfigError, match=message):
            targets.get(bad)


def test_new_tpu_sizes_have_the_devices_and_hosts_libtpu_lays_out(tpu):
    for name in ('v5p-32', 'v5p-128', 'v6e-16'):
        target = targets.get(name)
        found = targets.devices(target)
        assert len(found) == target.num_devices, target
        assert len({d.process_index for d in found}) == target.hosts, target


def test_slices_multiply_devices_and_hosts_not_the_memory_per_chip():
    one, two = targets.get('v5p-16'), targets.get('v5p-16', num_slices=2)
    assert (two.name, two.num_slices, two.topology) == ('2xv5p-16', 2, one.topology)
    assert (two.num_devices, two.hosts) == (2 * one.num_devices, 2 * one.hosts)
    assert two.device_memory == one.device_memory and two.peak_flops == one.peak_flops
    assert targets.get('v5p-16', num_slices=1) is targets.TARGETS['v5p-16']
    with pytest.raises(ConfigError, match=r'slices are TPU slices; for more GPUs name more '
                                          r'\(h100x16\)'):
        targets.get('h100x8', num_slices=2)
    with pytest.raises(ConfigError, match='num_slices=0'):
        targets.get('v5p-16', num_slices=0)


def test_multi_slice_mesh_crosses_slices_on_one_axis_and_compiles(tpu):
    """Over 2 slices of v5p-8 the data axis (else fsdp) is split across the slices and every
    other axis stays within one; a data-parallel program compiles with the per-chip memory of
    one slice."""
    from unigrpo_jax.parallel import mesh as mesh_lib

    found = targets.devices(targets.get('v5p-8', num_slices=2))
    assert mesh_lib.num_slices(found) == 2 and len(found) == 8

    def slice_of(mesh):
        return np.vectorize(lambda d: d.slice_index)(mesh.devices)

    data = mesh_lib.make_mesh((2, -1, 1), found)
    assert (slice_of(data)[:, :, 0] == [[0] * 4, [1] * 4]).all()  # one data row per slice
    fsdp = mesh_lib.make_mesh((1, -1, 2), found)  # data 1: fsdp crosses; tensor within a slice
    assert (slice_of(fsdp)[0] == [[0, 0], [0, 0], [1, 1], [1, 1]]).all()
    with pytest.raises(ValueError, match='the data or the fsdp axis must be a multiple of 2'):
        mesh_lib.make_mesh((1, 1, 8), found)
    mesh = Mesh(data.devices.reshape(-1), ('data',))
    row = compile_check.compile_program(_matmul(mesh), targets.get('v5p-8', num_slices=2))
    one_slice, one_mesh = _mesh('v5p-8')
    single = compile_check.compile_program(_matmul(one_mesh), one_slice)
    assert row['status'] == 'ok' and row['target'] == '2xv5p-8'
    assert row['mem_argument'] == single['mem_argument']  # the same shard per chip


def test_a_gpu_spec_file_is_a_target_with_its_own_memory_and_peaks(tmp_path):
    """``FILE.txtpb:N``: memory and bandwidth as the file says, the bf16 peak from its matrix
    unit (the H100 file gives the data sheet's 989 TFLOP/s); a file without them is refused."""
    h100 = os.path.join(REPO, targets.get('h100x8').gpu_spec)
    from_file = targets.get(f'{h100}:16')
    named = targets.get('h100x16')
    assert (from_file.name, from_file.topology, from_file.hosts) == ('h100_sxmx16', '1x2x8', 2)
    assert from_file.device_memory == named.device_memory
    assert from_file.peak_flops == pytest.approx(named.peak_flops, rel=1e-3)
    assert from_file.bandwidth == pytest.approx(named.bandwidth, rel=1e-3)
    smaller = tmp_path / 'gpu40g.txtpb'
    smaller.write_text(re.sub(r'device_memory_size: \d+', 'device_memory_size: 42949672960',
                              open(h100).read()))
    assert targets.get(f'{smaller}:8').device_memory == 40 * GIB
    assert targets.get(f'{smaller}:8').name == 'gpu40gx8'
    no_bf16 = tmp_path / 'no_bf16.txtpb'
    no_bf16.write_text(re.sub(r'rate_infos \{ key: 16 [^\n]*\n', '', open(h100).read()))
    for spec, message in ((no_bf16, 'no bf16 rate'), (tmp_path / 'absent.txtpb', 'no such file')):
        with pytest.raises(ConfigError, match=message):
            targets.get(f'{spec}:8')
    with pytest.raises(ConfigError, match='hosts hold 8 GPUs'):
        targets.get(f'{h100}:12')


def test_required_bytes_reads_both_forms_of_the_tpu_message():
    assert compile_check.required_bytes(
        'RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO '
        'temporaries (223.52G) exceeds available HBM (95.74G).') == round(223.52 * GIB)
    assert compile_check.required_bytes(
        'RESOURCE_EXHAUSTED: E1000: CompileTimeHbmOom: XLA:TPU compile permanent error. Ran out '
        'of memory in memory space hbm. Used 15.75G of 15.75G hbm. Exceeded hbm capacity by '
        '1.0K.\n\nTotal hbm usage >= 16.00G:') == round(15.75 * GIB) + 1024
    assert compile_check.required_bytes('RESOURCE_EXHAUSTED: something else') is None


class _UntiledOnGpu:
    """A jitted call whose compile fails as XLA:GPU's does without a device on a GEMM fusion it
    cannot tile, unless given compiler options (then it compiles, on this CPU)."""

    def __init__(self):
        self.options = []

    def lower(self, *args):
        lowered = jax.jit(lambda x, w: x @ w).lower(*args)
        outer = self

        class Lowered:
            def compile(self, compiler_options=None):
                outer.options.append(compiler_options)
                if compiler_options is None:
                    raise RuntimeError("INTERNAL: Couldn't find output tile sizes that satisfy "
                                       'hlo: %dot.759 = bf16[2052,3584]{1,0} dot(...)')
                return lowered.compile(compiler_options=compiler_options)

        return Lowered()


def test_a_gemm_xla_gpu_cannot_tile_without_a_device_compiles_with_cublas_and_says_so(tmp_path):
    fn = _UntiledOnGpu()
    args = (jax.ShapeDtypeStruct((64, 32), jnp.float32),
            jax.ShapeDtypeStruct((32, 16), jnp.float32))
    row = compile_check.compile_program(('train_step', fn, args), targets.get('h100x8'))
    assert fn.options == [None, compile_check.CUBLAS_GEMMS]
    assert row['status'] == 'ok' and row['mem_peak'] > 0
    assert row['compiler_options'] == 'xla_gpu_enable_triton_gemm=False'
    assert '| ok (xla_gpu_enable_triton_gemm=False) |' in compile_check.markdown([row])
    # A TPU target, or another error, is not retried: the row says what failed.
    fn = _UntiledOnGpu()
    row = compile_check.compile_program(('train_step', fn, args), targets.get('v5p-8'))
    assert fn.options == [None]
    assert row['status'].startswith("error: RuntimeError: INTERNAL: Couldn't find output tile")
