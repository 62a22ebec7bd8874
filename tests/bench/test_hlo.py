"""The collective parser of unigrpo_jax/bench/hlo.py: hand-written HLO text, and programs whose
traffic is counted by hand compiled for XLA:CPU, a TPU and a GPU target."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from unigrpo_jax.bench import hlo, targets


def test_collectives_of_hlo_text():
    """Sizes from shapes (operands looked up by name), the larger side of each op (of an async
    start, its output, not the operands and context its result tuple repeats), while bodies
    times their trip count, async -done halves not counted again."""
    hlo_text = '\n'.join([
        'HloModule m, entry_computation_layout={(f32[8]{0})->f32[64]{0}}',
        '%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {',
        '  %p = (s32[], f32[8]{0}) parameter(0)',
        '  %x = f32[8]{0} get-tuple-element(%p), index=1',
        '  %ag = f32[64]{0} all-gather(%x), channel_id=1, dimensions={0}',
        '  %y = bf16[16]{0} broadcast(%c), dimensions={}',
        '  %rs = bf16[2]{0} reduce-scatter(%y), channel_id=2, dimensions={0}',
        '  ROOT %t = (s32[], f32[8]{0}) tuple(%i, %x)',
        '}',
        'ENTRY %main (a: f32[8]) -> f32[64] {',
        '  %a = f32[8]{0} parameter(0)',
        '  %w = (s32[], f32[8]{0}) while(%init), condition=%cond, body=%body, '
        'backend_config={"known_trip_count":{"n":"3"}}',
        '  %ars = f32[8]{0} all-reduce-start(%a), channel_id=3, to_apply=%add',
        '  %ard = f32[8]{0} all-reduce-done(%ars)',
        '  %cps = (f32[8]{0}, f32[8]{0}, u32[], u32[]) collective-permute-start(%a)',
        '  %a2a = (f32[4]{0}, f32[4]{0}) all-to-all(%a, %a), channel_id=4',
        '  ROOT %r = f32[64]{0} all-gather(%a), channel_id=5, dimensions={0}',
        '}'])
    by_kind, ops = hlo.collectives(hlo_text)
    assert by_kind == {'all-reduce': 32, 'all-gather': 3 * 256 + 256, 'reduce-scatter': 3 * 32,
                       'all-to-all': 64, 'collective-permute': 32}
    assert ops == 3 * 2 + 4



def test_trip_counts_read_from_loop_conditions_as_libtpu_writes_them():
    """libtpu's while loops carry no ``known_trip_count``: ``i < 96`` from ``copy(0)`` by 1
    (the micro-steps) around a windowed-einsum loop ``j < 4`` by 2, where ``j`` is element 1;
    ``12 > i`` (the operands swapped); a condition of another form counts once."""
    hlo_text = '\n'.join([
        'HloModule m, entry_computation_layout={(f32[8]{0})->f32[8]{0}}',
        '%window_cond (wp: (f32[8], u32[])) -> pred[] {',
        '  %wp = (f32[8]{0}, u32[]{:T(128)}) parameter(0)',
        '  %four = u32[]{:T(128)} constant(4)',
        '  %j = u32[]{:T(128)} get-tuple-element(%wp), index=1',
        '  ROOT %lt.1 = pred[]{:T(512)} compare(%j, %four), direction=LT',
        '}',
        '%window_body (wb: (f32[8], u32[])) -> (f32[8], u32[]) {',
        '  %wb = (f32[8]{0}, u32[]{:T(128)}) parameter(0)',
        '  %x = f32[8]{0} get-tuple-element(%wb), index=0',
        '  %cps = (f32[8]{0}, f32[8]{0}, u32[], u32[]) collective-permute-start(%x)',
        '  %cpd = f32[8]{0} collective-permute-done(%cps)',
        '  %j.1 = u32[]{:T(128)} get-tuple-element(%wb), index=1',
        '  %two = u32[]{:T(128)} constant(2)',
        '  %j.2 = u32[]{:T(128)} add(%j.1, %two)',
        '  ROOT %t.1 = (f32[8]{0}, u32[]{:T(128)}) tuple(%cpd, %j.2)',
        '}',
        '%step_cond (sp: (s32[], f32[8])) -> pred[] {',
        '  %sp = (s32[]{:T(128)}, f32[8]{0}) parameter(0)',
        '  %i = s32[]{:T(128)} get-tuple-element(%sp), index=0',
        '  %n = s32[]{:T(128)} constant(96)',
        '  ROOT %lt.2 = pred[]{:T(512)} compare(%i, %n), direction=LT',
        '}',
        '%step_body (sb: (s32[], f32[8])) -> (s32[], f32[8]) {',
        '  %sb = (s32[]{:T(128)}, f32[8]{0}) parameter(0)',
        '  %y = f32[8]{0} get-tuple-element(%sb), index=1',
        '  %zero.1 = u32[]{:T(128)} constant(0)',
        '  %wi = (f32[8]{0}, u32[]{:T(128)}) tuple(%y, %zero.1)',
        '  %w.1 = (f32[8]{0}, u32[]{:T(128)}) while(%wi), condition=%window_cond, '
        'body=%window_body, backend_config={"flag_configs":[]}',
        '  %ar = f32[8]{0} all-reduce(%y), channel_id=2, to_apply=%add',
        '  %i.1 = s32[]{:T(128)} get-tuple-element(%sb), index=0',
        '  %one = s32[]{:T(128)} constant(1)',
        '  %i.2 = s32[]{:T(128)} add(%i.1, %one)',
        '  ROOT %t.2 = (s32[]{:T(128)}, f32[8]{0}) tuple(%i.2, %ar)',
        '}',
        '%swapped_cond (qp: (s32[], f32[8])) -> pred[] {',
        '  %qp = (s32[]{:T(128)}, f32[8]{0}) parameter(0)',
        '  %m = s32[]{:T(128)} constant(12)',
        '  %q = s32[]{:T(128)} get-tuple-element(%qp), index=0',
        '  ROOT %gt = pred[]{:T(512)} compare(%m, %q), direction=GT',
        '}',
        '%other_cond (op: (s32[], f32[8])) -> pred[] {',
        '  %op = (s32[]{:T(128)}, f32[8]{0}) parameter(0)',
        '  ROOT %flag = pred[]{:T(512)} custom-call(%op), custom_call_target="stop"',
        '}',
        'ENTRY %main (a: f32[8]) -> f32[8] {',
        '  %a = f32[8]{0} parameter(0)',
        '  %zero = s32[]{:T(128)} constant(0)',
        '  %start = s32[]{:T(128)} copy(%zero)',
        '  %init = (s32[]{:T(128)}, f32[8]{0}) tuple(%start, %a)',
        '  %w.2 = (s32[]{:T(128)}, f32[8]{0}) while(%init), condition=%step_cond, '
        'body=%step_body',
        '  %w.3 = (s32[]{:T(128)}, f32[8]{0}) while(%init), condition=%swapped_cond, '
        'body=%step_body',
        '  %w.4 = (s32[]{:T(128)}, f32[8]{0}) while(%init), condition=%other_cond, '
        'body=%step_body',
        '  ROOT %r = f32[8]{0} get-tuple-element(%w.2), index=1',
        '}'])
    per_step = collections.Counter({'all-reduce': 32, 'collective-permute': 2 * 32, 'ops': 3})
    by_kind, ops = hlo.collectives(hlo_text)
    assert by_kind['all-reduce'] == (96 + 12 + 1) * per_step['all-reduce']
    assert by_kind['collective-permute'] == (96 + 12 + 1) * per_step['collective-permute']
    assert ops == (96 + 12 + 1) * per_step['ops']


def test_async_wrappers_and_shared_computations_as_xla_gpu_writes_them():
    """An ``async-start`` wrapping a collective, whose ``-update``/``-done`` name the same
    computation, counts once; a computation called from two places counts for both."""
    hlo_text = '\n'.join([
        'HloModule m, entry_computation_layout={(bf16[4]{0})->bf16[32]{0}}',
        '%wrapped_all_gather (p0: bf16[4]) -> bf16[32] {',
        '  %p0 = bf16[4]{0} parameter(0)',
        '  ROOT %ag = bf16[32]{0} all-gather(%p0), channel_id=1, dimensions={0}',
        '}',
        '%shared (p1: bf16[4]) -> bf16[4] {',
        '  %p1 = bf16[4]{0} parameter(0)',
        '  ROOT %ar = bf16[4]{0} all-reduce(%p1), channel_id=2, to_apply=%add',
        '}',
        'ENTRY %main (a: bf16[4]) -> bf16[32] {',
        '  %a = bf16[4]{0} parameter(0)',
        '  %s = ((bf16[4]{0}), bf16[32]{0}, s32[]) async-start(%a), '
        'calls=%wrapped_all_gather',
        '  %u = ((bf16[4]{0}), bf16[32]{0}, s32[]) async-update(%s), calls=%wrapped_all_gather',
        '  %c1 = bf16[4]{0} call(%a), to_apply=%shared',
        '  %c2 = bf16[4]{0} call(%c1), to_apply=%shared',
        '  ROOT %d = bf16[32]{0} async-done(%u), calls=%wrapped_all_gather',
        '}'])
    by_kind, ops = hlo.collectives(hlo_text)
    assert (by_kind['all-gather'], by_kind['all-reduce'], ops) == (64, 2 * 8, 3)

def _scanned_collectives(devices, steps: int = 5):
    """A jitted ``shard_map`` over ``devices`` (n of them) of a ``steps``-step scan whose body
    all-gathers the carry ``c [16] f32`` per device (result ``[16 n]``: 64 n bytes) and sums
    ``c * 2`` over the devices (``[16]``: 64 bytes); its abstract argument ``[16 n] f32``."""
    mesh = Mesh(np.array(devices), ('d',))

    def step(c, _):
        gathered = jax.lax.all_gather(c, 'd', tiled=True)
        return c + gathered[:16] + jax.lax.psum(c * 2, 'd'), None

    fn = jax.jit(jax.shard_map(lambda x: jax.lax.scan(step, x, None, length=steps)[0],
                               mesh=mesh, in_specs=P('d'), out_specs=P('d')))
    return fn, jax.ShapeDtypeStruct((16 * len(devices),), jnp.float32,
                                    sharding=NamedSharding(mesh, P('d')))


def _assert_hand_count(devices, steps: int = 5, by_kind: bool = True):
    """``steps`` x (64 n + 64) bytes; per kind and 2 ``steps`` ops too if ``by_kind``."""
    fn, x = _scanned_collectives(devices, steps)
    counted, ops = hlo.collectives(fn.lower(x).compile().as_text())
    n = len(devices)
    assert sum(counted.values()) == steps * (64 * n + 64)
    if by_kind:
        assert ops == 2 * steps
        assert counted == {'all-reduce': steps * 64, 'all-gather': steps * 64 * n,
                           'reduce-scatter': 0, 'all-to-all': 0, 'collective-permute': 0}


def test_collectives_of_a_scan_compiled_for_cpu():
    """8 CPU devices (conftest), 5 steps: every op counted once per step."""
    _assert_hand_count(jax.devices()[:8])


@pytest.mark.filterwarnings('ignore:Error reading persistent compilation cache entry')
@pytest.mark.parametrize('target_name', ['v5p-8', 'h100x8'])
def test_collectives_of_a_scan_compiled_ahead_of_time(target_name, monkeypatch):
    """The same bytes from libtpu (whose HLO has no ``known_trip_count``; it gathers by an
    all-reduce of the gathered array and combines the two all-reduces into one, so only the
    total is the same) and XLA:GPU (async start/done pairs); skipped where the target's
    compiler is not installed."""
    monkeypatch.setenv('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
    target = targets.get(target_name)
    if not targets.compiler_installed(target.platform):
        pytest.skip(f'the {target.platform} compiler is not installed')
    _assert_hand_count(targets.devices(target), by_kind=target.platform != 'tpu')


def test_work_of_hlo_text():
    """Matmul FLOPs of a dot in a 3-trip loop, of a convolution inside a fusion (libtpu's
    matmul form; counted through the fusion) and of a cuBLAS GEMM; bytes of the instructions of
    ENTRY and the loop body only (a fusion is what it reads and writes), structural ones none."""
    hlo_text = '\n'.join([
        'HloModule m, entry_computation_layout={(f32[4,8]{1,0})->f32[4,16]{1,0}}',
        '%body (p: (s32[], f32[4,8], f32[8,8])) -> (s32[], f32[4,8], f32[8,8]) {',
        '  %p = (s32[], f32[4,8]{1,0}, f32[8,8]{1,0}) parameter(0)',
        '  %x = f32[4,8]{1,0} get-tuple-element(%p), index=1',
        '  %w = f32[8,8]{1,0} get-tuple-element(%p), index=2',
        '  %d = f32[4,8]{1,0} dot(%x, %w), lhs_contracting_dims={1}, rhs_contracting_dims={0}',
        '  ROOT %t = (s32[], f32[4,8]{1,0}, f32[8,8]{1,0}) tuple(%i, %d, %w)',
        '}',
        '%fused (fp0: bf16[4,8], fp1: bf16[8,16]) -> bf16[4,16] {',
        '  %fp0 = bf16[4,8]{1,0} parameter(0)',
        '  %fp1 = bf16[8,16]{1,0} parameter(1)',
        '  ROOT %conv = bf16[4,16]{1,0} convolution(%fp0, %fp1), dim_labels=bf_io->bf',
        '}',
        'ENTRY %main (a: f32[4,8]) -> f32[4,16] {',
        '  %a = f32[4,8]{1,0} parameter(0)',
        '  %loop = (s32[], f32[4,8]{1,0}, f32[8,8]{1,0}) while(%init), condition=%cond, '
        'body=%body, backend_config={"known_trip_count":{"n":"3"}}',
        '  %ab = bf16[4,8]{1,0} convert(%a)',
        '  %f = bf16[4,16]{1,0} fusion(%ab, %k), kind=kOutput, calls=%fused',
        '  %k = bf16[8,16]{1,0} constant({...})',
        '  %g = (f32[4,16]{1,0}, s8[64]{0}) custom-call(%a, %m), '
        'custom_call_target="__cublas$gemm", backend_config={"gemm_backend_config":'
        '{"dot_dimension_numbers":{"lhs_contracting_dimensions":["1"],'
        '"rhs_contracting_dimensions":["0"]}}}',
        '  %m = f32[8,16]{1,0} constant({...})',
        '  ROOT %r = f32[4,16]{1,0} get-tuple-element(%g), index=0',
        '}'])
    counted = hlo.work(hlo_text)
    assert counted['flops'] == 3 * 2 * 4 * 8 * 8 + 2 * 4 * 16 * 8 + 2 * 4 * 16 * 8
    dot = 128 + 256 + 128  # x, w read, d written (f32)
    convert = 128 + 64
    fusion = 64 + 256 + 128  # its operands (bf16 [4,8] and [8,16]) and result, not inside
    gemm = 128 + 512 + (256 + 64)
    assert counted['bytes'] == 3 * dot + convert + fusion + gemm


@pytest.mark.filterwarnings('ignore:Error reading persistent compilation cache entry')
@pytest.mark.parametrize('target_name', ['cpu', 'v5p-8', 'h100x8'])
def test_matmul_flops_of_a_scan_compiled_for_each_target(target_name, monkeypatch):
    """5 steps of ``c = tanh(c @ w)``, ``c [256 n, 512]`` split over n devices, ``w [512,
    512]`` bf16: exactly 5 x 2 x 256 x 512 x 512 matmul FLOPs per device on every compiler
    (libtpu's ``cost_analysis`` says one step's); each step reads its operands and writes its
    result, so the bytes are at least 5 x (c + w + c) per device."""
    if target_name == 'cpu':
        devices = jax.devices()[:8]
    else:
        monkeypatch.setenv('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
        target = targets.get(target_name)
        if not targets.compiler_installed(target.platform):
            pytest.skip(f'the {target.platform} compiler is not installed')
        devices = targets.devices(target)
    mesh = Mesh(np.array(devices), ('d',))

    def scanned(c, w):
        return jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), c, None, length=5)[0]

    c = jax.ShapeDtypeStruct((256 * len(devices), 512), jnp.bfloat16,
                             sharding=NamedSharding(mesh, P('d')))
    w = jax.ShapeDtypeStruct((512, 512), jnp.bfloat16, sharding=NamedSharding(mesh, P()))
    counted = hlo.work(jax.jit(scanned).lower(c, w).compile().as_text())
    assert counted['flops'] == 5 * 2 * 256 * 512 * 512
    shard, weights = 256 * 512 * 2, 512 * 512 * 2
    assert 5 * (2 * shard + weights) <= counted['bytes'] <= 20 * 5 * (2 * shard + weights)
