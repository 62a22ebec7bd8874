"""The sharded train step of every objective: ``jax.jit`` with explicit in/out shardings.

Params (float32 master copy), optimizer state and frozen params (the RL reference, or a LoRA
base; none for SFT) are placed by the strategy's rule table; the batch's per-chain fields are
split over the data-parallel axes (``rollout.trajectory`` marks which fields are per chain);
the train state is donated. One call = one optimizer step on one minibatch, its gradient
accumulated over micro-batches (a memory setting: the update is the minibatch's). What differs
between RL, LoRA and SFT is only the injected ``loss``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh

from unigrpo_jax.model import bagel
from unigrpo_jax.model.config import BagelConfig
from unigrpo_jax.parallel import sharding
from unigrpo_jax.rollout import trajectory
from unigrpo_jax.train.optimizer import grad_norms

# ``loss(trainable, frozen, batch, step, totals) -> (scalar loss, metrics)``; ``step`` is the
# train state's step counter (e.g. for per-step noise), ``totals`` the minibatch-wide
# denominators when ``batch`` is one micro-batch of it (``make_train_step``).
Loss = Callable[[Any, Any, Any, jax.Array], tuple[jax.Array, dict]]
# A loss given as parts (a tuple of ``Loss``): each part is differentiated on its own, one after
# the other in every micro-step (the memory of the largest part, not of their sum); their values,
# gradients and same-named metrics add up, their per-chain values are merged.
Losses = Loss | tuple[Loss, ...]


@struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class Placement:
    """Shardings of everything the step touches, derived once from a strategy."""

    mesh: Mesh
    params: Any
    ref_params: Any
    state: Any
    batch: Any


def _key_name(entry) -> str:
    for attr in ('key', 'name', 'idx'):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def opt_state_shardings(optimizer, params_abstract, param_sh, mesh: Mesh):
    """Shardings of ``optimizer.init(params)``: every state leaf whose key path ends with a
    param's path (Adam's ``mu``/``nu``) is placed like that param; the rest (step counts) is
    replicated."""
    by_path = {tuple(_key_name(k) for k in path): sh
               for path, sh in jax.tree_util.tree_leaves_with_path(param_sh)}
    shapes = {tuple(_key_name(k) for k in path): a.shape
              for path, a in jax.tree_util.tree_leaves_with_path(params_abstract)}

    def place(path, leaf):
        names = tuple(_key_name(k) for k in path)
        for start in range(len(names)):
            tail = names[start:]
            if tail in by_path and shapes[tail] == leaf.shape:
                return by_path[tail]
        return sharding.replicated(mesh)

    return jax.tree_util.tree_map_with_path(place, jax.eval_shape(optimizer.init,
                                                                  params_abstract))


def placement(config: BagelConfig, optimizer, mesh: Mesh, rules, batch_example,
              frozen: bool = True) -> Placement:
    """Shardings for the state, the frozen params (``frozen=False``: there are none) and a
    batch like ``batch_example`` (arrays or ``ShapeDtypeStruct``s; a ``TrainBatch`` or a dict
    of per-chain arrays)."""
    boxed = bagel.abstract_params(config)
    param_sh = sharding.param_shardings(boxed, mesh, rules)
    opt_sh = opt_state_shardings(optimizer, nn.unbox(boxed), param_sh, mesh)
    rep = sharding.replicated(mesh)
    state_sh = TrainState(step=rep, params=param_sh, opt_state=opt_sh)
    per_chain = sharding.batch_sharding(mesh, trajectory.num_chains(batch_example))
    batch_sh = trajectory.chain_specs(batch_example, per_chain, rep)
    return Placement(mesh=mesh, params=param_sh, ref_params=param_sh if frozen else None,
                     state=state_sh, batch=batch_sh)


def init_state(params, optimizer, place: Placement) -> TrainState:
    """Places a float32 copy of ``params`` and a fresh optimizer state on the mesh (the copy is
    the step's to donate; the caller's params stay valid)."""
    params = jax.jit(lambda p: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), p),
                     out_shardings=place.params)(params)
    opt_state = jax.jit(optimizer.init, out_shardings=place.state.opt_state)(params)
    return TrainState(step=jax.device_put(jnp.int32(0), place.state.step), params=params,
                      opt_state=opt_state)


def reference_params(params, place: Placement, dtype=jnp.bfloat16):
    """The frozen reference: a copy in ``dtype``, sharded like the policy."""
    return jax.jit(lambda p: jax.tree.map(lambda x: x.astype(dtype), p),
                   out_shardings=place.ref_params)(params)


def _combine(metrics: dict, count: int) -> dict:
    """Per-micro-batch metrics ``[k]`` -> scalars: the max of ``*max*``, else the mean."""
    return {k: jnp.max(v) if 'max' in k else jnp.sum(v) / count for k, v in metrics.items()}


def _value_and_grad(loss: Losses, params, frozen, piece, step, shared):
    """``((value, metrics), grads)`` of ``loss`` or of its parts added up (``Losses``)."""
    if not isinstance(loss, tuple):
        return jax.value_and_grad(loss, has_aux=True)(params, frozen, piece, step, shared)
    (value, metrics), grads = _value_and_grad(loss[0], params, frozen, piece, step, shared)
    for part in loss[1:]:
        (v, m), g = jax.value_and_grad(part, has_aux=True)(params, frozen, piece, step, shared)
        per_chain = {**metrics.pop(trajectory.PER_CHAIN_METRICS, {}),
                     **m.pop(trajectory.PER_CHAIN_METRICS, {})}
        metrics = {**metrics, **{k: metrics[k] + x if k in metrics else x for k, x in m.items()}}
        if per_chain:
            metrics[trajectory.PER_CHAIN_METRICS] = per_chain
        value, grads = value + v, jax.tree.map(jnp.add, grads, g)
    return (value, metrics), grads


def accumulated_gradient(loss: Losses, params, frozen, batch, step, shared,
                         micro_batches: int, batch_sharding):
    """The gradient of ``loss`` at ``params`` over ``batch`` in ``micro_batches`` sequential
    pieces (``trajectory.split_micro_batches``, each constrained to ``batch_sharding``), added
    up: ``(grads, values [k], metrics {name: [k]}, per_chain {name: [k, B / k, ...]})``, the
    per-chain values being what the loss puts under ``trajectory.PER_CHAIN_METRICS``.
    ``shared``: the minibatch-wide denominators the loss divides by. The computation of every
    update (``make_train_step``) and of the RL old values (``rl_step.make_old_values_fn``)."""
    pieces = trajectory.split_micro_batches(batch, micro_batches)
    zeros = jax.tree.map(jnp.zeros_like, params)

    def accumulate(grads, j):
        piece = jax.lax.with_sharding_constraint(trajectory.micro_batch(pieces, j),
                                                 batch_sharding)
        (value, metrics), g = _value_and_grad(loss, params, frozen, piece, step, shared)
        per_chain = metrics.pop(trajectory.PER_CHAIN_METRICS, {})
        return jax.tree.map(jnp.add, grads, g), (value, metrics, per_chain)

    grads, (values, metrics, per_chain) = jax.lax.scan(accumulate, zeros,
                                                       jnp.arange(micro_batches))
    return grads, values, metrics, per_chain


def merge_per_chain(per_chain):
    """``accumulated_gradient``'s per-chain values ``[k, B / k, ...]`` -> ``[B, ...]`` in the
    batch's chain order."""
    return jax.tree.map(lambda x: einops.rearrange(x, 'k m ... -> (m k) ...'), per_chain)


