"""Ahead-of-time compilation of programs for an accelerator that is not attached (``targets``),
with a memory report per program: does it fit?

A program is ``(name, fn, args)``: a ``jax.jit`` function and the abstract arguments it is
lowered with (pytrees of ``jax.ShapeDtypeStruct`` with ``NamedSharding``s over a mesh of
``targets.devices(target)``). Nothing is allocated; every program is compiled by the target's
own compiler (libtpu, XLA:GPU) on this machine's CPU.

Columns (``COLUMNS``; bytes are per device):

* ``status``: ``ok``; ``does not fit`` (compiled, but ``fraction > limit_fraction``);
  ``RESOURCE_EXHAUSTED`` (the TPU compiler refused it: over HBM); ``error: <type>: <line>``;
* ``compile_s``: ``lower`` + ``compile`` wall time;
* ``mem_argument``, ``mem_output``, ``mem_alias``, ``mem_temp``, ``mem_peak``: the compiler's
  memory analysis (``hlo.memory``; peak = argument + output - alias + temp);
* ``mem_resident``: bytes of the arrays the run keeps alive beside the program (the
  program's ``resident`` tree); ``mem_total`` = ``mem_peak`` + ``mem_resident``;
* ``mem_required``: RESOURCE_EXHAUSTED rows only, the bytes the compiler's message says the
  program needs (2-3 significant digits, GiB = 2^30 B as it prints them);
* ``device_memory``: the target's bytes per device (``targets``' table says where they come
  from); ``fraction``: ``mem_total`` (else ``mem_required`` + resident) / ``device_memory``;
* ``limit_fraction`` and ``fits``: compiled and ``fraction <= limit_fraction``. The margin is
  for what the analysis does not see (the runtime's own buffers, fragmentation); the GPU
  compiler never fails over memory, so this is its only check;
* ``coll_*``: bytes of collectives per call in the compiled HLO (``hlo.collectives``'
  conventions, in ``sweep``'s module docstring);
* ``hlo_flops``, ``hlo_bytes``: matmul FLOPs and memory traffic per device and call in the
  compiled HLO, every loop trip counted (``hlo.work``); ``est_s``: their roofline time at the
  target's published peaks, ``max(hlo_flops / peak_flops, hlo_bytes / bandwidth)`` (a lower
  bound: elementwise work and collectives left out, f32 matmuls counted at the bf16 rate);
  ``analytic_s``: the analytic estimate of the same call where the caller gives one
  (``bench.rl_programs.program_estimates``);
* ``error``: RESOURCE_EXHAUSTED rows, the first line of the compiler's message;
* ``compiler_options``: the XLA options the program compiled with, empty for the defaults.
  Without a device XLA:GPU cannot tile some Triton GEMM fusions (``Couldn't find output tile
  sizes``, e.g. the 7B train step at ``micro_batch_per_device`` >= 2); such a program is
  compiled again with ``CUBLAS_GEMMS`` (its dots by cuBLAS). On the 2-layer train step at one
  chain per micro-step the peak moves by 0.02 GiB of 31 (docs/performance.md).
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import jax

from unigrpo_jax.bench import report, targets
from unigrpo_jax.bench.hlo import KINDS, collectives, memory, work
from unigrpo_jax.errors import ConfigError

# A call to compile ahead of time: (name, jitted fn, abstract args[, resident]). ``resident``
# (optional) is a pytree of the abstract arrays the run keeps alive on the devices while the
# program runs that are not its arguments (e.g. the train state during the rollout); they
# count against the device memory.
AbstractCall = tuple

COLUMNS = ('target', 'program', 'devices', 'status', 'compile_s', 'mem_argument', 'mem_output',
           'mem_alias', 'mem_temp', 'mem_peak', 'mem_resident', 'mem_total', 'mem_required',
           'device_memory', 'fraction',
           'limit_fraction', 'fits', 'coll_bytes',
           *(f'coll_{k.replace("-", "_")}' for k in KINDS), 'coll_ops', 'hlo_flops',
           'hlo_bytes', 'est_s', 'analytic_s', 'error', 'compiler_options')
# XLA:GPU's retry for GEMM fusions it cannot tile without a device (the module docstring).
CUBLAS_GEMMS = {'xla_gpu_enable_triton_gemm': False}
_UNTILED = "Couldn't find output tile sizes"

_SIZE = r'(\d+(?:\.\d+)?)([KMGT]?)B?'
# The two forms of libtpu 0.0.42's out-of-memory message.
_TEMPORARIES = re.compile(rf'memory required for HLO temporaries \({_SIZE}\) exceeds')
_USED = re.compile(rf'Used {_SIZE} of {_SIZE} hbm\. Exceeded hbm capacity by {_SIZE}')


def _bytes(number: str, unit: str) -> int:
    """``('95.74', 'G')`` -> bytes (K/M/G/T are powers of 2^10, as the TPU compiler prints)."""
    return round(float(number) * 1024 ** ' KMGT'.index(unit or ' '))


def required_bytes(message: str) -> int | None:
    """Bytes per device a TPU RESOURCE_EXHAUSTED message says the program needs, or None:
    ``... required for HLO temporaries (223.52G) exceeds available HBM (95.74G)`` -> 223.52 GiB;
    ``Used 15.75G of 15.75G hbm. Exceeded hbm capacity by 1.0K`` -> 15.75 GiB + 1 KiB."""
    if match := _TEMPORARIES.search(message):
        return _bytes(*match.groups())
    if match := _USED.search(message):
        g = match.groups()
        return _bytes(g[2], g[3]) + _bytes(g[4], g[5])
    return None


def _first_line(e: Exception) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return ' '.join((lines[0] if lines else '').split())[:300]


def resident_bytes(tree) -> int:
    """Bytes per device of abstract arrays with shardings (the largest shard of each)."""
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
               for x in jax.tree.leaves(tree))


def compile_program(program: AbstractCall, target: targets.Target,
                    limit_fraction: float = 0.9) -> dict[str, Any]:
    """Compiles ``program`` for ``target``; its row (``COLUMNS``). A failure is the row's
    ``status``, never an exception."""
    name, fn, args, *rest = program
    row: dict[str, Any] = dict(target=target.name, program=name, devices=target.num_devices,
                               device_memory=target.device_memory,
                               limit_fraction=limit_fraction, fits=False,
                               mem_resident=resident_bytes(rest[0] if rest else ()))
    start = time.perf_counter()
    try:
        try:
            compiled = fn.lower(*args).compile()
        except Exception as e:  # pylint: disable=broad-except
            if target.platform != 'cuda' or _UNTILED not in str(e):
                raise
            row['compiler_options'] = ' '.join(f'{k}={v}' for k, v in CUBLAS_GEMMS.items())
            compiled = fn.lower(*args).compile(compiler_options=CUBLAS_GEMMS)
    except Exception as e:  # pylint: disable=broad-except
        row['compile_s'] = time.perf_counter() - start
        line = _first_line(e)
        if 'RESOURCE_EXHAUSTED' in line:
            row.update(status='RESOURCE_EXHAUSTED', error=line,
                       mem_required=required_bytes(str(e)))
            if row['mem_required'] is not None:
                row['fraction'] = ((row['mem_required'] + row['mem_resident'])
                                   / target.device_memory)
        else:
            row['status'] = f'error: {type(e).__name__}: {line}'
            traceback.print_exception(e, file=sys.stderr)
        return {c: row.get(c) for c in COLUMNS}
    row['compile_s'] = time.perf_counter() - start
    row.update(memory(compiled))
    text = compiled.as_text()
    coll, ops = collectives(text)
    row.update({f'coll_{k.replace("-", "_")}': v for k, v in coll.items()},
               coll_bytes=sum(coll.values()), coll_ops=ops)
    counted = work(text)
    row.update(hlo_flops=counted['flops'], hlo_bytes=counted['bytes'],
               est_s=max(counted['flops'] / target.peak_flops,
                         counted['bytes'] / target.bandwidth))
    if 'mem_peak' not in row:
        row['status'] = 'error: the compiler reported no memory analysis'
    else:
        row['mem_total'] = row['mem_peak'] + row['mem_resident']
        row['fraction'] = row['mem_total'] / target.device_memory
        row['fits'] = row['fraction'] <= limit_fraction
        row['status'] = 'ok' if row['fits'] else 'does not fit'
    return {c: row.get(c) for c in COLUMNS}


def compile_programs(programs: Sequence[AbstractCall], target: targets.Target,
                     limit_fraction: float = 0.9) -> list[dict[str, Any]]:
    """One row (``COLUMNS``) per program, compiled for ``target`` in order; prints progress
    (a 7B train step takes minutes)."""
    rows = []
    for i, program in enumerate(programs, 1):
        tag = f'[{i}/{len(programs)}] {program[0]}'
        print(f'{tag}: compiling for {target.name} ({target.num_devices} devices)...',
              flush=True)
        row = compile_program(program, target, limit_fraction)
        print(f'{tag}: done in {row["compile_s"]:.1f} s: {_summary(row)}', flush=True)
        rows.append(row)
    return rows


def _gib(v) -> str:
    return '' if v is None else f'{v / 2**30:.4g}'


def _summary(row: dict) -> str:
    if row['fraction'] is None:
        return row['status']
    used = (f'peak {_gib(row["mem_peak"])} + resident {_gib(row["mem_resident"])}'
            if row['mem_peak'] is not None
            else f'the compiler says it needs {_gib(row["mem_required"])}')
    return (f'{row["status"]}, {used} GiB per device = {row["fraction"]:.2f} of '
            f'{_gib(row["device_memory"])} GiB (limit {row["limit_fraction"]:.2f})')


def markdown(rows: Sequence[dict]) -> str:
    """The rows as a markdown table, bytes per device (GiB = 2^30 B, GB = 10^9 B);
    RESOURCE_EXHAUSTED rows show the requirement the compiler states as their peak (``~``)."""
    head = ('| target | program | status | compile s | argument GiB | output GiB | alias GiB | '
            'temp GiB | peak GiB | resident GiB | device GiB | (peak + resident) / device | '
            'fits | collectives GB | matmul TFLOP | HBM GB | est. s (HLO) | analytic s |')
    lines = [head, '|' + '---|' * head.count(' |')]
    for r in rows:
        peak = r['mem_peak'] if r['mem_peak'] is not None else r['mem_required']
        lines.append('| ' + ' | '.join([
            r['target'], r['program'],
            r['status'].replace('|', '/') + (f' ({r["compiler_options"]})'
                                             if r.get('compiler_options') else ''),
            '' if r['compile_s'] is None else f'{r["compile_s"]:.1f}',
            *(_gib(r[k]) for k in ('mem_argument', 'mem_output', 'mem_alias', 'mem_temp')),
            ('~' if r['mem_peak'] is None and peak is not None else '') + _gib(peak),
            _gib(r['mem_resident']), _gib(r['device_memory']), '' if r['fraction'] is None else f'{r["fraction"]:.2f}',
            'yes' if r['fits'] else 'no',
            *('' if r[k] is None else f'{r[k] / scale:.3g}' for k, scale in (
                ('coll_bytes', 1e9), ('hlo_flops', 1e12), ('hlo_bytes', 1e9), ('est_s', 1),
                ('analytic_s', 1)))]) + ' |')
    return '\n'.join(lines) + '\n'


def write_outputs(rows: Sequence[dict], out_dir: str) -> list[str]:
    """``compile_check.csv`` and ``compile_check.md`` in ``out_dir``; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    csv_path, md_path = (os.path.join(out_dir, f'compile_check.{ext}') for ext in ('csv', 'md'))
    report.write_csv(rows, csv_path, COLUMNS)
    with open(md_path, 'w') as f:
        f.write(markdown(rows))
    return [csv_path, md_path]


