"""The total RL loss of a minibatch (algorithm.md §6): the terms of an objective on one replay.

``L = -J_text - lambda * J_image + regularisers``. ``objective.mode`` picks the slots
(algorithm.md §8): ``unigrpo`` (a text and an image term, the policy thinks), ``flowgrpo`` (the
image term only, no thinking), ``textgrpo`` (the text term only, thinking; images by the ODE).
``objective.image_term`` picks the image term among the registered ones (``rl.terms``):
``flow_grpo`` (the paper's FlowGRPO-Fast on an SDE window, ``rl/flow_grpo.py``) or ``nft``
(DiffusionNFT on the forward process of the final images, ``rl/nft.py``); the text term is
``text_grpo`` (``rl/text_grpo.py``). This module knows no term's math: it replays the context
once, asks each term for its share and adds them.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from unigrpo_jax.model.config import BagelConfig
from unigrpo_jax.rl import flow_grpo, nft, replay, terms, text_grpo  # noqa: F401 (registration)
from unigrpo_jax.rl.replay import TrainBatch, rebuild_context
from unigrpo_jax.rollout.rollout import RolloutConfig
from unigrpo_jax.rollout.schedule import Schedule
from unigrpo_jax.rollout.trajectory import PER_CHAIN_METRICS

MODES = ('unigrpo', 'flowgrpo', 'textgrpo')
TEXT_TERM = text_grpo.TERM.name


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """Static loss settings (hashable), built and checked by ``train.settings``. ``schedule``
    is the rollout's own (``RolloutConfig.schedule``): the replay samples nothing, it re-scores
    what the rollout sampled with the same settings."""

    mode: str
    image_term: str  # the registered image term (rl.terms) of modes that train the image
    text_clip: float
    flow_clip: float
    text_aggregation: str
    flow_weight: float  # lambda, the image term's weight
    regularizer: str
    velocity_mse_weight: float
    latent_kl_weight: float
    text_kl_weight: float
    dt_reweight: bool
    image_grad_to_context: bool
    nft_beta: float       # DiffusionNFT's mixing strength of the implicit policies
    nft_adv_clip: float   # DiffusionNFT's advantage range, mapped to an optimality in [0, 1]
    nft_timesteps: int    # forward-process points per chain of the NFT term
    schedule: Schedule

    @property
    def think(self) -> bool:
        return thinks(self.mode)

    @property
    def terms(self) -> tuple[terms.Term, ...]:
        """The objective's terms, text before image."""
        return term_list(self.mode, self.image_term)

    @property
    def image_blocks(self) -> int:
        """Image forwards per chain of one replay (the window steps, or NFT's points)."""
        return sum(t.image_blocks(self) for t in self.terms)

    @property
    def trains_text(self) -> bool:
        return any(t.slot == 'text' for t in self.terms)

    @property
    def trains_image(self) -> bool:
        """Whether an image term trains the denoising (FlowGRPO's, NFT's or one's own)."""
        return any(t.slot == 'image' for t in self.terms)


def thinks(mode: str) -> bool:
    """Whether the policy reasons before drawing in ``mode`` (all but FlowGRPO)."""
    return mode != 'flowgrpo'


def term_list(mode: str, image_term: str) -> tuple[terms.Term, ...]:
    """The terms of ``mode`` with the image term ``image_term``: the text term when the policy
    thinks, the image term unless the mode is TextGRPO."""
    out = (terms.get(TEXT_TERM, 'text'),) if thinks(mode) else ()
    if mode != 'textgrpo':
        out += (terms.get(image_term, 'image'),)
    return out


def has_window(mode: str, image_term: str) -> bool:
    """Whether the rollout draws an SDE window: a term of the objective needs one (FlowGRPO's
    image term; TextGRPO's and NFT's images are drawn by the ODE alone)."""
    return any(t.needs_window for t in term_list(mode, image_term))


def prepare(ref_params, config: BagelConfig, batch: TrainBatch, obj: ObjectiveConfig,
            key: jax.Array) -> TrainBatch:
    """``batch`` with its terms' per-chain preparations in ``batch.extras``: the frozen
    reference's outputs (one replay of the reference, only when a term uses it) and whatever a
    term draws once per rollout batch from ``key``. They depend only on the rollout, so one call
    per rollout batch serves every epoch and minibatch."""
    ctx = None
    if any(t.uses_reference(obj) for t in obj.terms):
        ctx = terms.Context(*rebuild_context(ref_params, config, batch, obj.think))
    extras = dict(batch.extras)
    for i, t in enumerate(obj.terms):
        extras.update(t.prepare(ref_params, config, batch,
                                ctx if t.uses_reference(obj) else None, obj,
                                jax.random.fold_in(key, i)))
    return jax.lax.stop_gradient(batch.replace(extras=extras))