def make_train_step(loss: Losses, optimizer, place: Placement, micro_batches: int = 1,
                    totals: Callable[[Any], Any] | None = None, recorded: bool = False):
    """``step(state, frozen, batch) -> (state, metrics)``, jitted and donating the state: one
    optimizer update on a minibatch, its gradient accumulated over ``micro_batches`` equal
    micro-batches (``trajectory.split_micro_batches``; memory of one micro-batch).

    A loss may put per-chain arrays among its metrics under ``trajectory.PER_CHAIN_METRICS``
    (the RL terms' own old values); ``recorded=True`` returns them as a third output
    ``{name: [B, ...]}`` placed like the batch (else they are dropped).

    ``loss(trainable, frozen, micro_batch, step, totals)`` (``rl_step.rl_loss``,
    ``lora.adapter_loss``, ``sft.objective.sft_loss``), or a tuple of such parts (``Losses``),
    is differentiated in its first argument;
    ``totals(minibatch)`` gives the minibatch-wide denominators the loss divides by (the RL
    objective's ``loss_totals``), so
    the micro-batches' losses and gradients add up to the minibatch's (None: the loss needs
    none; then ``micro_batches`` must be 1). A non-finite loss or gradient leaves params and
    optimizer state unchanged (``lax.cond``: no second copy of the state; the step counter
    still advances) and reports ``skipped = 1``.
    """
    if totals is None and micro_batches != 1:
        raise ValueError('micro-batches need the minibatch-wide totals of the loss')

    def step(state: TrainState, frozen, batch):
        shared = None if totals is None else totals(batch)
        grads, values, metrics, per_chain = accumulated_gradient(
            loss, state.params, frozen, batch, state.step, shared, micro_batches, place.batch)
        loss_value = jnp.sum(values)
        norms = grad_norms(grads)
        finite = jnp.isfinite(loss_value) & jnp.isfinite(norms['grad_norm/total'])

        def update(params, opt_state):
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        params, opt_state = jax.lax.cond(finite, update, lambda p, o: (p, o), state.params,
                                         state.opt_state)
        state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
        scalars = {**_combine(metrics, micro_batches), **norms,
                   'skipped': (~finite).astype(jnp.float32)}
        if not recorded:
            return state, scalars
        return state, scalars, merge_per_chain(per_chain)

    outputs = (place.state, sharding.replicated(place.mesh))
    if recorded:  # placed like the chains' advantages [B]: a prefix for every [B, ...] array
        outputs += (place.batch.advantages,)
    return jax.jit(sharding.traced_on(place.mesh, step),
                   in_shardings=(place.state, place.ref_params, place.batch),
                   out_shardings=outputs, donate_argnums=(0,))