def select(programs: Sequence[AbstractCall],
           names: Sequence[str] | None) -> list[AbstractCall]:
    """The programs called ``names`` (all if None), in ``programs``' order; a ConfigError if
    that is none or names one that is not there."""
    known = [program[0] for program in programs]
    chosen = known if names is None else list(names)
    if not chosen or set(chosen) - set(known):
        raise ConfigError(f'programs {chosen}: expected a non-empty selection of {known}')
    return [p for p in programs if p[0] in chosen]


def check(config, target_name: str, out_dir: str, names: Sequence[str] | None = None,
          limit_fraction: float = 0.9,
          build_programs: Callable[[Any, list], Sequence[AbstractCall]] | None = None,
          num_slices: int = 1,
          estimates: Callable[[Any, targets.Target], dict[str, float]] | None = None,
          ) -> tuple[list[dict], bool]:
    """Compiles ``config``'s programs (``build_programs(config, devices)``, by default
    ``bench.rl_programs.rl_programs``; only ``names`` if given) for the target called
    ``target_name`` (``num_slices`` of it: ``targets.parse``), prints the table and writes it
    to ``out_dir``. ``estimates(config, target)``: analytic seconds per call of programs by
    name (the ``analytic_s`` column). Returns ``(rows, ok)``: ``ok`` when every program
    compiled and fits."""
    target = targets.get(target_name, num_slices)
    devices = targets.devices(target)
    if build_programs is None:
        from unigrpo_jax.bench.rl_programs import rl_programs  # here: the model loads only for it
        build_programs = rl_programs
    programs = select(build_programs(config, devices), names)
    rows = compile_programs(programs, target, limit_fraction)
    analytic = estimates(config, target) if estimates is not None else {}
    for row in rows:
        row['analytic_s'] = analytic.get(row['program'])
    print(markdown(rows), end='')
    for path in write_outputs(rows, out_dir):
        print('wrote', path)
    return rows, all(r['fits'] for r in rows)
