"""A sweep of sharding strategies x model sizes x meshes over the three hot programs.

Programs (one row each per strategy, size and mesh):

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

Columns and their conventions (``COLUMNS``):

* ``compile_s``: ``lower`` + ``compile`` wall time;
* ``step_s``: median of ``repeats`` calls after a warm-up call (executed rows only);
* ``throughput``: tokens/s (train: every token of the policy forward, context and image blocks;
  decode: one per chain) or images/s (denoise: one step of ``batch`` images);
* ``model_flops``: analytic matmul FLOPs per call (``unigrpo_jax.perf``). Train: 3x the forward
  of what gets gradients (forward + backward) plus 1x the forward of the frozen reference and of
  any policy part without gradients: MaxText's model FLOPs, rematerialisation not counted;
* ``mfu``: model FLOPs / step_s / (devices x peak dense bf16 FLOP/s of ``perf.PEAKS``);
  MaxText's definition, empty when the peak is unknown (CPU);
* ``mem_*``: ``compiled.memory_analysis()``, per device; ``mem_peak`` = argument + output -
  alias (donated inputs reused as outputs) + temp bytes;
* ``coll_*``: bytes of collectives per call from the compiled HLO. An op counts the larger of its
  operands' and its results' total size (for all-gather the gathered array, for reduce-scatter
  the array before scattering, for all-reduce, all-to-all and collective-permute the array):
  the data an op spans, not bytes on the wire. Each op counts once per execution: ops in a while
  body are multiplied by its known trip count (the scanned layers), those of conditional
  branches counted as if every branch ran. ``coll_ops`` counts executions likewise.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from unigrpo_jax import perf
from unigrpo_jax.model import bagel, context, latents
from unigrpo_jax.model.config import BagelConfig, config_from_dict
from unigrpo_jax.model.kv_cache import KVCache
from unigrpo_jax.parallel import mesh as mesh_lib
from unigrpo_jax.parallel import sharding
from unigrpo_jax.rl.objective import ObjectiveConfig
from unigrpo_jax.rl.replay import TrainBatch
from unigrpo_jax.train import step as step_lib

SIZES = ('tiny', '1b', '7b')
PROGRAMS = ('train', 'decode', 'denoise')
KINDS = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all', 'collective-permute')
COLUMNS = (
    'size', 'llm_params', 'strategy', 'mesh', 'devices', 'program', 'status', 'compile_s',
    'step_s', 'throughput', 'throughput_unit', 'model_flops', 'mfu', 'mem_peak',
    'mem_argument', 'mem_output', 'mem_alias', 'mem_temp', 'coll_bytes',
    *(f'coll_{k.replace("-", "_")}' for k in KINDS), 'coll_ops', 'error')

# Meshes on which the sharded programs run on XLA's CPU backend with 8 emulated devices; others
# (seen: (2, 2, 2) and (1, 2, 4) for fsdp_tp) can deadlock in its collectives, so on a CPU only
# these are executed, the rest compiled.
CPU_RUN_MESHES = ((1, 1, 1), (8, 1, 1), (1, 8, 1), (1, 4, 2), (4, 1, 2))


@dataclasses.dataclass(frozen=True)
class Workload:
    """The per-call shapes of the programs. Without thinking, ``system_len`` and
    ``think_tokens`` are 0 (the context is the prompt)."""

    batch: int  # chains (train, decode) or images (denoise) per call
    system_len: int
    prompt_len: int
    think_tokens: int  # T, the train batch's reasoning tokens
    window: int  # W, the train batch's SDE steps
    image_size: tuple[int, int]

    @property
    def think(self) -> bool:
        return self.think_tokens > 0

    @property
    def text_context(self) -> int:
        """Cached rows before the think segment (the decode step's context)."""
        return self.system_len + self.prompt_len

    @property
    def context(self) -> int:
        """Cached rows after thinking (the image blocks' context)."""
        return self.text_context + (self.think_tokens + 2 if self.think else 0)

    def latent_tokens(self, config: BagelConfig) -> int:
        return math.prod(latents.token_grid(*self.image_size, config.latent_downsample))


def workload(cfg, obj: ObjectiveConfig, batch: int, system_len: int,
             prompt_len: int) -> Workload:
    """The workload of an experiment config (its rollout's think tokens, window, image size)."""
    return Workload(batch=batch, system_len=system_len if obj.think else 0, prompt_len=prompt_len,
                    think_tokens=cfg.rollout.max_think_tokens if obj.think else 0,
                    window=cfg.rollout.window_size, image_size=tuple(cfg.rollout.image_size))


def model_config(size: str, cfg, layers: int | None = None) -> BagelConfig:
    """``tiny``: the config's random model (``model.random``, its dtype); ``1b``, ``7b``:
    ``perf.bagel_1b_config`` / ``perf.bagel_7b_config`` in bfloat16, with ``layers`` if given.
    All use ``parallelism.remat_policy``."""
    remat = cfg.parallelism.remat_policy
    if size == 'tiny':
        if cfg.model.random is None:
            raise ValueError('size tiny is the config\'s model.random, which is empty: use '
                             '--config=configs/bagel_grpo.py:tiny or sizes 1b, 7b')
        config = config_from_dict(cfg.model.random.to_dict(), dtype=cfg.model.dtype)
        return config.replace(remat_policy=remat)
    builders = {'1b': perf.bagel_1b_config, '7b': perf.bagel_7b_config}
    if size not in builders:
        raise ValueError(f'size {size!r}; expected one of {SIZES}')
    config = builders[size]() if layers is None else builders[size](layers)
    return config.replace(remat_policy=remat)


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


def executable(size: str, shape: Sequence[int]) -> bool:
    """Whether a row may run (not only compile): on an accelerator always (if it fits); on a CPU
    only the tiny model, on ``CPU_RUN_MESHES``."""
    if jax.default_backend() != 'cpu':
        return True
    return size == 'tiny' and tuple(shape) in CPU_RUN_MESHES


# --- analytic counts ---------------------------------------------------------------------------
def train_step_flops(config: BagelConfig, obj: ObjectiveConfig, w: Workload) -> float:
    """Model FLOPs of one train step (see the module docstring): per chain the context (system,
    prompt and think segments, causal), ``lm_head`` on the T reasoning tokens, and W image blocks
    over the context; the reference repeats the context and what its terms read."""
    llm = config.llm
    segments = [(w.system_len, 0), (w.prompt_len, w.system_len)]
    if w.think:
        segments.append((w.think_tokens + 2, w.text_context))
    ctx = sum(perf.segment_forward_flops(llm, n, before, causal=True)
              for n, before in segments if n)
    logits = perf.lm_head_flops(llm, w.think_tokens) if obj.text_term else 0.0
    image = (w.window * perf.block_forward_flops(config, 1, w.latent_tokens(config), w.context)
             if obj.flow_term else 0.0)
    context_grad = obj.text_term or obj.image_grad_to_context
    ref_image = obj.flow_term and obj.regularizer != 'none'
    ref_text = obj.text_term and obj.text_kl_weight > 0
    with_grad = logits + image + (ctx if context_grad else 0.0)
    forward_only = ((0.0 if context_grad else ctx) + (ctx if ref_image or ref_text else 0.0)
                    + (image if ref_image else 0.0) + (logits if ref_text else 0.0))
    return w.batch * (3 * with_grad + forward_only)


def train_step_tokens(config: BagelConfig, w: Workload) -> int:
    """Tokens of one train step's policy forward: context and W image blocks per chain."""
    return w.batch * (w.context + w.window * (w.latent_tokens(config) + 2))


# --- programs ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Program:
    """A jitted program, its abstract (sharded) inputs and how to make real ones.

    ``threaded``: the call's first output is the next call's first input (a donated train state
    or KV cache).
    """

    fn: Any
    abstract: tuple
    concrete: Callable[[], tuple]
    flops: float
    items: int
    unit: str
    threaded: bool


def _abstract(tree, shardings):
    return jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                        tree, shardings)


