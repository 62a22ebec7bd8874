"""LoRA adapters on the decoder's projections, and the train step that trains only them.

A target kernel ``W`` of one expert (``language_model/layers/{und,gen}/{target}/kernel``,
stacked over layers) is replaced by ``W + (alpha / rank) * A @ B`` with ``A [layers, in, rank]``
and ``B [layers, rank, out]``, where ``in`` / ``out`` flatten the kernel's input / output axes::

    q_proj  [layers, embed, heads, head_dim]     in = embed,            out = heads * head_dim
    k_proj, v_proj [layers, embed, kv_heads, head_dim]  (likewise)
    o_proj  [layers, heads, head_dim, embed]     in = heads * head_dim, out = embed
    gate_proj, up_proj [layers, embed, mlp];  down_proj [layers, mlp, embed]

``B`` starts at zero, so the adapted model starts equal to the base. The base params are frozen
and double as the reference (the model with the adapters off), so no second copy of the weights
is kept. The adapters mirror the param tree (``language_model/layers/gen/q_proj/{a,b}``), so the
per-expert optimizer and gradient norms of ``optimizer.py`` apply to them unchanged.

Use::

    place = lora_placement(config, spec, optimizer, mesh, rules, batch)
    state = step.init_state(init_lora(params, spec, rng), optimizer, place)
    base = step.reference_params(params, place)          # frozen, bfloat16
    reference = rl_step.make_reference_fn(config, obj, place, micro_batches)
    train_step = step.make_train_step(adapter_loss(rl_step.rl_loss(config, obj), spec),
                                      optimizer, place, micro_batches,
                                      functools.partial(objective.loss_totals, obj=obj))
    state, metrics = train_step(state, base, reference(base, batch, key))

and roll out with ``merge(base, state.params, spec)``.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from unigrpo_jax.loading.checkpoint import flatten, unflatten
from unigrpo_jax.model import bagel
from unigrpo_jax.model.config import BagelConfig
from unigrpo_jax.parallel import sharding
from unigrpo_jax.train import step as step_lib

TARGETS = ('q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj')
EXPERTS = ('und', 'gen')
# Input axes of a kernel after its leading `layers` axis; every target not listed has one.
_IN_AXES = {'o_proj': 2}


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    """Which kernels get adapters and their size (``train.settings.lora_spec`` builds and
    checks it from a config). ``A ~ normal(1 / rank)`` (PEFT's gaussian init), ``B = 0``; the
    update is scaled by ``alpha / rank``."""

    rank: int
    alpha: float
    targets: tuple[str, ...]   # a subset of TARGETS
    experts: tuple[str, ...]   # a subset of EXPERTS

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def _kernel_paths(spec: LoraSpec) -> list[str]:
    return [f'language_model/layers/{e}/{t}/kernel' for e in spec.experts for t in spec.targets]


def _adapter_shapes(kernel_path: str, kernel_shape: tuple[int, ...], rank: int
                    ) -> tuple[tuple[int, int, int], tuple[int, int, int], int]:
    """``(a shape [layers, in, rank], b shape [layers, rank, out], number of input axes)``."""
    n_in = _IN_AXES.get(kernel_path.split('/')[-2], 1)
    layers, fan_in, fan_out = (kernel_shape[0], math.prod(kernel_shape[1:1 + n_in]),
                               math.prod(kernel_shape[1 + n_in:]))
    return (layers, fan_in, rank), (layers, rank, fan_out), n_in


def _adapter_prefix(kernel_path: str) -> str:
    return kernel_path.removesuffix('/kernel')


def init_lora(params, spec: LoraSpec, rng: jax.Array):
    """Fresh float32 adapters ``{.../{target}: {'a': [layers, in, rank], 'b': [layers, rank,
    out]}}`` for ``params`` (only their shapes are read: abstract params do)."""
    flat = flatten(params)
    paths = _kernel_paths(spec)
    out = {}
    for path, key in zip(paths, jax.random.split(rng, len(paths))):
        a_shape, b_shape, _ = _adapter_shapes(path, flat[path].shape, spec.rank)
        prefix = _adapter_prefix(path)
        out[f'{prefix}/a'] = jax.random.normal(key, a_shape, jnp.float32) / spec.rank
        out[f'{prefix}/b'] = jnp.zeros(b_shape, jnp.float32)
    return unflatten(out)


def abstract_lora(boxed_params, spec: LoraSpec):
    """The adapters' shapes boxed with logical axis names, from ``bagel.abstract_params``; feed
    it to ``sharding.param_shardings``. ``a``: ``('layers', <first input axis>, 'lora_rank')``,
    ``b``: ``('layers', 'lora_rank', <first output axis>)``, where a flattened ``heads * kv``
    axis keeps the name ``heads``; ``lora_rank`` is in no rule table, so it is replicated."""
    names = flatten(nn.get_partition_spec(boxed_params))
    shapes = flatten(nn.unbox(boxed_params))
    out = {}
    for path in _kernel_paths(spec):
        a_shape, b_shape, n_in = _adapter_shapes(path, shapes[path].shape, spec.rank)
        axes = tuple(names[path])
        prefix = _adapter_prefix(path)
        out[f'{prefix}/a'] = nn.LogicallyPartitioned(
            jax.ShapeDtypeStruct(a_shape, jnp.float32), ('layers', axes[1], 'lora_rank'))
        out[f'{prefix}/b'] = nn.LogicallyPartitioned(
            jax.ShapeDtypeStruct(b_shape, jnp.float32), ('layers', 'lora_rank', axes[1 + n_in]))
    return unflatten(out)


def merge(params, lora, spec: LoraSpec):
    """``params`` with ``kernel + scale * A @ B`` (reshaped to the kernel, in its dtype) for
    every target; everything else passed through. Pure; differentiable in both arguments."""
    flat, adapter = flatten(params), flatten(lora)
    for path in _kernel_paths(spec):
        kernel = flat[path]
        prefix = _adapter_prefix(path)
        # [layers, in, out] -> the kernel's [layers, *in_axes, *out_axes] (row-major, so the
        # flattened axes split exactly as the kernel's axes do).
        delta = jnp.einsum('lir,lro->lio', adapter[f'{prefix}/a'], adapter[f'{prefix}/b'])
        flat[path] = (kernel + spec.scale * delta.reshape(kernel.shape)).astype(kernel.dtype)
    return unflatten(flat)


def lora_placement(config: BagelConfig, spec: LoraSpec, optimizer, mesh, rules,
                   batch_example) -> step_lib.Placement:
    """A ``step.Placement`` whose state is the adapters' (``params``: adapter shardings from
    their logical names) and whose ``ref_params`` place the frozen base like the full model."""
    # The full model's placement gives the base and batch shardings; its optimizer state is
    # not used, so an optimizer without state keeps it empty.
    full = step_lib.placement(config, optax.identity(), mesh, rules, batch_example)
    boxed = abstract_lora(bagel.abstract_params(config), spec)
    lora_sh = sharding.param_shardings(boxed, mesh, rules)
    opt_sh = step_lib.opt_state_shardings(
        optimizer, nn.unbox(boxed), lora_sh, mesh)
    state = step_lib.TrainState(step=sharding.replicated(mesh), params=lora_sh, opt_state=opt_sh)
    return dataclasses.replace(full, params=lora_sh, state=state)


def adapter_loss(loss: step_lib.Losses, spec: LoraSpec) -> step_lib.Losses:
    """``loss`` of the adapted model (or each of its parts, ``step_lib.Losses``) as a loss of
    the adapters: ``state.params`` are the adapters and the frozen argument is the base, used
    both under the adapters (the policy) and alone (the reference): no second copy of the
    weights."""
    if isinstance(loss, tuple):
        return tuple(adapter_loss(part, spec) for part in loss)

    def adapted(lora, base, batch, step, totals):
        return loss(merge(base, lora, spec), base, batch, step, totals)
    return adapted
