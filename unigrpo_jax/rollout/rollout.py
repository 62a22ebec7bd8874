"""UniGRPO's think-then-draw rollout: the training data (``generate.py`` draws for evaluation).

One rollout per chain (algorithm.md §1, §4; bagel.md §4.4):

1. context: ``[bos] SYSTEM [eos]`` (think only) and ``[bos] prompt [eos]`` prefilled once per
   prompt, then the cache is repeated for the G chains of the group;
2. text phase: from ``<|im_start|>`` sample reasoning tokens until ``<|im_end|>`` or
   ``max_think_tokens`` inside one ``lax.while_loop`` over a fixed-size cache; chains that stop
   are masked (their cache counters stop advancing); every sampled token's log-prob is recorded;
3. the reasoning becomes its own segment ``[bos] y [eos]``: the decode loop already wrote
   ``bos, y_1, ...`` at consecutive positions, so feeding the closing ``eos`` completes exactly
   the segment Bagel re-prefills (Bagel re-tokenizes the decoded string; we keep the sampled
   ids, which is the same segment whenever the sampled ids are the tokenizer's own encoding);
4. image phase: ``N - 1`` steps of the ``schedule.Schedule``; a window of W consecutive
   steps (start drawn per rollout batch) is stochastic (FlowGRPO SDE, noise level a) and stores
   ``x_t, t, x_next, logp, mean``; the other steps are Euler ODE steps; one conditional forward
   per step (CFG-free);
5. the final latents are decoded to uint8 images.

The no-think variant (FlowGRPO baseline) is the same program without steps 2-3 and the system
prompt. Random numbers are drawn per sample from ``fold_in(key, global sample index)``, so a
rollout does not depend on how its batch is split over devices.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from unigrpo_jax.model import autoencoder, bagel, context, latents
from unigrpo_jax.model.config import BagelConfig
from unigrpo_jax.model.kv_cache import KVCache, init_cache
from unigrpo_jax.parallel import sharding
from unigrpo_jax.rollout import sde
from unigrpo_jax.rollout import trajectory as trajectory_lib
from unigrpo_jax.rollout.sampling import TokenSampler, sample_tokens
from unigrpo_jax.rollout.schedule import Schedule
from unigrpo_jax.rollout.trajectory import Rollout, Trajectory


# Where a chain's initial image noise comes from: its own key ('chain'), or its group's first
# chain's ('group': the chains of a prompt start from one noise, so their rewards differ only
# by what they sampled: reasoning tokens and the SDE window's steps).
INITIAL_NOISE = ('chain', 'group')


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """Static settings of a rollout (hashable), built and checked by ``train.settings``.

    ``think`` and whether ``schedule`` has an SDE window follow from the objective's mode;
    ``schedule`` is the same object the objective replays with.
    """

    group_size: int
    think: bool
    max_think_tokens: int
    schedule: Schedule
    decode_images: bool
    initial_noise: str  # one of INITIAL_NOISE


def cache_size(system_len: int, prompt_len: int, think_tokens: int) -> int:
    """Rows a chain's cache needs: system + prompt + ``[bos] think [eos]`` (``think_tokens``
    sampled reasoning tokens; 0: no reasoning segment)."""
    return system_len + prompt_len + (think_tokens + 2 if think_tokens else 0)


def build_context(params, config: BagelConfig, system_ids: jax.Array | None,
                  prompt_ids: jax.Array, prompt_lengths: jax.Array,
                  size: int) -> tuple[KVCache, KVCache]:
    """Prefills ``[system] + prompt`` for each prompt.

    Returns ``(system_cache, full_cache)``; the first holds only the system segment (Bagel's
    ``cfg_text`` context of the think layout; empty without a system prompt).
    """
    cache = init_cache(config.llm, prompt_ids.shape[0], size)
    if system_ids is not None:
        ids = jnp.broadcast_to(system_ids, (prompt_ids.shape[0], system_ids.shape[0]))
        cache, _ = context.prefill_text(params, config, cache, ids)
    system_cache = cache
    cache, _ = context.prefill_text(params, config, cache, prompt_ids, prompt_lengths)
    return system_cache, cache


def repeat_chains(tree, repeats: int):
    """Repeats every array of a pytree along its batch axis (axis 0; axis 1 for KV buffers)."""
    def rep(x):
        axis = 1 if x.ndim == 5 else 0  # KVCache k/v: [layers, batch, ...]
        return jnp.repeat(x, repeats, axis=axis)
    return jax.tree.map(rep, tree)


def generate_think(params, config: BagelConfig, cache: KVCache, keys: jax.Array,
                   sampler: TokenSampler, max_tokens: int):
    """Samples reasoning tokens from ``<|im_start|>`` and closes the segment with ``<|im_end|>``.

    The cache ends up holding the segment ``[bos] y_1 .. y_n`` plus ``[eos]`` when ``y_n`` is not
    already ``<|im_end|>`` (a chain truncated at ``max_tokens``), exactly the segment Bagel
    prefills after thinking; chains that finished stop advancing their counters.

    Args:
      cache: ``[batch]`` contexts with room for ``max_tokens + 2`` more rows.
      keys: ``[batch]`` per-chain PRNG keys.
    Returns:
      ``(cache, tokens [batch, T], logprobs [batch, T], mask [batch, T], closed [batch])``:
      sampled tokens (``eos`` after the end), their log-probs, which are sampled, and whether
      the chain sampled ``<|im_end|>`` itself.
    """
    b, bos, eos = cache.batch, config.tokens.bos, config.tokens.eos
    # Per-chain phase: sampling; feeding its last sampled token (truncated); feeding the eos.
    sampling, feed_last, feed_eos, done = 0, 1, 2, 3

    def cond(state):
        step, _, _, phase, *_ = state
        return (step <= max_tokens + 1) & jnp.any(phase != done)

    def body(state):
        step, cache, token, phase, tokens, logps, mask, closed = state
        advancing = phase != done
        new_cache, logits = context.decode_step(params, config, cache, token)
        keep = lambda new, old: jnp.where(advancing, new, old)  # noqa: E731
        cache = new_cache.replace(length=keep(new_cache.length, cache.length),
                                  rope=keep(new_cache.rope, cache.rope))
        step_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, step)
        sampled, logp = sample_tokens(step_keys, logits, sampler)
        is_sampling = phase == sampling
        col = jnp.minimum(step, max_tokens - 1)
        tokens = tokens.at[:, col].set(jnp.where(is_sampling, sampled, tokens[:, col]))
        logps = logps.at[:, col].set(jnp.where(is_sampling, logp, logps[:, col]))
        mask = mask.at[:, col].set(mask[:, col] | is_sampling)
        got_eos = is_sampling & (sampled == eos)
        closed = closed | got_eos
        truncated = is_sampling & ~got_eos & (step == max_tokens - 1)
        phase = jnp.select([got_eos | (phase == feed_last), truncated, phase == feed_eos],
                           [feed_eos, feed_last, done], phase)
        token = jnp.where((phase == sampling) | truncated, sampled, eos)
        return step + 1, cache, token, phase, tokens, logps, mask, closed

    state = (jnp.int32(0), cache, jnp.full((b,), bos, jnp.int32),
             jnp.full((b,), sampling, jnp.int32), jnp.full((b, max_tokens), eos, jnp.int32),
             jnp.zeros((b, max_tokens), jnp.float32), jnp.zeros((b, max_tokens), bool),
             jnp.zeros((b,), bool))
    _, cache, _, _, tokens, logps, mask, closed = jax.lax.while_loop(cond, body, state)
    return cache, tokens, logps, mask, closed


def think_segment(tokens: jax.Array, mask: jax.Array, closed: jax.Array,
                  bos: int, eos: int) -> tuple[jax.Array, jax.Array]:
    """The reasoning as the text segment the cache holds: ``[bos] y (eos)``.

    Args:
      tokens, mask: ``[batch, T]`` from ``generate_think`` (``eos`` after the end).
      closed: ``[batch]`` whether the last sampled token is ``eos``.
    Returns:
      ``(ids [batch, T + 2], lengths [batch])``, right-padded with ``eos``.
    """
    b = tokens.shape[0]
    ids = jnp.concatenate([jnp.full((b, 1), bos, tokens.dtype), tokens,
                           jnp.full((b, 1), eos, tokens.dtype)], axis=1)
    lengths = 1 + jnp.sum(mask, axis=-1) + jnp.where(closed, 0, 1)
    return ids, lengths.astype(jnp.int32)


def denoise_sde_window(params, config: BagelConfig, schedule: Schedule, cache: KVCache,
                       init_keys: jax.Array, step_keys: jax.Array, window_start: jax.Array,
                       position_ids: jax.Array):
    """The image phase: ODE steps with a stochastic window; records the window steps.
    ``init_keys [B]`` draw the initial noise, ``step_keys [B]`` the window steps' noise.

    Returns ``(final [B, N, F], t [W], t_next [W], x_t, x_next, mean [B, W, N, F], logp [B, W])``.
    """
    b, n, f = cache.batch, position_ids.shape[0], config.latent_token_dim
    w = schedule.window_size
    grid = schedule.timesteps()
    noise = jax.vmap(lambda k: jax.random.normal(k, (n, f), jnp.float32))(init_keys)
    empty = jnp.zeros((b, w, n, f), jnp.float32)

    def step(carry, k):
        x, xs, x_nexts, means, logps = carry
        t, t_next = grid[k], grid[k + 1]
        v, _ = context.image_velocity(params, config, cache, x, jnp.full((b,), t), position_ids)
        if w == 0:  # no stochastic window (TextGRPO): every step is an ODE step
            return (sde.ode_step(x, v, t, t_next), xs, x_nexts, means, logps), None
        xi = jax.vmap(lambda key: jax.random.normal(key, (n, f), jnp.float32))(
            jax.vmap(jax.random.fold_in, (0, None))(step_keys, k))
        x_sde, mean, logp, _ = sde.sde_step(x, v, t, t_next, grid[1], schedule.noise_level,
                                           xi)
        in_window = (k >= window_start) & (k < window_start + w)
        x_next = jnp.where(in_window, x_sde, sde.ode_step(x, v, t, t_next))
        j = jnp.clip(k - window_start, 0, max(w - 1, 0))
        put = lambda buf, val: buf.at[:, j].set(jnp.where(in_window, val, buf[:, j]))  # noqa
        logps = logps.at[:, j].set(jnp.where(in_window, logp, logps[:, j]))
        return (x_next, put(xs, x), put(x_nexts, x_sde), put(means, mean), logps), None

    init = (noise, empty, empty, empty, jnp.zeros((b, w), jnp.float32))
    (final, xs, x_nexts, means, logps), _ = jax.lax.scan(
        step, init, jnp.arange(schedule.num_timesteps - 1))
    idx = window_start + jnp.arange(w)
    return final, grid[idx], grid[idx + 1], xs, x_nexts, means, logps


def decode_latents(ae_params, config: BagelConfig, tokens: jax.Array,
                   image_size: tuple[int, int], pieces: int = 1) -> jax.Array:
    """Latent tokens ``[B, N, F]`` -> uint8 images ``[B, H, W, 3]``, decoded in ``pieces``
    sequential steps (``trajectory.split_micro_batches``: with the batch split over devices,
    ``pieces`` = images per device decodes one image per device at a time; the decoder's
    full-resolution activations of a whole batch would not fit)."""
    h, w = latents.token_grid(*image_size, config.latent_downsample)

    def decode(x):
        latent = latents.unpatchify(x, h, w, config.latent_patch_size)
        return autoencoder.to_uint8(autoencoder.decode(ae_params, config.ae, latent))

    if pieces == 1:
        return decode(tokens)
    split = trajectory_lib.split_micro_batches(tokens, pieces)
    return trajectory_lib.merge_micro_batches(jax.lax.map(decode, split))


def _chain_keys(chains_key: jax.Array, index: jax.Array
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(text_keys, init_keys, step_keys)``, each ``[B]``: the keys of the chains of global
    indices ``index [B]`` (reasoning tokens, initial noise, window steps' noise)."""
    split = jax.vmap(lambda k: tuple(jax.random.split(k)))
    text_keys, image_keys = split(jax.vmap(jax.random.fold_in, (None, 0))(chains_key, index))
    return (text_keys, *split(image_keys))