def _random(abstract, key):
    """Unplaced arrays like ``abstract``: normal floats, zero ints and bools."""
    leaves, treedef = jax.tree.flatten(abstract)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [
        jax.random.normal(k, s.shape, s.dtype) if jnp.issubdtype(s.dtype, jnp.floating)
        else jnp.zeros(s.shape, s.dtype) for k, s in zip(keys, leaves)])


def _place(tree, abstract):
    return jax.tree.map(lambda x, s: jax.device_put(x, s.sharding), tree, abstract)


def _params(config: BagelConfig, key) -> Any:
    return perf.random_params(config, key, jnp.float32)


def _param_shapes(config: BagelConfig, dtype) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype),
                        nn.unbox(bagel.abstract_params(config)))


def train_batch_shapes(config: BagelConfig, w: Workload) -> TrainBatch:
    """``TrainBatch`` of ``ShapeDtypeStruct``s (no shardings) for the workload."""
    b, t, n = w.batch, w.think_tokens, w.latent_tokens(config)
    f32, i32 = jnp.float32, jnp.int32
    s = jax.ShapeDtypeStruct
    window = s((b, w.window, n, config.latent_token_dim), f32)
    return TrainBatch(
        system_ids=s((w.system_len,), i32), prompt_ids=s((b, w.prompt_len), i32),
        prompt_lengths=s((b,), i32), think_tokens=s((b, t), i32), think_logprobs=s((b, t), f32),
        think_mask=s((b, t), jnp.bool_), think_closed=s((b,), jnp.bool_),
        t=s((w.window,), f32), t_next=s((w.window,), f32), x_t=window, x_next=window,
        logp=s((b, w.window), f32), mean=window, advantages=s((b,), f32),
        sample_weight=s((b,), f32))


