"""Loss terms by name: what one RL objective term declares, and the registry of them.

A term trains one slot of the policy: ``'text'`` (the reasoning tokens) or ``'image'`` (the
denoising). ``rl.objective`` composes an objective from at most one term per slot
(``objective.mode`` picks the slots, ``objective.image_term`` the image term) and runs them on
one replay of the rollout's context. A term is one module that builds a ``Term`` and registers
it, the way rewards register (``rewards.registry``)::

    TERM = terms.register(terms.Term(name='flow_grpo', slot='image', needs_window=True, ...))

The built-in terms (``text_grpo``, ``flow_grpo``, ``nft``) are the modules of ``rl`` that
``objective`` imports; a term of one's own registers from a module imported before the config
is checked.

A term's functions (``obj``: the static ``objective.ObjectiveConfig``; ``ctx``: the
``Context`` of a replay; ``batch``: a ``replay.TrainBatch``):

- ``prepare(ref_params, config, batch, ctx, obj, key) -> {name: [B, ...]}``: per-chain arrays
  computed once per rollout batch, before any update, into ``batch.extras`` (the frozen
  reference's outputs, points the term trains on, initial old values). ``ctx`` is the
  reference's replay (None when ``uses_reference(obj)`` is False: the term needs no forward).
- ``totals(batch, obj) -> {name: []}``: the term's minibatch-wide denominators (added to the
  objective's own ``chains``, ``weight`` and ``reg_weight``).
- ``loss(params, config, batch, ctx, obj, totals, fresh) -> (pieces, metrics, recorded)``: the
  term's share of the loss of a micro-batch as a list of scalars (already weighted; the
  objective adds every term's pieces in order, so the sum is associated as one expression),
  its metrics as minibatch estimates, and its per-chain stop-gradient values that later updates
  of these chains take as old values. ``fresh [B]`` bool: the chains whose old values are this
  forward's own (their first update).
- ``record(batch, chains, recorded) -> batch``: where those values are kept
  (``record_in_trajectory`` for values that are trajectory fields).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax

from unigrpo_jax.model.kv_cache import KVCache

SLOTS = ('text', 'image')


@dataclasses.dataclass(frozen=True)
class Context:
    """One replay of the rollout's context: its KV cache and, when the policy thinks, the
    reasoning segment's hidden states ``[B, T + 2, embed]`` (``replay.rebuild_context``)."""

    cache: KVCache
    think_hidden: jax.Array | None


@dataclasses.dataclass(frozen=True)
class Term:
    """One loss term (see the module docstring for its functions' signatures)."""

    name: str
    slot: str             # 'text' or 'image': what it trains
    needs_window: bool    # the rollout draws an SDE window of stored steps for it
    regularizers: tuple[str, ...]  # the objective.regularizer values it supports (image terms)
    # The metric of the rollout-vs-update disagreement on the scale of the term's own ratio
    # (max over the chains, checked against config.parity_bounds[slot]); None: the term has no
    # likelihood of the rollout's samples to compare (NFT).
    parity_metric: str | None
    image_blocks: Callable  # (obj) -> int: image forwards per chain per replay (0: none)
    uses_reference: Callable   # (obj) -> bool: prepare needs the frozen reference's replay
    prepare: Callable
    totals: Callable
    loss: Callable
    record: Callable


_terms: dict[str, Term] = {}


class UnknownTermError(ValueError):
    """No term is registered under a name, or it fills another slot."""


def record_in_trajectory(*fields: str) -> Callable:
    """A term's ``record`` that keeps its recorded values in the trajectory fields of the same
    names (the rollout's own old values, overwritten for the recorded chains)."""
    def record(batch, chains, recorded):
        traj = batch.trajectory
        return batch.replace(trajectory=traj.replace(
            **{f: getattr(traj, f).at[chains].set(recorded[f]) for f in fields}))
    return record


def register(term: Term) -> Term:
    """Registers ``term`` under its name (a second registration of a name must be the same
    term) and returns it."""
    if term.slot not in SLOTS:
        raise ValueError(f'term {term.name!r}: slot {term.slot!r} is not one of {SLOTS}')
    if _terms.get(term.name, term) is not term:
        raise ValueError(f'a different term is already registered as {term.name!r}')
    _terms[term.name] = term
    return term


def names(slot: str) -> tuple[str, ...]:
    """The registered terms that fill ``slot``, sorted."""
    return tuple(sorted(n for n, t in _terms.items() if t.slot == slot))


def get(name: str, slot: str) -> Term:
    """The term registered as ``name``, which must fill ``slot``."""
    term = _terms.get(name)
    if term is None or term.slot != slot:
        raise UnknownTermError(f'no {slot} term {name!r}; registered: {names(slot)}')
    return term