def rollout_chains(params, ae_params, config: BagelConfig, rc: RolloutConfig,
                   system_ids: jax.Array | None, prompt_ids: jax.Array,
                   prompt_lengths: jax.Array, key: jax.Array, chain_offset: jax.Array,
                   decode_pieces: int = 1, group_pieces: int = 1) -> Rollout:
    """The rollout of ``rows x group_size / group_pieces`` chains (unjitted;
    ``make_rollout_call`` splits the chains over devices).

    Args:
      system_ids: ``[S]`` the system segment (used only with ``rc.think``) or None.
      prompt_ids, prompt_lengths: ``[rows, P]``, ``[rows]``: one prompt per row, or with
        ``group_pieces`` k each prompt in k consecutive rows, each row rolling out
        ``group_size / k`` of its group's chains (a group split over devices or calls: every
        row prefills its prompt).
      chain_offset: ``[]`` the global index of this batch's first chain (a chain's random
        numbers are ``fold_in(key, global chain index)``, whatever the split over devices,
        calls or rows).
      decode_pieces: see ``decode_latents``.
    """
    g = rc.group_size
    members = g // group_pieces  # chains per row
    system = system_ids if rc.think else None
    t_max = rc.max_think_tokens if rc.think else 0
    size = cache_size(0 if system is None else system.shape[0], prompt_ids.shape[1], t_max)
    _, cache = build_context(params, config, system, prompt_ids, prompt_lengths, size)
    cache = repeat_chains(cache, members)
    b = prompt_ids.shape[0] * members
    window_key, chains_key = jax.random.split(key)
    index = chain_offset + jnp.arange(b)  # the chains' global indices
    text_keys, init_keys, step_keys = _chain_keys(chains_key, index)
    if rc.think:
        cache, tokens, logps, mask, closed = generate_think(params, config, cache, text_keys,
                                                            rc.schedule.tokens, t_max)
    else:
        tokens = jnp.zeros((b, 0), jnp.int32)
        logps, mask, closed = jnp.zeros((b, 0)), jnp.zeros((b, 0), bool), jnp.zeros((b,), bool)
    window_start = jax.random.randint(window_key, (), rc.schedule.window_min_start,
                                      rc.schedule.window_max_start + 1)
    h, w = rc.schedule.token_grid(config)
    pos = jnp.asarray(latents.position_ids(h, w, config.max_latent_size))
    if rc.initial_noise == 'group':  # every chain of a group starts from its first chain's noise
        _, init_keys, _ = _chain_keys(chains_key, index // g * g)
    final, t, t_next, xs, x_nexts, means, logp = denoise_sde_window(
        params, config, rc.schedule, cache, init_keys, step_keys, window_start, pos)
    images = (decode_latents(ae_params, config, final, rc.schedule.image_size, decode_pieces)
              if rc.decode_images else jnp.zeros((b, 0, 0, 3), jnp.uint8))
    trajectory = Trajectory(
        prompt_ids=jnp.repeat(prompt_ids, members, 0),
        prompt_lengths=jnp.repeat(prompt_lengths, members, 0),
        think_tokens=tokens, think_logprobs=logps, think_mask=mask, think_closed=closed,
        t=t, t_next=t_next, x_t=xs, x_next=x_nexts, logp=logp, mean=means)
    return Rollout(trajectory=trajectory, window_start=window_start, final_latents=final,
                   images=images)


def make_rollout_call(config: BagelConfig, rc: RolloutConfig, mesh: Mesh, params_sharding,
                      system_len: int, prompt_len: int, group_pieces: int = 1):
    """One rollout call, jitted: ``call(params, ae_params, system_ids, prompt_ids [rows, P],
    prompt_lengths [rows], key, chain_offset) -> Rollout``, the chains split over all devices
    of ``mesh`` and the params placed by ``params_sharding`` (a pytree of shardings or one for
    all); ``chain_offset [] int32`` is the global index of the call's first chain; a row holds
    ``group_size / group_pieces`` chains (``rollout_chains``)."""
    chains = sharding.batch_sharding(mesh)
    rep = sharding.replicated(mesh)

    def call(params, ae_params, system_ids, prompt_ids, prompt_lengths, key, offset):
        chains_per_device = max(prompt_ids.shape[0] * rc.group_size // group_pieces
                                // mesh.size, 1)
        return rollout_chains(params, ae_params, config, rc, system_ids, prompt_ids,
                              prompt_lengths, key, offset, chains_per_device, group_pieces)

    return jax.jit(sharding.traced_on(mesh, call),
                   in_shardings=(params_sharding, rep, rep, chains, chains, rep, rep),
                   out_shardings=_out_specs(config, rc, mesh, system_len, prompt_len))


def _out_specs(config: BagelConfig, rc: RolloutConfig, mesh: Mesh, system_len: int,
               prompt_len: int) -> Rollout:
    """A ``Rollout`` of shardings: per-chain fields over all devices, shared ones replicated."""
    return trajectory_lib.chain_specs(rollout_shapes(config, rc, system_len, prompt_len, 1),
                                      sharding.batch_sharding(mesh), sharding.replicated(mesh))


def make_rollout_fn(config: BagelConfig, rc: RolloutConfig, mesh: Mesh, params_sharding=None,
                    calls: int = 1, group_pieces: int = 1):
    """The rollout, data-parallel over every device of ``mesh``.

    Returns ``fn(params, ae_params, system_ids [S] | None, prompt_ids [prompts, P],
    prompt_lengths [prompts], key) -> Rollout`` with the chain axis split over all devices.
    ``params_sharding``: where the sampling params live (default: replicated).
    ``group_pieces`` k: each prompt's group is rolled out as k rows of ``group_size / k``
    chains (on different devices or in different calls), so a batch of fewer prompts than
    devices, or a group too large for one device, still splits. ``calls``: the rows are
    rolled out in that many sequential calls of one program (``make_rollout_call``: the memory
    of ``rows / calls`` rows); ``prompts x k`` must be a multiple of the device count times
    ``calls``. Chain i's random numbers are ``fold_in(key, i)`` and the window start is the
    batch's, so the result depends neither on ``calls``, ``group_pieces`` nor on the split
    over devices.
    """
    if rc.group_size % group_pieces:
        raise ValueError(f'group_pieces={group_pieces} must divide the group of '
                         f'{rc.group_size} chains')
    rep = sharding.replicated(mesh)
    params_sharding = rep if params_sharding is None else params_sharding
    programs = {}
    members = rc.group_size // group_pieces  # chains per row

    def fn(params, ae_params, system_ids, prompt_ids, prompt_lengths, key):
        rows = prompt_ids.shape[0] * group_pieces
        if rows % (mesh.size * calls):
            raise ValueError(
                f'{prompt_ids.shape[0]} prompts in {group_pieces} piece(s) per group cannot be '
                f'split over {mesh.size} devices in {calls} calls: the pieces must be a '
                f'multiple of {mesh.size * calls}')
        shape = (0 if system_ids is None else system_ids.shape[0], prompt_ids.shape[1])
        if shape not in programs:
            call = make_rollout_call(config, rc, mesh, params_sharding, *shape, group_pieces)
            concat = jax.jit(lambda *parts: trajectory_lib.concat_chains(parts),
                             out_shardings=_out_specs(config, rc, mesh, *shape))
            programs[shape] = call, concat
        call, concat = programs[shape]
        ids = np.repeat(np.asarray(prompt_ids), group_pieces, axis=0)
        lengths = np.repeat(np.asarray(prompt_lengths), group_pieces, axis=0)
        n = rows // calls
        chains = sharding.batch_sharding(mesh)
        parts = [call(params, ae_params, system_ids,
                      sharding.host_to_global(ids[i:i + n], chains),
                      sharding.host_to_global(lengths[i:i + n], chains), key,
                      np.int32(i * members))
                 for i in range(0, rows, n)]
        return parts[0] if calls == 1 else concat(*parts)

    return fn


def rollout_shapes(config: BagelConfig, rc: RolloutConfig, system_len: int, prompt_len: int,
                   prompts: int) -> Rollout:
    """The ``Rollout`` of ``prompts`` prompts as ``ShapeDtypeStruct``s: ``jax.eval_shape`` of
    ``rollout_chains`` itself, so no shape is written twice."""
    params = nn.unbox(bagel.abstract_params(config))
    ae_params = jax.eval_shape(lambda k: autoencoder.init_params(config.ae, k), jax.random.key(0))
    sds = jax.ShapeDtypeStruct
    system = sds((system_len,), jnp.int32) if system_len else None
    return jax.eval_shape(
        lambda p, ae, s, ids, lens, k: rollout_chains(p, ae, config, rc, s, ids, lens, k,
                                                      jnp.int32(0)),
        params, ae_params, system, sds((prompts, prompt_len), jnp.int32),
        sds((prompts,), jnp.int32), jax.random.key(0))