def train_program(config: BagelConfig, obj: ObjectiveConfig, optimizer, mesh: Mesh, rules,
                  w: Workload, key) -> Program:
    batch = train_batch_shapes(config, w)
    place = step_lib.placement(config, optimizer, mesh, rules, batch)
    f32 = _param_shapes(config, jnp.float32)
    state = step_lib.TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=f32,
                                opt_state=jax.eval_shape(optimizer.init, f32))
    abstract = (_abstract(state, place.state),
                _abstract(_param_shapes(config, jnp.bfloat16), place.ref_params),
                _abstract(batch, place.batch))

    def concrete():
        key_params, key_batch = jax.random.split(key)
        p = _params(config, key_params)
        grid = latents.timesteps(obj.num_timesteps, obj.shift)
        b = _random(batch, key_batch).replace(
            prompt_lengths=jnp.full((w.batch,), w.prompt_len, jnp.int32),
            t=grid[:w.window], t_next=grid[1:w.window + 1],
            sample_weight=jnp.ones((w.batch,), jnp.float32))
        return (step_lib.init_state(p, optimizer, place), step_lib.reference_params(p, place),
                _place(b, abstract[2]))

    return Program(fn=step_lib.make_train_step(config, obj, optimizer, place), abstract=abstract,
                   concrete=concrete, flops=train_step_flops(config, obj, w),
                   items=train_step_tokens(config, w), unit='tokens/s', threaded=True)


def cache_shardings(mesh: Mesh, rules: Mapping[str, str], batch: int,
                    kv_heads: int) -> KVCache:
    """KV cache ``[layers, batch, size, kv_heads, head_dim]``: chains over the data-parallel
    axes, kv heads as the strategy places the params' kv heads."""
    per_chain = sharding.batch_sharding(mesh, batch)
    heads = sharding.spec_for(('kv_heads',), (kv_heads,), mesh, rules)[0]
    kv = NamedSharding(mesh, P(None, per_chain.spec[0], None,
                               None if heads in sharding.BATCH_AXES else heads, None))
    return KVCache(k=kv, v=kv, length=per_chain, rope=per_chain)


def _cache(config: BagelConfig, mesh, rules, batch: int, size: int, length: int):
    """Abstract cache of ``size`` rows and a maker of a real one holding ``length`` rows."""
    llm = config.llm
    shape = (llm.num_hidden_layers, batch, size, llm.num_key_value_heads, llm.head_dim)
    sh = cache_shardings(mesh, rules, batch, llm.num_key_value_heads)
    kv = jax.ShapeDtypeStruct(shape, jnp.float32)
    per_chain = jax.ShapeDtypeStruct((batch,), jnp.int32)
    abstract = _abstract(KVCache(k=kv, v=kv, length=per_chain, rope=per_chain), sh)

    def concrete(key):
        filled = lambda: jnp.full((batch,), length, jnp.int32)  # noqa: E731  (two buffers)
        return _place(_random(abstract, key).replace(length=filled(), rope=filled()), abstract)

    return abstract, concrete


def _placed_params(config: BagelConfig, mesh, rules):
    return _abstract(_param_shapes(config, jnp.float32), sharding.param_shardings(
        bagel.abstract_params(config), mesh, rules))


