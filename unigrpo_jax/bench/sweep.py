"""A sweep of sharding strategies x model sizes x meshes over the three hot programs.

Programs (one row each per strategy, size and mesh; built by ``programs``):

* ``train``: the UniGRPO train step (``train.step.make_train_step``) on one minibatch of
  ``batch`` chains;
* ``decode``: one think-token ``context.decode_step`` of ``batch`` chains whose caches hold the
  system and prompt segments (room for the think segment);
* ``denoise``: one ``context.image_velocities`` call with W = 1: ``batch`` images' block over the
  cache left by thinking.

Params are placed by the strategy's rule table (``sharding.param_shardings``; float32 as the train
state holds them, the train step's reference in bfloat16; decode and denoise keep the params they
do not read, e.g. the other expert, as inputs: they are resident during a rollout); batches and
KV caches (float32) are split along the chain axis over the data-parallel axes, and the caches'
kv-head axis like the params'.
Every program is compiled ahead of time from ``jax.ShapeDtypeStruct``s, so nothing of a size is
allocated unless its row runs (``executable``).

Columns and their conventions (``report.COLUMNS``):

* ``compile_s``: ``lower`` + ``compile`` wall time;
* ``step_s``: median of ``repeats`` calls after a warm-up call (executed rows only);
* ``throughput``: tokens/s (train: every token of the policy forward, context and image blocks;
  decode: one per chain) or images/s (denoise: one step of ``batch`` images);
* ``model_flops``: analytic matmul FLOPs per call (``unigrpo_jax.bench.perf``). Train: 3x the
  forward of what gets gradients (forward + backward) plus 1x the forward of any policy part
  without gradients (``programs.train_step_flops``; the frozen reference's outputs come with the
  batch): MaxText's model FLOPs, rematerialisation not counted;
* ``mfu``: model FLOPs / step_s / (devices x peak dense bf16 FLOP/s of ``perf.PEAKS``);
  MaxText's definition, empty when the peak is unknown (CPU);
* ``mem_*``: ``compiled.memory_analysis()`` (``hlo.memory``), per device; ``mem_peak`` =
  argument + output - alias (donated inputs reused as outputs) + temp bytes;
* ``coll_*``: bytes of collectives per call from the compiled HLO (``hlo.collectives``, whose
  module docstring states the rule, the same on every target). An op counts the larger of its
  operands' and its results' total size (for all-gather the gathered array, for reduce-scatter
  the array before scattering, for all-reduce, all-to-all and collective-permute the array):
  the data an op spans, not bytes on the wire. Each op counts once per execution: ops in a
  while body are multiplied by its trip count (the scanned layers, the micro-steps; read from
  the loop's condition where the HLO carries no ``known_trip_count``, as libtpu's does not),
  those of conditional branches counted as if every branch ran. ``coll_ops`` counts
  executions likewise.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator, Sequence
from typing import Any

import jax
from jax.sharding import Mesh

from unigrpo_jax.bench import perf
from unigrpo_jax.bench.hlo import collectives, memory
from unigrpo_jax.bench.programs import (PROGRAMS, Program, decode_program, denoise_program,
                                        model_config, train_program, workload)
from unigrpo_jax.bench.report import COLUMNS
from unigrpo_jax.parallel import mesh as mesh_lib
from unigrpo_jax.parallel import sharding
from unigrpo_jax.train import settings

def parse_meshes(text: str) -> list[tuple[int, ...]]:
    """``'8,1,1;1,4,2'`` -> ``[(8, 1, 1), (1, 4, 2)]`` (data, fsdp, tensor)."""
    meshes = []
    for part in filter(None, (p.strip() for p in text.split(';'))):
        shape = tuple(int(s) for s in part.split(','))
        if len(shape) != len(mesh_lib.AXES):
            raise ValueError(f'mesh {part!r}: expected {len(mesh_lib.AXES)} sizes '
                             f'{mesh_lib.AXES}, e.g. 1,4,2')
        meshes.append(shape)
    return meshes


def default_meshes(num_devices: int) -> list[tuple[int, int, int]]:
    """One device, then all devices as data, fsdp, and (from 4 devices) fsdp x 2-way tensor and
    data x 2-way tensor."""
    meshes = [(1, 1, 1)]
    if num_devices > 1:
        meshes += [(num_devices, 1, 1), (1, num_devices, 1)]
    if num_devices >= 4 and num_devices % 2 == 0:
        meshes += [(1, num_devices // 2, 2), (num_devices // 2, 1, 2)]
    return meshes


def sub_mesh(shape: Sequence[int]) -> Mesh:
    """A mesh over the first ``prod(shape)`` devices."""
    n = math.prod(shape)
    if any(s < 1 for s in shape) or n > jax.device_count():
        raise ValueError(f'mesh {tuple(shape)} needs {n} devices, {jax.device_count()} are '
                         'present')
    return mesh_lib.make_mesh(shape, jax.devices()[:n])


def executable(size: str) -> bool:
    """Whether a row may run (not only compile): on an accelerator always (if it fits); on a CPU
    only the tiny model."""
    return jax.default_backend() != 'cpu' or size == 'tiny'


def device_memory_limit() -> float | None:
    """Bytes one device can allocate (``memory_stats()['bytes_limit']``), None if unknown (CPU)."""
    stats = jax.devices()[0].memory_stats()
    return stats.get('bytes_limit') if stats else None


# --- rows --------------------------------------------------------------------------------------
def error_status(e: Exception) -> tuple[str, str]:
    """``(status, message)`` of a row that raised: 'does not fit' for an out-of-memory error,
    else 'error'; the message is the exception's type and text on one line."""
    msg = f'{type(e).__name__}: {" ".join(str(e).split())}'[:300]
    fits = not re.search(r'RESOURCE_EXHAUSTED|out of memory|\bOOM\b', msg, re.IGNORECASE)
    return ('error' if fits else 'does not fit'), msg


