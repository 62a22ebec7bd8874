"""What the first accelerator a run gets does with this code, in one command
(``launch/device_check.py``): minutes, one device, no downloads.

==============  ===============================================================================
``peak``        the device's dense bf16 FLOP/s and HBM bytes/s: ``perf.PEAKS`` by device kind
                (``bench.targets``' published numbers); a kind not there (a CPU) is measured:
                one large matmul (float32 2048^3 on a CPU, bf16 8192^3 elsewhere) and one large
                read (``perf.matmul_flops_per_second``, ``perf.read_bytes_per_second``)
``parity``      the reference fixture's cases (``bench.parity``, what ``launch/check_fixture.py``
                runs) on the device in float32 at the highest matmul precision
``attention``   an image block's attention over the cache at the model's head widths in bf16:
                the fused kernel ``model.attention='flash'`` runs there (``attention.kernel_for``:
                cuDNN on GPUs, Pallas on TPU, ``jax.nn.dot_product_attention``'s XLA path
                elsewhere) against the XLA einsum path: max abs difference, time ratio
``programs``    ``bench.programs``' ``decode`` (one think-token step of ``chains`` chains),
                ``denoise`` (one image-block forward of ``chains`` images) and ``train`` (the RL
                train step on ``train_chains`` chains) at the model's widths with ``layers``
                layers: step time; ``fraction``: the decode step's bytes
                (``perf.decode_step_bytes``) / time / peak bandwidth, the others' model FLOPs
                (``perf.block_forward_flops``, ``programs.train_step_flops``) / time / peak
                FLOP/s (MFU); memory predicted by the compiler and measured on the device
==============  ===============================================================================

Shapes: Bagel-7B's widths (``perf.bagel_7b_config``: bf16, no ViT) with ``layers`` layers and
``configs/bagel_grpo.py``'s rollout (think tokens, image size, SDE window), or, ``tiny``,
``configs/bagel_grpo.py:tiny``'s random model and rollout: the same code at CPU scale. Decode
and denoise read params in the compute dtype, as the rollout's copy does (which keeps
``bagel.FLOAT32_MODULES``, ``lm_head`` among them, float32: here they are in the compute dtype
too); caches are float32 as ``kv_cache.init_cache`` makes them. Few layers leave the embedding,
``lm_head`` and their optimizer update a larger share of a step than in the 28-layer model.

Memory per program (bytes): ``predicted`` = ``compiled.memory_analysis()``'s argument + output
- alias + temp (``hlo.memory``); ``measured`` = the arguments + the rise of the device's
``peak_bytes_in_use`` during the program's first call, its live memory first filled up to the
previous peak (so the rise is the call's own temporaries and outputs, whatever ran before);
None where the backend keeps no such statistics (a CPU). Programs run in the order of their
predicted peak; one predicted over the device's ``bytes_limit`` is not run ('does not fit').
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from unigrpo_jax import config_files
from unigrpo_jax.bench import hlo, parity, perf, programs, sweep
from unigrpo_jax.bench.rl_programs import SYSTEM_TOKENS_BOUND
from unigrpo_jax.model import attention
from unigrpo_jax.model.config import BagelConfig
from unigrpo_jax.parallel import mesh as mesh_lib
from unigrpo_jax.train import settings
from unigrpo_jax.train.optimizer import make_optimizer

CONFIG = os.path.join(config_files.CONFIGS, 'bagel_grpo.py')
FIXTURE = os.path.join(config_files.ROOT, 'tests', 'fixtures', 'bagel_tiny')
PROGRAMS = ('decode', 'denoise', 'train')
_FILL_CHUNK = 256 * 2**20  # bytes per array that fills the live memory up to the peak


# --- peak ---------------------------------------------------------------------------------------
def device_peak(device: jax.Device) -> tuple[perf.Peak, str]:
    """``(peak, source)``: ``perf.PEAKS``' numbers for the device's kind ('table'), else one
    large matmul's rate and one large read's rate measured on it ('measured': float32 2048^3 on
    a CPU, as ``launch/bench_rl_step.py`` measures, bf16 8192^3 on an accelerator)."""
    peak = perf.peak_for(device.device_kind)
    if peak is not None:
        return peak, 'table'
    dtype, size = ((jnp.float32, 2048) if device.platform == 'cpu' else (jnp.bfloat16, 8192))
    with jax.default_device(device):
        flops = perf.matmul_flops_per_second(dtype, size)
        bandwidth = perf.read_bytes_per_second()
    name = f'{device.device_kind} (measured: {jnp.dtype(dtype).name} {size}^3 matmul, read)'
    return perf.Peak(name, bandwidth, flops), 'measured'


# --- parity -------------------------------------------------------------------------------------
def _check_cases(cases: Sequence[str] | None) -> None:
    unknown = sorted(set(cases or ()) - set(parity.CASES))
    if unknown:
        raise ValueError(f'parity cases {unknown}: expected some of {list(parity.CASES)}')


def check_parity(fixture_dir: str, cases: Sequence[str] | None = None) -> dict:
    """The fixture's ``cases`` (default: every case of ``parity.CASES`` it holds) on the default
    device in float32 at the highest matmul precision (``launch/check_fixture.py``'s checks).

    Returns ``{'fixture', 'cases', 'checks', 'failed', 'failures', 'worst', 'seconds'}``:
    ``worst`` is the float comparison (``parity.close``) of largest error / tolerance (its
    ``case``, ``name``, ``error``, ``tolerance``); the integer and uint8-image comparisons
    count in ``checks`` and ``failed``; ``failures`` names every failed comparison."""
    _check_cases(cases)
    start = time.perf_counter()
    with jax.default_matmul_precision('highest'):
        fixture = parity.load_fixture(fixture_dir)
        present = {k.split('.', 1)[0] for k in fixture.cases}
        names = [n for n in (cases or parity.CASES) if n in present]
        if not names:
            raise ValueError(f'fixture {fixture_dir} holds none of the cases '
                             f'{list(cases or parity.CASES)}; it holds {sorted(present)}')
        checks = [c for name in names for c in parity.CASES[name](fixture)]
    worst = max((c for c in checks if c.kind == 'close'), key=lambda c: c.error / c.tolerance)
    return dict(fixture=os.path.abspath(fixture_dir), cases=names, checks=len(checks),
                failed=sum(not c.passed for c in checks),
                failures=[f'{c.case}/{c.name}' for c in checks if not c.passed],
                worst=dict(case=worst.case, name=worst.name, error=worst.error,
                           tolerance=worst.tolerance),
                seconds=time.perf_counter() - start)


# --- attention ----------------------------------------------------------------------------------
def check_attention(config: BagelConfig, batch: int, block: int, context: int, repeats: int,
                    key: jax.Array) -> dict:
    """The fused attention kernel against the XLA path on one image block in bf16.

    Queries ``[batch, block, heads, head_dim]`` and the block's keys and values ``[batch, block,
    kv_heads, head_dim]`` (bf16, normal) over a float32 cache ``[batch, context, kv_heads,
    head_dim]`` whose rows are all valid: ``attention.joint_attention`` with the kernel of
    ``kernel_for('flash', platform, 'bfloat16')`` and with ``'xla'``, each jitted. Returns
    ``{'kernel', 'shape', 'max_abs_diff', 'max_abs'}`` (float32 of the outputs; ``max_abs``:
    the XLA output's scale) and the median seconds ``xla_s``, ``fused_s`` and ``speedup`` =
    xla_s / fused_s."""
    llm = config.llm
    kernel = attention.kernel_for('flash', jax.devices()[0].platform, 'bfloat16')
    kq, kk, kv, kck, kcv = jax.random.split(key, 5)
    q = jax.random.normal(kq, (batch, block, llm.num_attention_heads, llm.head_dim), jnp.bfloat16)
    new = (batch, block, llm.num_key_value_heads, llm.head_dim)
    cached = (batch, context, llm.num_key_value_heads, llm.head_dim)
    k, v = (jax.random.normal(x, new, jnp.bfloat16) for x in (kk, kv))
    cache_k, cache_v = (jax.random.normal(x, cached, jnp.float32) for x in (kck, kcv))
    lengths = jnp.full((batch,), context, jnp.int32)
    args = (q, k, v, cache_k, cache_v, lengths)

    def fn(impl):
        return jax.jit(lambda q, k, v, ck, cv, n: attention.joint_attention(
            q, k, v, None, ck, cv, n, impl=impl))

    outputs, seconds = {}, {}
    for impl in ('xla', kernel):
        call = fn(impl)
        outputs[impl] = jax.block_until_ready(call(*args)).astype(jnp.float32)
        seconds[impl] = perf.median_seconds(lambda c=call: c(*args), repeats)
    return dict(kernel=kernel, shape=dict(batch=batch, block=block, context=context,
                                          heads=llm.num_attention_heads,
                                          kv_heads=llm.num_key_value_heads,
                                          head_dim=llm.head_dim),
                max_abs_diff=float(jnp.max(jnp.abs(outputs[kernel] - outputs['xla']))),
                max_abs=float(jnp.max(jnp.abs(outputs['xla']))), xla_s=seconds['xla'],
                fused_s=seconds[kernel], speedup=seconds['xla'] / seconds[kernel])


# --- programs -----------------------------------------------------------------------------------
def model_config(cfg, tiny: bool, layers: int) -> BagelConfig:
    """The measured model: ``programs.model_config('7b')`` (Bagel-7B's widths) or, ``tiny``,
    the config's random model, with ``layers`` LLM layers and the attention kernel
    ``cfg.model.attention`` runs on this platform."""
    config = programs.model_config('tiny' if tiny else '7b', cfg)
    return config.replace(
        llm=dataclasses.replace(config.llm, num_hidden_layers=layers),
        attention=attention.kernel_for(cfg.model.attention, jax.devices()[0].platform,
                                       config.dtype))


def memory_stats(device: jax.Device) -> dict | None:
    """The device's allocator statistics, or None where the backend keeps no peak (a CPU)."""
    stats = device.memory_stats()
    return stats if stats and 'peak_bytes_in_use' in stats else None


def _fill_to_peak(device) -> list[jax.Array]:
    """Arrays that bring the device's live bytes up to its ``peak_bytes_in_use``: a call's rise
    of the peak is then its own allocations."""
    stats = memory_stats(device)
    gap = stats['peak_bytes_in_use'] - stats['bytes_in_use']
    chunks = []
    while gap > 0:
        chunks.append(jnp.zeros((min(gap, _FILL_CHUNK),), jnp.uint8))
        gap -= chunks[-1].nbytes
    return jax.block_until_ready(chunks)


def _first_call(compiled, program: programs.Program, device, extra: int,
                limit: float | None) -> tuple[tuple, int | None, str]:
    """Runs ``program`` once on new inputs: ``(the inputs of a next call, the rise of the
    device's peak bytes during the call or None, why it is None)``. ``extra``: the bytes the
    call is predicted to add to its arguments; the live memory is filled up to the peak only
    where that leaves room for them under ``limit``."""
    args = jax.block_until_ready(program.concrete())
    fill, why = None, 'no device statistics'
    stats = memory_stats(device)
    if stats is not None:
        if limit is not None and stats['peak_bytes_in_use'] + extra > limit:
            why = 'the previous peak plus this call would not fit the device'
        else:
            try:
                fill = _fill_to_peak(device)
            except Exception as e:  # pylint: disable=broad-except  (the call runs, unmeasured)
                why = 'could not fill the live memory up to the peak: ' + sweep.error_status(e)[1]
    high = None if fill is None else memory_stats(device)['peak_bytes_in_use']
    out = jax.block_until_ready(compiled(*args))
    rise = None if fill is None else memory_stats(device)['peak_bytes_in_use'] - high
    del fill
    why = '' if rise is not None else why
    return ((out[0], *args[1:]) if program.threaded else args), rise, why


def run_programs(named: dict[str, programs.Program], repeats: int) -> dict[str, dict]:
    """Compiles every program, then runs them on the first device in the order of their
    predicted peak memory (the module docstring's memory convention).

    Returns per name ``{'status', 'compile_s', 'memory': {'predicted', 'measured', 'argument',
    'output', 'alias', 'temp'}}`` and, when it ran, ``step_s`` (median of ``repeats`` calls after
    a warm-up). ``status``: 'ok', 'does not fit' (predicted over the device's ``bytes_limit``,
    or out of memory), or 'error' with ``error``."""
    device = jax.devices()[0]
    limit = sweep.device_memory_limit()
    rows, compiled = {}, {}
    for name, program in named.items():
        start = time.perf_counter()
        try:
            compiled[name] = program.fn.lower(*program.abstract).compile()
        except Exception as e:  # pylint: disable=broad-except  (a row, not the check's end)
            rows[name] = dict(zip(('status', 'error'), sweep.error_status(e)))
            continue
        mem = hlo.memory(compiled[name])
        rows[name] = dict(status='compiled', compile_s=time.perf_counter() - start,
                          memory=dict(predicted=mem.get('mem_peak'), measured=None,
                                      **{k: mem.get(f'mem_{k}') for k in
                                         ('argument', 'output', 'alias', 'temp')}))
    for name in sorted(compiled, key=lambda n: rows[n]['memory']['predicted'] or 0):
        row, program = rows[name], named[name]
        if limit is not None and (row['memory']['predicted'] or 0) > limit:
            row.update(status='does not fit', error=f'predicted peak '
                       f'{row["memory"]["predicted"] / 2**30:.3g} GiB > the device\'s '
                       f'{limit / 2**30:.3g} GiB')
            continue
        try:
            m = row['memory']
            extra = (m['predicted'] or 0) - (m['argument'] or 0)
            args, rise, why = _first_call(compiled[name], program, device, extra, limit)
            if rise is not None:
                m['measured'] = m['argument'] + rise
            else:
                m['unmeasured'] = why
            row.update(status='ok', step_s=sweep.step_seconds(compiled[name], program, repeats,
                                                              args))
            del args
        except Exception as e:  # pylint: disable=broad-except
            row['status'], row['error'] = sweep.error_status(e)
    return rows


# --- the whole check ------------------------------------------------------------------------------
def _section(fn, *args) -> dict:
    """``fn(*args)``, or ``{'status': 'error', 'error': ...}`` if it raised: one failing
    section does not lose the others' numbers."""
    try:
        return dict(status='ok', **fn(*args))
    except Exception as e:  # pylint: disable=broad-except
        return dict(status='error', error=sweep.error_status(e)[1])


def device_check(tiny: bool, layers: int = 2, chains: int | None = None, train_chains: int = 1,
                 repeats: int = 5, fixture: str = FIXTURE,
                 parity_cases: Sequence[str] | None = None, seed: int = 0) -> dict:
    """Every section of the module docstring on the first device; a JSON-ready dict.

    ``tiny``: ``configs/bagel_grpo.py:tiny``'s model and rollout, else Bagel-7B's widths with
    ``configs/bagel_grpo.py``'s rollout; ``layers`` LLM layers; ``chains`` per decode and
    denoise call (default: the config's group size); ``train_chains`` per train step;
    ``repeats`` timed calls per measurement; ``parity_cases`` (default: all) of the fixture
    directory ``fixture``. A section that raises is ``{'status': 'error', 'error'}``, a
    program that fails a row with its status; the others are still measured."""
    for name, value in (('layers', layers), ('train_chains', train_chains),
                        ('repeats', repeats), ('chains', 1 if chains is None else chains)):
        if value < 1:
            raise ValueError(f'{name}={value}; expected at least 1')
    _check_cases(parity_cases)
    start = time.perf_counter()
    device = jax.devices()[0]
    cfg = config_files.load(CONFIG, 'tiny' if tiny else None)
    rc = settings.rollout_config(cfg)
    obj = settings.objective_config(cfg, rc.schedule)
    config = model_config(cfg, tiny, layers)
    chains = rc.group_size if chains is None else chains
    system_len = SYSTEM_TOKENS_BOUND if rc.think and cfg.system_prompt else 0
    w = programs.workload(rc, obj, chains, system_len, cfg.data.max_prompt_tokens)
    keys = jax.random.split(jax.random.key(seed), 4)
    peak, source = device_peak(device)

    result = dict(
        device=dict(kind=device.device_kind, platform=device.platform,
                    devices=jax.device_count(), jax=jax.__version__,
                    peak=dict(name=peak.name, source=source, bf16_flops=peak.bf16_flops,
                              bandwidth=peak.bandwidth)),
        shapes=dict(tiny=tiny, layers=layers, hidden=config.llm.hidden_size,
                    intermediate=config.llm.intermediate_size,
                    heads=config.llm.num_attention_heads,
                    kv_heads=config.llm.num_key_value_heads, vocab=config.llm.vocab_size,
                    dtype=config.dtype, attention=config.attention, chains=chains,
                    train_chains=train_chains, system_len=w.system_len,
                    prompt_len=w.prompt_len, think_tokens=w.think_tokens,
                    image_size=list(w.image_size), latent_tokens=w.latent_tokens(config),
                    image_blocks=w.image_blocks, context=w.context))
    result['parity'] = _section(check_parity, fixture, parity_cases)

    mesh = mesh_lib.make_mesh((1, 1, 1), [device])
    rules = settings.strategy_rules(cfg.parallelism)[0]
    dtype = jnp.dtype(config.dtype)
    optimizer = make_optimizer(cfg.optimizer, settings.total_updates(cfg))
    named = dict(
        decode=programs.decode_program(config, mesh, rules, w, keys[0], param_dtype=dtype),
        denoise=programs.denoise_program(config, mesh, rules, w, keys[1], param_dtype=dtype),
        train=programs.train_program(config, rc, obj, optimizer, mesh, rules,
                                     dataclasses.replace(w, batch=train_chains), keys[2]))
    rows = run_programs(named, repeats)
    for name, row in rows.items():
        if row['status'] != 'ok':
            continue
        if name == 'decode':
            cache = named[name].abstract[0]
            row['bytes'] = perf.decode_step_bytes(config.llm, chains, w.text_context,
                                                  dtype.itemsize, cache.k.dtype.itemsize)
            row['fraction'] = row['bytes'] / row['step_s'] / peak.bandwidth
        else:
            row['flops'] = named[name].flops
            row['fraction'] = row['flops'] / row['step_s'] / peak.bf16_flops
    result['programs'] = rows
    result['attention'] = _section(check_attention, config, 1, w.latent_tokens(config) + 2,
                                   w.context, repeats, keys[3])
    result['seconds'] = time.perf_counter() - start
    return result


# --- outputs ------------------------------------------------------------------------------------
def write_json(result: dict, path: str) -> str:
    """Writes ``result`` to ``path`` (its directory made), returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(result, f, indent=1)
    return path


def _si(x: float, unit: str) -> str:
    """``3.2e-4, 'GB'``-style numbers as ``'320 kB'``: 4 significant digits, SI prefixes."""
    for factor, prefix in ((1e15, 'P'), (1e12, 'T'), (1e9, 'G'), (1e6, 'M'), (1e3, 'k')):
        if abs(x) >= factor:
            return f'{x / factor:.4g} {prefix}{unit}'
    return f'{x:.4g} {unit}'


def _binary(n: float | None) -> str:
    """Bytes in GiB / MiB / KiB (2^30, 2^20, 2^10), 'n/a' for None."""
    if n is None:
        return 'n/a'
    for factor, unit in ((2**30, 'GiB'), (2**20, 'MiB'), (2**10, 'KiB')):
        if abs(n) >= factor:
            return f'{n / factor:.4g} {unit}'
    return f'{n:.0f} B'


def markdown(result: dict) -> str:
    """The check as markdown table rows for docs/performance.md, each naming the device kind
    and the shapes."""
    d, s = result['device'], result['shapes']
    kind = f'`{d["kind"]}`'
    shapes = (f'tiny (bagel_grpo.py:tiny), {s["layers"]} layers' if s['tiny'] else
              f'7B widths, {s["layers"]} layers')
    lines = ['| device | shapes | measurement | value | notes |', '|---|---|---|---|---|']

    def row(what, value, note):
        lines.append(f'| {kind} | {shapes} | {what} | {value} | {note} |')

    peak = d['peak']
    row('peak', f'{_si(peak["bf16_flops"], "FLOP/s")}, {_si(peak["bandwidth"], "B/s")}',
        peak['name'] if peak['source'] == 'table' else f'{peak["name"]}, not a bf16 peak')
    p = result['parity']
    if p['status'] != 'ok':
        row('fixture parity, float32', 'error', p['error'])
    else:
        w = p['worst']
        row('fixture parity, float32',
            f'max error {w["error"]:.2e} (tolerance {w["tolerance"]:.1e})',
            f'{p["checks"]} comparisons in {len(p["cases"])} cases, {p["failed"]} failed; '
            f'worst float comparison {w["case"]}/{w["name"]}')
    a = result['attention']
    if a['status'] != 'ok':
        row('attention, fused vs `xla`, bf16', 'error', a['error'])
    else:
        sh = a['shape']
        row(f'attention `{a["kernel"]}` vs `xla`, bf16',
            f'max abs diff {a["max_abs_diff"]:.2e}; xla / {a["kernel"]} time '
            f'{a["speedup"]:.3g}',
            f'{sh["block"]} queries over {sh["context"]} cached rows + the block, '
            f'{sh["heads"]}/{sh["kv_heads"]} heads of {sh["head_dim"]}, outputs up to '
            f'{a["max_abs"]:.3g}; {1e3 * a["xla_s"]:.4g} vs {1e3 * a["fused_s"]:.4g} ms')
    what = dict(decode=f'decode step, {s["chains"]} chains: of peak bandwidth',
                denoise=f'denoise step, {s["chains"]} images: MFU',
                train=f'train step, {s["train_chains"]} chain(s): MFU')
    for name, r in result['programs'].items():
        if r['status'] != 'ok':
            row(what[name], r['status'], r.get('error', ''))
            continue
        work = _si(r['bytes'], 'B') if 'bytes' in r else _si(r['flops'], 'FLOP')
        row(what[name], f'{r["fraction"]:.3g}', f'{1e3 * r["step_s"]:.4g} ms for {work}')
    for name, r in result['programs'].items():
        m = r.get('memory')
        if m is None:
            continue
        note = f'arguments {_binary(m["argument"])}, temporaries {_binary(m["temp"])}'
        if m['measured'] is not None and m['predicted']:
            note += f'; measured / predicted {m["measured"] / m["predicted"]:.3g}'
        elif m.get('unmeasured'):
            note += f'; not measured: {m["unmeasured"]}'
        row(f'memory, {name}', f'predicted {_binary(m["predicted"])}, measured '
            f'{_binary(m["measured"])}', note)
    return '\n'.join(lines)