def decode_program(config: BagelConfig, mesh: Mesh, rules, w: Workload, key) -> Program:
    params = _placed_params(config, mesh, rules)
    cache, make_cache = _cache(config, mesh, rules, w.batch, w.text_context + w.think_tokens + 2,
                               w.text_context)
    chains = sharding.batch_sharding(mesh, w.batch)
    tokens = jax.ShapeDtypeStruct((w.batch,), jnp.int32, sharding=chains)
    fn = jax.jit(lambda c, p, t: context.decode_step(p, config, c, t),
                 out_shardings=(jax.tree.map(lambda s: s.sharding, cache), chains),
                 donate_argnums=(0,), keep_unused=True)

    def concrete():
        key_params, key_cache = jax.random.split(key)
        return (make_cache(key_cache), _place(_params(config, key_params), params),
                jax.device_put(jnp.zeros((w.batch,), jnp.int32), chains))

    return Program(fn=fn, abstract=(cache, params, tokens), concrete=concrete,
                   flops=perf.decode_step_flops(config.llm, w.batch, w.text_context),
                   items=w.batch, unit='tokens/s', threaded=True)


def denoise_program(config: BagelConfig, mesh: Mesh, rules, w: Workload, key) -> Program:
    params = _placed_params(config, mesh, rules)
    cache, make_cache = _cache(config, mesh, rules, w.batch, w.context, w.context)
    chains = sharding.batch_sharding(mesh, w.batch)
    h, wd = latents.token_grid(*w.image_size, config.latent_downsample)
    x_t = jax.ShapeDtypeStruct((w.batch, 1, h * wd, config.latent_token_dim), jnp.float32,
                               sharding=chains)
    t = jax.ShapeDtypeStruct((w.batch, 1), jnp.float32, sharding=chains)
    pos = jnp.asarray(latents.position_ids(h, wd, config.max_latent_size))
    pos_abstract = jax.ShapeDtypeStruct(pos.shape, pos.dtype, sharding=sharding.replicated(mesh))
    fn = jax.jit(lambda p, c, x, tt, ps: context.image_velocities(p, config, c, x, tt, ps)[0],
                 out_shardings=chains, keep_unused=True)

    def concrete():
        key_params, key_cache, key_x = jax.random.split(key, 3)
        return (_place(_params(config, key_params), params), make_cache(key_cache),
                jax.device_put(jax.random.normal(key_x, x_t.shape), chains),
                jax.device_put(jnp.full(t.shape, 0.7), chains),
                jax.device_put(pos, pos_abstract.sharding))

    return Program(fn=fn, abstract=(params, cache, x_t, t, pos_abstract), concrete=concrete,
                   flops=perf.block_forward_flops(config, w.batch, h * wd, w.context),
                   items=w.batch, unit='images/s', threaded=False)


# --- what a compiled program costs -------------------------------------------------------------
def memory(compiled) -> dict[str, int]:
    """Per-device bytes of a compiled program (``mem_*`` columns); empty if not reported."""
    m = compiled.memory_analysis()
    if m is None:
        return {}
    out = dict(mem_argument=m.argument_size_in_bytes, mem_output=m.output_size_in_bytes,
               mem_alias=m.alias_size_in_bytes, mem_temp=m.temp_size_in_bytes)
    out['mem_peak'] = (out['mem_argument'] + out['mem_output'] - out['mem_alias']
                       + out['mem_temp'])
    return out


_DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 'f8e4m3fn': 1, 'f8e5m2': 1, 's16': 2, 'u16': 2,
                'f16': 2, 'bf16': 2, 's32': 4, 'u32': 4, 'f32': 4, 's64': 8, 'u64': 8,
                'f64': 8, 'c64': 8, 'c128': 16}
