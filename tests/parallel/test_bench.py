"""The sharding sweep (launch/bench_sharding.py, unigrpo_jax/parallel/bench.py) on 8 emulated CPU
devices: its rows, memory and collective numbers, failure rows, and the analytic counts."""

import csv
import dataclasses
import os
import subprocess
import sys

import pytest

from configs import bagel_grpo
from unigrpo_jax import perf
from unigrpo_jax.parallel import bench
from unigrpo_jax.rl.objective import objective_config

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
        assert tuple(reader.fieldnames) == bench.COLUMNS
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
    config = bench.model_config('tiny', cfg)
    w = bench.workload(cfg, objective_config(cfg), 8, 32, 32)
    assert float(row['model_flops']) == bench.train_step_flops(config, objective_config(cfg), w)


# --- the library's pure parts ------------------------------------------------------------------
def test_collectives_of_hlo_text():
    """Sizes from shapes (operands looked up by name), the larger side of each op, while bodies
    times their trip count, async -done halves not counted again."""
    hlo = '\n'.join([
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
    by_kind, ops = bench.collectives(hlo)
    assert by_kind == {'all-reduce': 32, 'all-gather': 3 * 256 + 256, 'reduce-scatter': 3 * 32,
                       'all-to-all': 64, 'collective-permute': 32 + 8}
    assert ops == 3 * 2 + 4


def test_meshes():
    assert bench.parse_meshes('8,1,1; 1,4,2;') == [(8, 1, 1), (1, 4, 2)]
    with pytest.raises(ValueError, match='expected 3 sizes'):
        bench.parse_meshes('4,2')
    assert bench.default_meshes(1) == [(1, 1, 1)]
    assert bench.default_meshes(8) == [(1, 1, 1), (8, 1, 1), (1, 8, 1), (1, 4, 2), (4, 1, 2)]


def test_train_step_flops_by_hand():
    """Tiny model, 2 chains, S = P = 4, T = 2, W = 1, 32x32 px = 64 latent tokens of 16."""
    cfg = bagel_grpo.get_config('tiny')
    config = bench.model_config('tiny', cfg)
    obj = objective_config(cfg)
    w = bench.Workload(batch=2, system_len=4, prompt_len=4, think_tokens=2, window=1,
                       image_size=(32, 32))
    assert w.context == 4 + 4 + 4 and w.latent_tokens(config) == 64
    p, hd = 36864, 4 * 16  # matmul params per expert layer; heads x head_dim

    def text(n, before):  # 2 layers; query i sees `before` + i rows
        return 2 * (2 * n * p + 4 * (n * before + n * (n + 1) // 2) * hd)

    ctx = text(4, 0) + text(4, 4) + text(4, 8)
    logits = 2 * 2 * 64 * 128
    image = 2 * (2 * 66 * p + 4 * 66 * (12 + 66) * hd) + 2 * 64 * 2 * 16 * 64 + 2 * (
        256 * 64 + 64 * 64)
    # unigrpo, velocity_mse: policy context, logits and image with gradients; the reference
    # context and image forward only.
    expected = 2 * (3 * (ctx + logits + image) + ctx + image)
    assert bench.train_step_flops(config, obj, w) == expected
    assert bench.train_step_tokens(config, w) == 2 * (12 + 66)
    assert perf.decode_step_flops(config.llm, 2, 12) == 2 * (text(1, 12) + 2 * 64 * 128)
    flow = dataclasses.replace(obj, mode='flowgrpo', regularizer='none',
                               image_grad_to_context=False)
    w_flow = bench.Workload(batch=2, system_len=0, prompt_len=4, think_tokens=0, window=1,
                            image_size=(32, 32))
    image_flow = image - 2 * 4 * 66 * 8 * hd  # the context is the 4 prompt rows, not 12
    assert bench.train_step_flops(config, flow, w_flow) == 2 * (3 * image_flow + text(4, 0))


def test_1b_proxy_size():
    llm = perf.bagel_1b_config().llm
    assert (llm.hidden_size, llm.num_hidden_layers, llm.head_dim) == (2048, 16, 128)
    matmuls = 2048 * 2048 * 2 + 2 * 2048 * 512 + 3 * 2048 * 5504
    layer = matmuls + 2048 + 2 * 512 + 2 * 128 + 2 * 2048  # biases, q/k norms, RMSNorms
    assert perf.decoder_param_count(llm) == 2 * 16 * layer + 2 * 32000 * 2048 + 2 * 2048
    assert round(perf.decoder_param_count(llm) / 1e9, 2) == 1.55
