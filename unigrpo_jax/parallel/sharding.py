"""Sharding strategies as rule tables from logical axis names to mesh axes.

Every param carries logical axis names (``embed``, ``mlp``, ``heads``, ``kv_heads``, ``kv``,
``vocab``, ``layers``, ...; see the model modules). A strategy maps some of them to mesh axes of
``(data, fsdp, tensor)``; unnamed axes are replicated. A mesh axis is used at most once per
param, and a dimension that its mesh axis does not divide stays replicated (e.g. 4 kv heads on
an 8-way tensor axis), so every strategy runs on every mesh.

Add a strategy by passing ``extra`` tables (``config.parallelism.rules``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

STRATEGIES: dict[str, dict[str, str]] = {
    # Pure data parallel: every param replicated.
    'dp': {},
    # FSDP: params sharded along their model width over the fsdp axis (ZeRO-3 style).
    'fsdp': {'embed': 'fsdp'},
    # FSDP + tensor parallel (Megatron style: heads/MLP/vocab split over the tensor axis).
    'fsdp_tp': {'embed': 'fsdp', 'mlp': 'tensor', 'heads': 'tensor', 'kv_heads': 'tensor',
                'vocab': 'tensor'},
    # Tensor parallel only.
    'tp': {'mlp': 'tensor', 'heads': 'tensor', 'kv_heads': 'tensor', 'vocab': 'tensor'},
}

# The batch dimension of activations and rollouts is split over the data-parallel axes.
BATCH_AXES = ('data', 'fsdp')


def strategy_rules(name: str, extra: Mapping[str, Mapping[str, str]] | None = None
                   ) -> dict[str, str]:
    tables = {**STRATEGIES, **(extra or {})}
    if name not in tables:
        raise ValueError(f'parallelism.strategy={name!r}; expected one of {sorted(tables)}')
    return dict(tables[name])


def spec_for(names: tuple, shape: tuple[int, ...], mesh: Mesh,
             rules: Mapping[str, str]) -> P:
    """The PartitionSpec of one array from its logical axis names."""
    used, out = set(), []
    for name, dim in zip(names, shape):
        axis = rules.get(name) if name is not None else None
        if axis is None or axis in used or dim % mesh.shape[axis]:
            out.append(None)
        else:
            out.append(axis)
            used.add(axis)
    return P(*out)


def param_shardings(boxed_abstract, mesh: Mesh, rules: Mapping[str, str]):
    """``NamedSharding`` pytree for params from their boxed (logically named) abstract tree."""
    specs = nn.get_partition_spec(boxed_abstract)
    shapes = nn.unbox(boxed_abstract)
    return jax.tree.map(
        lambda spec, s: NamedSharding(mesh, spec_for(tuple(spec), s.shape, mesh, rules)),
        specs, shapes, is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh, batch_size: int | None = None) -> NamedSharding:
    """Leading-axis sharding over the data-parallel axes (replicated over ``tensor``)."""
    axes = tuple(a for a in BATCH_AXES if mesh.shape[a] > 1) or None
    if batch_size is not None and axes and batch_size % _size(mesh, axes):
        raise ValueError(f'batch of {batch_size} is not divisible by the data-parallel size '
                         f'{_size(mesh, axes)} (mesh axes {axes})')
    return NamedSharding(mesh, P(axes))


def _size(mesh: Mesh, axes) -> int:
    n = 1
    for a in axes:
        n *= mesh.shape[a]
    return n


def traced_on(mesh: Mesh, fn):
    """``fn`` traced with ``mesh`` as the abstract mesh: kernels that must be partitioned by
    hand find it there (``model.attention``'s Pallas path wraps itself in a ``shard_map``).
    Apply to the body of every jitted program of the run."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args, **kwargs)
    return run


def constrain_batch(x: jax.Array) -> jax.Array:
    """``x`` with its axis 0 split over the batch axes (``BATCH_AXES`` whose sizes divide it) of
    the mesh the program is traced on (``traced_on``); unchanged outside one. For activations
    whose cheapest partitioning by XLA's cost model is not the batch's (e.g. the logits of a
    vocabulary head sharded along its contracting dim: every chain's full logits on every
    device)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    axes, size = [], 1
    for name in BATCH_AXES:
        if mesh.shape.get(name, 1) > 1 and x.shape[0] % (size * mesh.shape[name]) == 0:
            axes.append(name)
            size *= mesh.shape[name]
    return jax.lax.with_sharding_constraint(x, P(tuple(axes))) if axes else x


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def host_to_global(host, placement: NamedSharding) -> jax.Array:
    """``host`` (a numpy array every process holds whole, e.g. a batch's prompt ids) as one
    array placed by ``placement``; each process copies only the pieces its own devices hold,
    so it works when the mesh spans processes (one process: a ``device_put``)."""
    host = np.asarray(host)
    return jax.make_array_from_callback(host.shape, placement, lambda index: host[index])


def addressable_rows(array: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(rows [r] int64, values [r, ...])``: the rows of ``array`` (split along axis 0 only)
    that this process owns, in order: of the devices holding a copy of row piece k (its
    replicas, e.g. over a tensor axis), replica ``k mod copies`` owns it, so every row is owned
    by exactly one device of the run, and the copies share the work (e.g. scoring). One
    process: every row."""
    pieces, copies = {}, _copies(array)
    for shard in array.addressable_shards:
        rows = shard.index[0] if shard.index else slice(None)
        start, stop, _ = rows.indices(array.shape[0])
        piece = start // max(stop - start, 1)
        if shard.replica_id == piece % copies:
            pieces[start] = (np.arange(start, stop), shard.data)
    order = sorted(pieces)
    if not order:
        return np.zeros((0,), np.int64), np.zeros((0,) + array.shape[1:], array.dtype)
    return (np.concatenate([pieces[k][0] for k in order]),
            np.concatenate([np.asarray(pieces[k][1]) for k in order]))


def _copies(array: jax.Array) -> int:
    """How many devices of the run hold each piece of ``array`` (its replicas)."""
    indices = array.sharding.devices_indices_map(array.shape)
    first = next(iter(indices.values()))
    return sum(1 for index in indices.values() if index == first)