_ARRAY = re.compile(r'\b([a-z]\w*)\[([\d,]*)\]')
_HEADER = re.compile(r'^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*->.*\{\s*$')
_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+([a-z][\w\-]*)\((.*)$')
_CALLEE = re.compile(
    r'\b(?:body|condition|calls|to_apply|true_computation|false_computation)=%?([\w.\-]+)')
_BRANCHES = re.compile(r'branch_computations=\{([^}]*)\}')
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


def _shape_bytes(shape: str) -> int:
    return sum(_DTYPE_BYTES.get(dtype, 0) * math.prod(int(d) for d in dims.split(',') if d)
               for dtype, dims in _ARRAY.findall(shape))


def _operands(rest: str) -> str:
    """The operand list of ``op(...)``: ``rest`` up to its closing parenthesis."""
    depth = 0
    for i, ch in enumerate(rest):
        depth += ch == '('
        if ch == ')':
            if depth == 0:
                return rest[:i]
            depth -= 1
    return rest


def collectives(hlo_text: str) -> tuple[dict[str, int], int]:
    """``({kind: bytes per call}, ops per call)`` of a compiled module's HLO text (the
    convention of the module docstring)."""
    shapes: dict[str, str] = {}
    own: dict[str, collections.Counter] = {}
    calls: dict[str, list[tuple[str, int]]] = {}
    entry = current = None
    for line in hlo_text.splitlines():
        header = _HEADER.match(line)
        if header:
            current = header.group(1)
            own[current], calls[current] = collections.Counter(), []
            entry = current if line.startswith('ENTRY') else entry
            continue
        match = _INSTRUCTION.match(line)
        if current is None or not match:
            continue
        name, result, opcode, rest = match.groups()
        shapes[name] = result
        if opcode in ('async-done', 'async-update'):
            continue
        trips = _TRIP_COUNT.search(rest)
        times = int(trips.group(1)) if opcode == 'while' and trips else 1
        callees = _CALLEE.findall(rest)
        for branches in _BRANCHES.findall(rest):
            callees += re.findall(r'%?([\w.\-]+)', branches)
        calls[current] += [(c, times) for c in callees]
        kind = opcode.removesuffix('-start')
        if kind not in KINDS:
            continue
        operand_bytes = sum(_shape_bytes(shapes.get(n, ''))
                            for n in re.findall(r'%([\w.\-]+)', _operands(rest)))
        result_bytes = _shape_bytes(result)
        if opcode.endswith('-start'):  # the result tuple repeats the operands
            result_bytes = max(result_bytes - operand_bytes, 0)
        own[current][kind] += max(operand_bytes, result_bytes)
        own[current]['ops'] += 1
    if entry is None:
        raise ValueError('no ENTRY computation in the HLO text')

    totals: dict[str, collections.Counter] = {}

    def total(name: str) -> collections.Counter:
        if name not in totals:
            out = collections.Counter(own.get(name, {}))
            for callee, times in calls.get(name, []):
                for k, v in total(callee).items():
                    out[k] += times * v
            totals[name] = out
        return totals[name]

    counts = total(entry)
    return {k: counts[k] for k in KINDS}, counts['ops']


def device_memory_limit() -> float | None:
    """Bytes one device can allocate (``memory_stats()['bytes_limit']``), None if unknown (CPU)."""
    stats = jax.devices()[0].memory_stats()
    return stats.get('bytes_limit') if stats else None


# --- rows --------------------------------------------------------------------------------------
def _error(e: Exception) -> tuple[str, str]:
    msg = f'{type(e).__name__}: {" ".join(str(e).split())}'[:300]
    fits = not re.search(r'RESOURCE_EXHAUSTED|out of memory|\bOOM\b', msg, re.IGNORECASE)
    return ('error' if fits else 'does not fit'), msg


def _step_seconds(compiled, program: Program, repeats: int) -> float:
    args = program.concrete()

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
    seconds = _step_seconds(compiled, program, repeats)
    row.update(status='ok', step_s=seconds, throughput=program.items / seconds)
    if peak is not None:
        row['mfu'] = program.flops / seconds / (devices * peak.bf16_flops)
    return row


def sweep(cfg, obj: ObjectiveConfig, optimizer, *, sizes: Sequence[str],
          strategies: Sequence[str], meshes: Sequence[tuple[int, ...]],
          programs: Sequence[str], batch: int, system_len: int, prompt_len: int,
          layers: int | None, repeats: int, memory_limit: float | None,
          execute: bool) -> Iterator[dict]:
    """Yields one row (``COLUMNS``) per size x mesh x strategy x program; a failure (invalid
    mesh, indivisible batch, out of memory, ...) is that row's ``status`` and ``error``, never
    the sweep's. Strategies are names of ``sharding.STRATEGIES`` or of
    ``cfg.parallelism.rules``."""
    w = workload(cfg, obj, batch, system_len, prompt_len)
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
                            program = train_program(config, obj, optimizer, mesh, rules, w, key)
                        elif name == 'decode':
                            program = decode_program(config, mesh, rules, w, key)
                        elif name == 'denoise':
                            program = denoise_program(config, mesh, rules, w, key)
                        else:
                            raise ValueError(f'program {name!r}; expected one of {PROGRAMS}')
                        row.update(measure(program, execute and executable(size, shape),
                                           memory_limit, repeats, peak, mesh.size))
                    except Exception as e:  # pylint: disable=broad-except
                        row['status'], row['error'] = _error(e)
                    yield {c: row.get(c) for c in COLUMNS}


# --- outputs -----------------------------------------------------------------------------------
def write_csv(rows: Sequence[dict], path: str) -> None:
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: '' if v is None else v for k, v in row.items()})