def step_seconds(compiled, program: Program, repeats: int, args: tuple | None = None) -> float:
    """Median seconds of ``repeats`` calls of ``compiled`` after a warm-up call, on ``args``
    (default: ``program.concrete()``); a threaded program's first output is the next call's
    first input."""
    args = program.concrete() if args is None else args

    def call():
        nonlocal args
        out = compiled(*args)
        if program.threaded:
            args = (out[0], *args[1:])
        return out

    jax.block_until_ready(call())  # warm-up
    return perf.median_seconds(call, repeats)


def measure(program: Program, run: bool, memory_limit: float | None, repeats: int,
            peak: perf.Peak | None, devices: int) -> dict:
    """Compiles ``program`` and, if ``run`` and it fits ``memory_limit`` (bytes per device),
    times it; the row's measured columns."""
    start = time.perf_counter()
    compiled = program.fn.lower(*program.abstract).compile()
    row: dict[str, Any] = dict(compile_s=time.perf_counter() - start,
                               model_flops=program.flops, throughput_unit=program.unit,
                               **memory(compiled))
    coll, ops = collectives(compiled.as_text())
    row.update({f'coll_{k.replace("-", "_")}': v for k, v in coll.items()},
               coll_bytes=sum(coll.values()), coll_ops=ops)
    if memory_limit is not None and row.get('mem_peak', 0) > memory_limit:
        row.update(status='does not fit', error=f'peak {row["mem_peak"] / 2**30:.3g} GiB per '
                   f'device > limit {memory_limit / 2**30:.3g} GiB')
        return row
    if not run:
        row['status'] = 'compile-only'
        return row
    seconds = step_seconds(compiled, program, repeats)
    row.update(status='ok', step_s=seconds, throughput=program.items / seconds)
    if peak is not None:
        row['mfu'] = program.flops / seconds / (devices * peak.bf16_flops)
    return row


def sweep(cfg, optimizer, *, sizes: Sequence[str],
          strategies: Sequence[str], meshes: Sequence[tuple[int, ...]],
          programs: Sequence[str], batch: int, system_len: int, prompt_len: int,
          layers: int | None, repeats: int, memory_limit: float | None,
          execute: bool) -> Iterator[dict]:
    """Yields one row (``COLUMNS``) per size x mesh x strategy x program; a failure (invalid
    mesh, indivisible batch, out of memory, ...) is that row's ``status`` and ``error``, never
    the sweep's. Strategies are names of ``sharding.STRATEGIES`` or of
    ``cfg.parallelism.rules``. The rollout and objective settings are ``cfg``'s
    (``train.settings``)."""
    rc = settings.rollout_config(cfg)
    obj = settings.objective_config(cfg, rc.schedule)
    w = workload(rc, obj, batch, system_len, prompt_len)
    extra = cfg.parallelism.rules.to_dict()
    device = jax.devices()[0]
    peak = perf.peak_for(device.device_kind) if jax.default_backend() == 'gpu' else None
    key = jax.random.key(cfg.seed)
    for size in sizes:
        try:
            config, size_error = model_config(size, cfg, layers), None
            params = perf.decoder_param_count(config.llm)
        except Exception as e:  # pylint: disable=broad-except
            config, size_error, params = None, e, None
        for shape in meshes:
            for strategy in strategies:
                for name in programs:
                    row = dict(size=size, llm_params=params, strategy=strategy,
                               mesh='x'.join(map(str, shape)), devices=math.prod(shape),
                               program=name)
                    try:
                        if size_error is not None:
                            raise size_error
                        mesh = sub_mesh(shape)
                        rules = sharding.strategy_rules(strategy, extra)
                        if name == 'train':
                            program = train_program(config, rc, obj, optimizer, mesh, rules, w,
                                                    key)
                        elif name == 'decode':
                            program = decode_program(config, mesh, rules, w, key)
                        elif name == 'denoise':
                            program = denoise_program(config, mesh, rules, w, key)
                        else:
                            raise ValueError(f'program {name!r}; expected one of {PROGRAMS}')
                        row.update(measure(program, execute and executable(size),
                                           memory_limit, repeats, peak, mesh.size))
                    except Exception as e:  # pylint: disable=broad-except
                        row['status'], row['error'] = error_status(e)
                    yield {c: row.get(c) for c in COLUMNS}
