"""The sharding sweep's workload and the programs it compiles: model sizes, analytic FLOPs and
tokens of a train step, and the sharded train, decode and denoise programs (conventions:
``sweep``'s module docstring)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from unigrpo_jax.bench import perf
from unigrpo_jax.model import bagel, context, latents
from unigrpo_jax.model.config import BagelConfig, config_from_dict
from unigrpo_jax.model.kv_cache import KVCache
from unigrpo_jax.parallel import sharding
from unigrpo_jax.rl import objective
from unigrpo_jax.rl.objective import ObjectiveConfig
from unigrpo_jax.rollout.rollout import RolloutConfig
from unigrpo_jax.train import rl_step
from unigrpo_jax.train import step as step_lib

SIZES = ('tiny', '1b', '7b')
PROGRAMS = ('train', 'decode', 'denoise')


@dataclasses.dataclass(frozen=True)
class Workload:
    """The per-call shapes of the programs. Without thinking, ``system_len`` and
    ``think_tokens`` are 0 (the context is the prompt)."""

    batch: int  # chains (train, decode) or images (denoise) per call
    system_len: int
    prompt_len: int
    think_tokens: int  # T, the train batch's reasoning tokens
    image_blocks: int  # the train step's image forwards per chain (W window steps, NFT's points)
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


def workload(rc: RolloutConfig, obj: ObjectiveConfig, batch: int, system_len: int,
             prompt_len: int) -> Workload:
    """The workload of a rollout's and an objective's settings (think tokens, image blocks and
    image size)."""
    return Workload(batch=batch, system_len=system_len if rc.think else 0, prompt_len=prompt_len,
                    think_tokens=rc.max_think_tokens if rc.think else 0,
                    image_blocks=obj.image_blocks, image_size=rc.schedule.image_size)


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


# --- analytic counts ---------------------------------------------------------------------------
def train_step_flops(config: BagelConfig, obj: ObjectiveConfig, w: Workload) -> float:
    """Model FLOPs of one train step (see ``sweep``'s module docstring): per chain the context
    (system, prompt and think segments, causal), ``lm_head`` on the T reasoning tokens, and the
    image blocks over the context; 3x (forward and backward) for what gets gradients, 1x for a
    context replayed without them (``image_grad_to_context=False`` without a text term). The
    frozen reference is not in the step: its outputs are prepared once per rollout batch
    (``objective.prepare``, ``rl_programs.iteration_estimate``'s ``reference_s``)."""
    llm = config.llm
    segments = [(w.system_len, 0), (w.prompt_len, w.system_len)]
    if w.think:
        segments.append((w.think_tokens + 2, w.text_context))
    ctx = sum(perf.segment_forward_flops(llm, n, before, causal=True)
              for n, before in segments if n)
    logits = perf.lm_head_flops(llm, w.think_tokens) if obj.trains_text else 0.0
    image = (w.image_blocks * perf.block_forward_flops(config, 1, w.latent_tokens(config),
                                                       w.context) if obj.trains_image else 0.0)
    context_grad = obj.trains_text or obj.image_grad_to_context
    with_grad = logits + image + (ctx if context_grad else 0.0)
    forward_only = 0.0 if context_grad else ctx
    return w.batch * (3 * with_grad + forward_only)


def train_step_tokens(config: BagelConfig, w: Workload) -> int:
    """Tokens of one train step's policy forward: the context and the objective's image blocks
    (the W window steps, or NFT's points) per chain."""
    return w.batch * (w.context + w.image_blocks * (w.latent_tokens(config) + 2))


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


def placed_shapes(tree, shardings):
    """``ShapeDtypeStruct``s of ``tree``'s leaves (arrays or shapes) carrying ``shardings`` (a
    tree like ``tree``, or one sharding for every leaf)."""
    if isinstance(shardings, jax.sharding.Sharding):
        shardings = jax.tree.map(lambda _: shardings, tree)
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


def _params(config: BagelConfig, key, dtype=jnp.float32) -> Any:
    return perf.random_params(config, key, dtype)


def _param_shapes(config: BagelConfig, dtype) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype),
                        nn.unbox(bagel.abstract_params(config)))


