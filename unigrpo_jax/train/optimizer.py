"""AdamW with separate learning rates for the two experts, global-norm clipping.

Param groups (algorithm.md §6: understanding/reasoning expert 1e-6, generation/denoising expert
3e-5):

- ``gen``: the generation expert's layer weights (``language_model/layers/gen``), its final
  norm ``norm_gen``, and the flow-side heads ``time_embedder``, ``vae2llm``, ``llm2vae``;
- ``und``: everything else: the understanding expert's layers and final norm, ``lm_head``, the
  token embedding (read only by und-routed tokens: text and the image markers, so it belongs to
  the understanding side), the ViT and connector (unused by text-to-image, so their gradients
  are zero).

``ema_decay`` > 0 chains ``params_ema`` after AdamW: the optimizer state then also holds an
exponential moving average of the params (updated after every optimizer update), which
evaluation and sampling use in place of the params (``evaluated_params``; flow_grpo evaluates
its EMA too).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from unigrpo_jax.loading.checkpoint import flatten, unflatten

GEN_PREFIXES = ('language_model/layers/gen/', 'language_model/norm_gen/', 'time_embedder/',
                'vae2llm/', 'llm2vae/')
GROUPS = ('und', 'gen')


def expert_of(path: str) -> str:
    return 'gen' if path.startswith(GEN_PREFIXES) else 'und'


def expert_labels(params):
    """The same tree as ``params`` with ``'und'`` / ``'gen'`` leaves."""
    return unflatten({p: expert_of(p) for p in flatten(params)})


def learning_rate(c, lr: float, total_updates: int):
    """The schedule of one expert's rate ``lr``: a linear warm-up from 0 over
    ``c.warmup_steps`` updates (0: none) into a cosine decay to ``lr * c.final_lr_fraction`` at
    ``total_updates``; without warm-up, ``final_lr_fraction = 1`` keeps ``lr`` constant."""
    if c.warmup_steps > 0:
        warmup = max(1, min(c.warmup_steps, total_updates - 1))
        return optax.warmup_cosine_decay_schedule(
            0.0, lr, warmup, max(total_updates, warmup + 1), end_value=lr * c.final_lr_fraction)
    if c.final_lr_fraction < 1.0:
        return optax.cosine_decay_schedule(lr, total_updates, alpha=c.final_lr_fraction)
    return lr


def make_optimizer(c, total_updates: int) -> optax.GradientTransformation:
    """From a config's ``optimizer`` section (checked by ``train.settings.check_optimizer``):
    AdamW (``b1``, ``b2``, ``eps``, ``weight_decay``) with the rates ``lr_und`` / ``lr_gen``
    of the two expert groups on the schedule of ``learning_rate``, after a global-norm clip
    (``grad_clip``; 0 = off). ``total_updates``: the optimizer updates of the run (RL steps x
    PPO epochs x minibatches; SFT steps)."""
    if (c.final_lr_fraction < 1.0 or c.warmup_steps > 0) and total_updates < 1:
        raise ValueError('a learning-rate schedule (optimizer.final_lr_fraction < 1 or '
                         'warmup_steps > 0) needs the number of updates; got '
                         f'total_updates={total_updates}')

    def adamw(lr):
        return optax.adamw(learning_rate(c, lr, total_updates), b1=c.b1, b2=c.b2, eps=c.eps,
                           weight_decay=c.weight_decay)
    parts = [optax.multi_transform({'und': adamw(c.lr_und), 'gen': adamw(c.lr_gen)},
                                   expert_labels)]
    if c.grad_clip > 0:
        parts.insert(0, optax.clip_by_global_norm(c.grad_clip))
    if c.ema_decay > 0:
        parts.append(params_ema(c.ema_decay))
    return optax.chain(*parts) if len(parts) > 1 else parts[0]


class ParamsEma(NamedTuple):
    """``params_ema``'s state: the moving average, float32, a tree like the params."""

    ema: Any


def params_ema(decay: float) -> optax.GradientTransformation:
    """Passes the updates through unchanged and keeps ``ema <- decay * ema + (1 - decay) *
    (params + updates)`` in its state (it must come last in a chain: it sees the final updates).
    Starts at the initial params, without bias correction: after n updates they keep the weight
    ``decay ** n`` (0.9: 3e-5 after 100). ``decay`` per optimizer update (an RL step makes
    ``ppo_epochs x num_minibatches`` of them). Under LoRA the trained params are the adapters:
    the average is the adapters', merged into the base like the adapters themselves."""

    def init(params):
        return ParamsEma(ema=jax.tree.map(lambda p: jnp.array(p, jnp.float32), params))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError('params_ema needs the params (optimizer.update(g, s, params))')
        new = optax.apply_updates(params, updates)
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p.astype(jnp.float32),
                           state.ema, new)
        return updates, ParamsEma(ema=ema)

    return optax.GradientTransformation(init, update)


def evaluated_params(params, opt_state):
    """The params evaluation and sampling use: the moving average of ``params_ema`` when the
    optimizer keeps one (``ema_decay`` > 0), else ``params``."""
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, ParamsEma))
             if isinstance(s, ParamsEma)]
    return found[0].ema if found else params


def grad_norms(grads) -> dict[str, float]:
    """Global gradient norm per expert group and overall."""
    flat = flatten(grads)
    out = {}
    for g in GROUPS:
        out[f'grad_norm/{g}'] = optax.tree.norm([v for p, v in flat.items() if expert_of(p) == g])
    out['grad_norm/total'] = optax.tree.norm(list(flat.values()))
    return out
