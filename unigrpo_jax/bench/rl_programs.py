"""The programs ``launch/train.py`` runs for a config, as abstract sharded calls: what
``bench.compile_check`` compiles for a target that is not attached.

``rl_programs(config, devices)`` builds them with ``train.rl_step.build_programs`` (the loop's
own builder, so the placements are the loop's) and pairs each with ``ShapeDtypeStruct`` inputs
carrying the shardings the loop gives its arrays:

=============  ==============================================================================
``policy``     the train state's params -> the compute-dtype copy the rollout samples from
``rollout``    one rollout call (``parallelism.rollout_prompts_per_device`` prompts, or group
               pieces with ``rollout_group_pieces``, per device)
``reference``  the frozen reference's outputs on a whole rollout batch, in micro-batch pieces
``select``     a minibatch of the rollout batch (``num_minibatches`` > 1)
``train_step`` one optimizer update: the minibatch's gradient over micro-batches, then Adam
``eval``       the evaluation sampler on ``batch_size`` prompts padded to the devices (when
               ``eval_every`` > 0)
=============  ==============================================================================

No weights are read: the architecture is ``model.random``'s, a checkpoint directory's config
files, or (neither set) Bagel-7B-MoT's release architecture.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import logging

from unigrpo_jax.bench import perf, programs
from unigrpo_jax.bench.programs import placed_shapes
from unigrpo_jax.loading import synthetic
from unigrpo_jax.loading import tokenizer as tokenizer_lib
from unigrpo_jax.model import attention, autoencoder, bagel
from unigrpo_jax.model.config import BagelConfig, config_from_dict, load_config
from unigrpo_jax.parallel import mesh as mesh_lib
from unigrpo_jax.parallel import sharding
from unigrpo_jax.rl import objective
from unigrpo_jax.rollout import generate
from unigrpo_jax.rollout import rollout as rollout_lib
from unigrpo_jax.train import lora as lora_lib
from unigrpo_jax.train import optimizer as opt_lib
from unigrpo_jax.train import rl_step
from unigrpo_jax.train import step as step_lib
from unigrpo_jax.train.settings import settings, strategy_rules

# Tokens of ``configs/bagel_grpo.py``'s think system prompt ([bos] ... [eos]) with Qwen2.5's
# tokenizer is about 55; without a tokenizer the programs are compiled for this bound.
SYSTEM_TOKENS_BOUND = 64


def architecture(config, platform: str, layers: int | None = None) -> BagelConfig:
    """The model a config trains on ``platform``, from its sizes only, with its dtype, attention
    kernel and remat settings; ``layers`` overrides the LLM depth (quick scaled compiles)."""
    m = config.model
    if m.random is not None:
        model = config_from_dict(m.random.to_dict(), dtype=m.dtype)
    elif m.checkpoint:
        model = load_config(m.checkpoint, dtype=m.dtype)
    else:
        logging.info('no model.checkpoint: compiling Bagel-7B-MoT\'s release architecture')
        model = synthetic.bagel_7b().replace(dtype=m.dtype)
    if layers is not None:
        model = model.replace(llm=dataclasses.replace(model.llm, num_hidden_layers=layers))
    return model.replace(attention=attention.kernel_for(m.attention, platform, m.dtype),
                         remat_policy=config.parallelism.remat_policy)


def _params(model: BagelConfig, dtype, shardings):
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype),
                          nn.unbox(bagel.abstract_params(model)))
    return placed_shapes(shapes, shardings)


def rl_programs(config, devices, system_len: int | None = None,
                layers: int | None = None) -> list[tuple]:
    """``[(name, jitted function, abstract args, resident)]`` of an RL run of ``config`` on ``devices``
    (see the module docstring). ``system_len``: tokens of the system segment (default: the
    tokenizer's encoding of ``system_prompt`` when ``config.tokenizer`` is set, else
    ``SYSTEM_TOKENS_BOUND``); ``layers``: see ``architecture``. ``resident``: the abstract
    arrays the loop keeps on the devices while the program runs (``bench.compile_check``)."""
    s = settings(config, len(devices), check_inputs=False)
    model = architecture(config, devices[0].platform, layers)
    system_len = _system_len(config, s, system_len)
    prompt_len = config.data.max_prompt_tokens
    mesh = mesh_lib.make_mesh(s.mesh_shape, devices)
    rules, rollout_rules = strategy_rules(config.parallelism)
    optimizer = opt_lib.make_optimizer(config.optimizer, s.total_updates)
    minibatch = objective.batch_shapes(model, s.rollout, s.objective, system_len, prompt_len,
                                       s.minibatch)
    built = rl_step.build_programs(model, s, optimizer, mesh, rules, rollout_rules, minibatch)
    place = built.place
    rep = sharding.replicated(mesh)

    f32 = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32),
                       nn.unbox(bagel.abstract_params(model)))
    trainable = f32 if s.lora is None else jax.eval_shape(
        lambda p: lora_lib.init_lora(p, s.lora, jax.random.key(0)), f32)
    state = placed_shapes(step_lib.TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32), params=trainable,
        opt_state=jax.eval_shape(optimizer.init, trainable)), place.state)
    frozen = _params(model, jnp.dtype(model.dtype), place.ref_params)
    policy = placed_shapes(jax.eval_shape(  # the float32 modules stay float32
        lambda p: bagel.compute_params(p, jnp.dtype(model.dtype)), f32), built.policy_sharding)
    ae = placed_shapes(jax.eval_shape(lambda k: autoencoder.init_params(model.ae, k),
                                      jax.random.key(0)), rep)
    key = jax.ShapeDtypeStruct((), jax.eval_shape(lambda: jax.random.key(0)).dtype, sharding=rep)
    system = (jax.ShapeDtypeStruct((system_len,), jnp.int32, sharding=rep) if system_len
              else None)

    def prompts(n: int):
        chains = sharding.batch_sharding(mesh, n)
        return (jax.ShapeDtypeStruct((n, prompt_len), jnp.int32, sharding=chains),
                jax.ShapeDtypeStruct((n,), jnp.int32, sharding=chains))

    per_call = config.batch_size * s.rollout_group_pieces // s.rollout_calls  # rows
    rollout = rollout_lib.make_rollout_call(model, s.rollout, mesh, built.policy_sharding,
                                            system_len, prompt_len, s.rollout_group_pieces)
    batch = placed_shapes(objective.batch_shapes(model, s.rollout, s.objective, system_len,
                                                 prompt_len, s.chains), place.batch)
    idx = jax.ShapeDtypeStruct((s.minibatch,), jnp.int32, sharding=rep)
    offset = jax.ShapeDtypeStruct((), jnp.int32, sharding=rep)
    out = [  # (name, program, its arguments, what the run keeps alive beside them)
        ('policy', built.policy, (state.params, frozen), state.opt_state),
        ('rollout', rollout, (policy, ae, system, *prompts(per_call), key, offset),
         (state, frozen)),
        # The whole rollout batch: the largest bucket of a compacted update (rl.compaction).
        ('reference', built.reference[s.chains],
         (frozen, placed_shapes(batch.replace(extras={}), rl_step.unprepared(place)), key),
         state),
        ('train_step', built.train_step[s.minibatch],
         (state, frozen, placed_shapes(minibatch, place.batch)),
         batch if config.num_minibatches > 1 else ()),
    ]
    if config.num_minibatches > 1:  # one minibatch is the batch itself (``rl_step``)
        out.insert(3, ('select', built.select, (batch, idx), (state, frozen)))
    if config.eval_every:
        rc = s.rollout
        sampler, tokens = s.eval_sampler, s.eval_tokens
        think_tokens = rc.max_think_tokens if rc.think else 0
        evaluate = jax.jit(sharding.traced_on(
            mesh, lambda p, ae_p, sys, ids, lengths, k: generate.generate_eval(
                p, ae_p, model, sampler, sys, ids, lengths, k, think_tokens=think_tokens,
                token_sampler=tokens, image_size=rc.schedule.image_size,
                decode_pieces=s.eval_chunk // mesh.size)))
        out.append(('eval', evaluate, (policy, ae, system, *prompts(s.eval_chunk), key),
                    (state, frozen)))
    return out


def _system_len(config, s, system_len: int | None) -> int:
    """Tokens of the system segment a run of ``config`` (settings ``s``) compiles with: 0 when
    it does not think or has no system prompt, else ``system_len``, by default
    ``_system_tokens``."""
    if not s.rollout.think or not config.system_prompt:
        return 0
    return _system_tokens(config) if system_len is None else system_len


def _system_tokens(config) -> int:
    if not config.tokenizer:
        logging.info('no tokenizer: the system segment is compiled as %d tokens',
                     SYSTEM_TOKENS_BOUND)
        return SYSTEM_TOKENS_BOUND
    tokenizer, tokens, _ = tokenizer_lib.load_tokenizer(config.tokenizer)
    return len(tokenizer_lib.encode_segment(tokenizer, tokens, config.system_prompt))


def iteration_estimate(config, target, system_len: int = SYSTEM_TOKENS_BOUND,
                       layers: int | None = None) -> dict[str, float]:
    """Roofline seconds of one RL iteration of ``config`` on ``target`` (a ``targets.Target``):
    an analytic estimate from ``bench.perf``'s FLOP and byte counts, not a measurement. Each
    phase is ``max(FLOPs / peak_flops, bytes / bandwidth)`` per device, the work split evenly
    over the devices: think-token decode (the step's weights and KV rows read once per token,
    a context of half the think budget on average), denoising (N - 1 image-block forwards per
    chain), the reference forward, and the updates (``programs.train_step_flops``: forward and
    backward, 3x). Collectives, the VAE and the reward are left out; real step times are this
    divided by the achieved fraction of peak (MFU)."""
    s = settings(config, target.num_devices, check_inputs=False)
    model = architecture(config, target.platform, layers)
    llm, rc = model.llm, s.rollout
    n, peak, bw = target.num_devices, target.peak_flops, target.bandwidth
    system_len = system_len if rc.think and config.system_prompt else 0
    w = programs.workload(rc, s.objective, 1, system_len, config.data.max_prompt_tokens)
    per_call = s.chains // s.rollout_calls // n  # chains per device per rollout call
    think = w.think_tokens
    context = w.text_context + think / 2
    decode = think * max(perf.decode_step_flops(llm, per_call, context) / peak,
                         perf.decode_step_bytes(llm, per_call, context, 2, 4) / bw)
    image = perf.block_forward_flops(model, 1, w.latent_tokens(model), w.context)
    denoise = (rc.schedule.num_timesteps - 1) * per_call * image / peak
    chains_per_device = s.chains / n
    context_flops = sum(perf.segment_forward_flops(llm, length, before, causal=True)
                        for length, before in ((w.system_len, 0),
                                               (w.prompt_len, w.system_len),
                                               (think + 2 if think else 0, w.text_context))
                        if length)
    reference = chains_per_device * (context_flops + w.image_blocks * image) / peak
    updates = config.ppo_epochs * config.num_minibatches
    train = updates * programs.train_step_flops(
        model, s.objective, dataclasses.replace(w, batch=s.minibatch)) / n / peak
    return {'rollout_decode_s': s.rollout_calls * decode, 'rollout_denoise_s':
            s.rollout_calls * denoise, 'reference_s': reference, 'train_s': train}


def program_estimates(config, target, system_len: int | None = None,
                      layers: int | None = None) -> dict[str, float]:
    """``iteration_estimate`` per call of ``rl_programs``' programs: ``rollout`` (one of the
    iteration's rollout calls), ``reference`` (one call per iteration) and ``train_step`` (one
    optimizer update: ``ppo_epochs x num_minibatches`` calls per iteration). ``system_len``
    as ``rl_programs``'."""
    s = settings(config, target.num_devices, check_inputs=False)
    phases = iteration_estimate(config, target, _system_len(config, s, system_len), layers)
    return {'rollout': (phases['rollout_decode_s'] + phases['rollout_denoise_s'])
            / s.rollout_calls,
            'reference': phases['reference_s'],
            'train_step': phases['train_s'] / (config.ppo_epochs * config.num_minibatches)}