def batch_shapes(config: BagelConfig, rc: RolloutConfig, obj: ObjectiveConfig,
                 system_len: int, prompt_len: int, chains: int) -> TrainBatch:
    """``replay.train_batch_shapes`` of ``chains`` chains with this objective's ``prepare``."""
    return replay.train_batch_shapes(
        config, rc, system_len, prompt_len, chains,
        reference=lambda params, batch: prepare(params, config, batch, obj,
                                                jax.random.key(0)))


def loss_totals(batch: TrainBatch, obj: ObjectiveConfig) -> dict[str, jax.Array]:
    """The minibatch-wide denominators of the terms (see ``losses``): the loss of a
    micro-batch divided by them is its share, and the shares add up to the minibatch's loss.
    ``weight`` (the policy-gradient terms' chain weight) is scaled by the batch's
    ``weight_scale`` (``rl.compaction``); ``reg_weight`` (the regularisers' and the
    diagnostics') is this batch's own. The text term adds ``text`` (scaled by ``token_scale``),
    ``reg_text`` and ``tokens``."""
    w = batch.sample_weight
    reg_weight = jnp.maximum(jnp.sum(w), 1.0)
    totals = {'chains': jnp.float32(w.shape[0]), 'weight': reg_weight * batch.weight_scale,
              'reg_weight': reg_weight}
    for t in obj.terms:
        totals.update(t.totals(batch, obj))
    return totals


def loss_fn(params, batch: TrainBatch, config: BagelConfig, obj: ObjectiveConfig,
            totals: dict[str, jax.Array] | None = None,
            slots: tuple[str, ...] | None = None) -> tuple[jax.Array, dict]:
    """The loss (to minimise) of ``batch``, a minibatch or one micro-batch of it, and metrics.
    ``slots``: only the terms of these slots (``terms.SLOTS``; None: all), on their own replay
    of the context: the losses of a partition of the slots add up to the whole loss
    (``parallelism.split_terms``).

    ``totals``: ``loss_totals`` of the whole minibatch (default: of ``batch``); the loss is
    then this micro-batch's share, and the loss terms among the metrics are scaled to
    minibatch estimates (their mean over equal micro-batches is the minibatch's value). The
    terms' preparations come with the batch (``prepare``). The old values of the chains with
    ``batch.fresh_old`` are this forward's own (stop-gradient), else the recorded ones;
    ``metrics[PER_CHAIN_METRICS]`` holds this forward's per-chain values (``record_old``).
    """
    if totals is None:
        totals = loss_totals(batch, obj)
    share = batch.sample_weight.shape[0] / totals['chains']  # this micro-batch's fraction
    ctx = terms.Context(*rebuild_context(params, config, batch, obj.think))
    fresh = batch.fresh_old > 0  # [B]: the old values are this forward's own
    loss = jnp.float32(0.0)
    metrics, recorded = {}, {}
    chosen = [t for t in obj.terms if slots is None or t.slot in slots]
    for t in chosen:
        pieces, m, r = t.loss(params, config, batch, ctx, obj, totals, fresh)
        for piece in pieces:
            loss += piece
        metrics.update(m)
        recorded.update(r)
    metrics['loss'] = loss / share
    if chosen[:1] == list(obj.terms[:1]):  # once per objective, with its first term
        metrics['think/length'] = jnp.mean(batch.trajectory.think_lengths.astype(jnp.float32))
    metrics[PER_CHAIN_METRICS] = recorded
    return loss, metrics


def record_old(batch: TrainBatch, chains: jax.Array, recorded: dict,
               obj: ObjectiveConfig) -> TrainBatch:
    """The batch whose ``chains [M]`` keep ``recorded`` (a train step's own stop-gradient
    per-chain values, ``loss_fn``'s ``PER_CHAIN_METRICS``) as their old values, and
    ``fresh_old = 0``: later updates compare against exactly the computation that the first
    one differentiated."""
    for t in obj.terms:
        batch = t.record(batch, chains, recorded)
    return batch.replace(fresh_old=batch.fresh_old.at[chains].set(0.0))
