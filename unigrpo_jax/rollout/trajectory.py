"""The rollout batch schema: what a chain's replay needs (``Trajectory``), the rollout's other
outputs (``Rollout``), and which fields are per chain.

Every array field of these dataclasses (and of ``rl.replay.TrainBatch``, which holds a
``Trajectory``) is either **per chain** (leading axis = the chain axis, sharded over the data
axes, indexed by a minibatch) or **shared** by all chains of the batch (marked with
``shared_field()``: the window times, the window start, the system prompt). ``map_fields``
walks that marking, so placements, minibatch selection, micro-batches and the rollout's output
shardings all derive from the dataclass definitions instead of restating them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import einops
import jax
import jax.numpy as jnp
from flax import struct

_SHARED = 'shared_by_chains'


# The key under which a loss puts per-chain arrays among its metrics (``train.step`` returns
# them placed like the batch: the RL terms' own old values, ``rl.objective.record_old``).
PER_CHAIN_METRICS = 'per_chain'


def shared_field():
    """A dataclass field that is the same for every chain (no chain axis)."""
    return struct.field(metadata={_SHARED: True})


def map_fields(per_chain: Callable, shared: Callable, tree):
    """``tree`` with ``per_chain(x)`` applied to each per-chain array and ``shared(x)`` to each
    shared one. ``tree``: a struct dataclass (fields marked by ``shared_field``; nested ones
    walked), a dict (every entry per chain unless it is such a dataclass) or one array."""
    if dataclasses.is_dataclass(tree):
        out = {}
        for f in dataclasses.fields(tree):
            value = getattr(tree, f.name)
            out[f.name] = (shared(value) if f.metadata.get(_SHARED)
                           else map_fields(per_chain, shared, value))
        return tree.replace(**out)
    if isinstance(tree, dict):
        return {k: map_fields(per_chain, shared, v) for k, v in tree.items()}
    return per_chain(tree)


def select_chains(tree, idx: jax.Array):
    """The chains ``idx [M]`` of a batch (shared fields unchanged)."""
    return map_fields(lambda x: x[idx], lambda x: x, tree)


def split_micro_batches(tree, micro_batches: int):
    """Per-chain ``[B, ...]`` -> ``[micro_batches, B / micro_batches, ...]`` (shared fields
    unchanged). Micro-batch j holds chains ``j, j + k, j + 2k, ...`` (k = micro_batches): with
    the chain axis split over devices in contiguous blocks, every micro-batch is split over
    all devices the same way, and no chain moves between devices."""
    return map_fields(lambda x: einops.rearrange(x, '(m k) ... -> k m ...', k=micro_batches),
                      lambda x: x, tree)


def merge_micro_batches(tree):
    """The inverse of ``split_micro_batches``."""
    return map_fields(lambda x: einops.rearrange(x, 'k m ... -> (m k) ...'), lambda x: x, tree)


def micro_batch(tree, j: jax.Array):
    """Micro-batch ``j`` of a ``split_micro_batches`` tree."""
    return map_fields(lambda x: x[j], lambda x: x, tree)


def concat_chains(trees):
    """Batches of the same structure joined along the chain axis (shared fields: the first's)."""
    per_chain = map_fields(lambda _: True, lambda _: False, trees[0])
    return jax.tree.map(lambda chain, *xs: jnp.concatenate(xs) if chain else xs[0], per_chain,
                        *trees)


def chain_specs(tree, per_chain, shared):
    """The same structure with ``per_chain`` / ``shared`` (e.g. shardings) as its leaves."""
    return map_fields(lambda _: per_chain, lambda _: shared, tree)


def num_chains(tree) -> int:
    """The size of the chain axis of a batch."""
    sizes = set()
    map_fields(lambda x: sizes.add(x.shape[0]), lambda x: None, tree)
    if len(sizes) != 1:
        raise ValueError(f'per-chain fields disagree on the number of chains: {sorted(sizes)}')
    return sizes.pop()


@struct.dataclass
class Trajectory:
    """What the replay needs of ``B`` chains (chain i of a rollout belongs to prompt
    ``i // group_size``). T = max_think_tokens (0 without thinking), W = window_size,
    N = latent tokens, F = latent_token_dim."""

    prompt_ids: jax.Array       # [B, P] the prompt segment [bos] prompt [eos], right-padded
    prompt_lengths: jax.Array   # [B]
    think_tokens: jax.Array     # [B, T] sampled reasoning tokens (eos included when sampled)
    think_logprobs: jax.Array   # [B, T] float32, log-prob under the sampling distribution
    think_mask: jax.Array       # [B, T] bool, True for sampled tokens
    think_closed: jax.Array     # [B] bool, the chain sampled <|im_end|> (not truncated)
    x_t: jax.Array              # [B, W, N, F] float32 state before each window step
    x_next: jax.Array           # [B, W, N, F] float32 sampled next state
    logp: jax.Array             # [B, W] float32 Gaussian log-prob of x_next (element mean)
    mean: jax.Array             # [B, W, N, F] float32 mean of the Gaussian step
    t: jax.Array = shared_field()       # [W] float32 time of each window step
    t_next: jax.Array = shared_field()  # [W] float32

    @property
    def think_lengths(self) -> jax.Array:
        return jnp.sum(self.think_mask, axis=-1)


@struct.dataclass
class Rollout:
    """One rollout batch: the chains' ``Trajectory`` and what is scored."""

    trajectory: Trajectory
    final_latents: jax.Array    # [B, N, F] float32
    images: jax.Array           # [B, H, W, 3] uint8 (empty [B, 0, 0, 3] if not decoded)
    window_start: jax.Array = shared_field()  # [] int32