def _num(v, scale: float = 1.0, fmt: str = '.3g', missing: str = '') -> str:
    return missing if v is None or v == '' else format(float(v) / scale, fmt)


def markdown(rows: Sequence[dict]) -> str:
    """The rows as a markdown table (GiB = 2^30 bytes, MB = 10^6 bytes)."""
    head = ('| size | strategy | mesh | program | status | compile s | step ms | throughput | '
            'model GFLOP | MFU | peak GiB/device | argument GiB | temp GiB | collective MB '
            '| collective ops | error |')
    lines = [head, '|' + '---|' * head.count(' |')]
    for r in rows:
        step = (_num(r['step_s'], 1e-3) if r['step_s'] is not None
                else r['status'] if r['status'] == 'compile-only' else '')
        throughput = (f'{_num(r["throughput"])} {r["throughput_unit"]}'
                      if r['throughput'] is not None else '')
        mfu = _num(r['mfu'], fmt='.1%', missing='n/a' if r['step_s'] is not None else '')
        lines.append('| ' + ' | '.join([
            r['size'], r['strategy'], r['mesh'], r['program'], r['status'],
            _num(r['compile_s'], fmt='.1f'), step, throughput, _num(r['model_flops'], 1e9),
            mfu, _num(r['mem_peak'], 2**30), _num(r['mem_argument'], 2**30),
            _num(r['mem_temp'], 2**30), _num(r['coll_bytes'], 1e6),
            '' if r['coll_ops'] is None else str(r['coll_ops']),
            (r['error'] or '').replace('|', '/')]) + ' |')
    return '\n'.join(lines) + '\n'


def plot(rows: Sequence[dict], path: str) -> None:
    """Peak memory per device and step time, one row of panels per size x program, a group of
    bars per strategy (one bar per mesh); missing bars: not executed or not compiled."""
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')
    from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

    panels = list(dict.fromkeys((r['size'], r['program']) for r in rows))
    strategies = list(dict.fromkeys(r['strategy'] for r in rows))
    meshes = list(dict.fromkeys(r['mesh'] for r in rows))
    fig, axes = plt.subplots(len(panels), 2, figsize=(12, 2.8 * len(panels)), squeeze=False)
    width = 0.8 / len(meshes)
    for (size, program), (ax_mem, ax_time) in zip(panels, axes):
        for i, mesh in enumerate(meshes):
            by_strategy = {r['strategy']: r for r in rows
                           if (r['size'], r['program'], r['mesh']) == (size, program, mesh)}
            x = np.arange(len(strategies)) + (i - (len(meshes) - 1) / 2) * width
            for ax, column, scale in ((ax_mem, 'mem_peak', 2**30), (ax_time, 'step_s', 1e-3)):
                values = [by_strategy.get(s, {}).get(column) for s in strategies]
                ax.bar(x, [np.nan if v is None else v / scale for v in values], width,
                       label=mesh)
        for ax, label in ((ax_mem, 'peak GiB / device'), (ax_time, 'step ms')):
            ax.set_xticks(np.arange(len(strategies)), strategies)
            ax.set_xlim(-0.5, len(strategies) - 0.5)
            ax.set_ylabel(label)
            ax.set_title(f'{size} {program}')
            if any(np.isfinite(p.get_height()) and p.get_height() > 0 for p in ax.patches):
                ax.set_yscale('log')
            else:
                ax.set_yticks([])
                ax.text(0.5, 0.5, 'not executed', ha='center', va='center',
                        transform=ax.transAxes)
        ax_mem.legend(title='mesh', fontsize='small')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(rows: Sequence[dict], directory: str) -> list[str]:
    """``bench.csv``, ``bench.md`` and ``bench.png`` in ``directory``; returns their paths."""
    os.makedirs(directory, exist_ok=True)
    paths = [os.path.join(directory, f'bench.{ext}') for ext in ('csv', 'md', 'png')]
    write_csv(rows, paths[0])
    with open(paths[1], 'w') as f:
        f.write(markdown(rows))
    plot(rows, paths[2])
    return paths