def train_program(config: BagelConfig, rc: RolloutConfig, obj: ObjectiveConfig, optimizer,
                  mesh: Mesh, rules, w: Workload, key) -> Program:
    """The RL train step on a minibatch of ``w.batch`` chains (shapes from the rollout's own
    ``objective.batch_shapes``)."""
    batch = objective.batch_shapes(config, rc, obj, w.system_len, w.prompt_len, w.batch)
    place = step_lib.placement(config, optimizer, mesh, rules, batch)
    f32 = _param_shapes(config, jnp.float32)
    state = step_lib.TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=f32,
                                opt_state=jax.eval_shape(optimizer.init, f32))
    abstract = (placed_shapes(state, place.state),
                placed_shapes(_param_shapes(config, jnp.bfloat16), place.ref_params),
                placed_shapes(batch, place.batch))

    def concrete():
        key_params, key_batch = jax.random.split(key)
        p = _params(config, key_params)
        grid = obj.schedule.timesteps()
        b = _random(batch, key_batch)
        b = b.replace(trajectory=b.trajectory.replace(
            prompt_lengths=jnp.full((w.batch,), w.prompt_len, jnp.int32),
            t=grid[:obj.schedule.window_size], t_next=grid[1:obj.schedule.window_size + 1]),
            sample_weight=jnp.ones((w.batch,), jnp.float32))
        return (step_lib.init_state(p, optimizer, place), step_lib.reference_params(p, place),
                _place(b, abstract[2]))

    return Program(fn=step_lib.make_train_step(rl_step.rl_loss(config, obj, place.params),
                                               optimizer, place),
                   abstract=abstract, concrete=concrete, flops=train_step_flops(config, obj, w),
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
    abstract = placed_shapes(KVCache(k=kv, v=kv, length=per_chain, rope=per_chain), sh)

    def concrete(key):
        filled = lambda: jnp.full((batch,), length, jnp.int32)  # noqa: E731  (two buffers)
        return _place(_random(abstract, key).replace(length=filled(), rope=filled()), abstract)

    return abstract, concrete


def _placed_params(config: BagelConfig, mesh, rules, dtype):
    return placed_shapes(_param_shapes(config, dtype), sharding.param_shardings(
        bagel.abstract_params(config), mesh, rules))


def decode_program(config: BagelConfig, mesh: Mesh, rules, w: Workload, key,
                   param_dtype=jnp.float32) -> Program:
    """One think-token ``context.decode_step`` of ``w.batch`` chains over caches holding the
    system and prompt segments; params in ``param_dtype`` (float32: as the train state holds
    them; the compute dtype: as the rollout's copy, ``bagel.compute_params``, bar its float32
    modules)."""
    params = _placed_params(config, mesh, rules, param_dtype)
    cache, make_cache = _cache(config, mesh, rules, w.batch, w.text_context + w.think_tokens + 2,
                               w.text_context)
    chains = sharding.batch_sharding(mesh, w.batch)
    tokens = jax.ShapeDtypeStruct((w.batch,), jnp.int32, sharding=chains)
    fn = jax.jit(lambda c, p, t: context.decode_step(p, config, c, t),
                 out_shardings=(jax.tree.map(lambda s: s.sharding, cache), chains),
                 donate_argnums=(0,), keep_unused=True)

    def concrete():
        key_params, key_cache = jax.random.split(key)
        return (make_cache(key_cache), _place(_params(config, key_params, param_dtype), params),
                jax.device_put(jnp.zeros((w.batch,), jnp.int32), chains))

    return Program(fn=fn, abstract=(cache, params, tokens), concrete=concrete,
                   flops=perf.decode_step_flops(config.llm, w.batch, w.text_context),
                   items=w.batch, unit='tokens/s', threaded=True)


def denoise_program(config: BagelConfig, mesh: Mesh, rules, w: Workload, key,
                    param_dtype=jnp.float32) -> Program:
    """One ``context.image_velocities`` call with W = 1: ``w.batch`` image blocks over the cache
    left by thinking; params in ``param_dtype`` (as ``decode_program``)."""
    params = _placed_params(config, mesh, rules, param_dtype)
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
        return (_place(_params(config, key_params, param_dtype), params), make_cache(key_cache),
                jax.device_put(jax.random.normal(key_x, x_t.shape), chains),
                jax.device_put(jnp.full(t.shape, 0.7), chains),
                jax.device_put(pos, pos_abstract.sharding))

    return Program(fn=fn, abstract=(params, cache, x_t, t, pos_abstract), concrete=concrete,
                   flops=perf.block_forward_flops(config, w.batch, h * wd, w.context),
                   items=w.batch, unit='images/s', threaded=False)
