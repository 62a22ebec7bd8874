"""AdamW with separate learning rates for the two experts, global-norm clipping.

Param groups (algorithm.md §6: understanding/reasoning expert 1e-6, generation/denoising expert
3e-5):

- ``gen``: the generation expert's layer weights (``language_model/layers/gen``), its final
  norm ``norm_gen``, and the flow-side heads ``time_embedder``, ``vae2llm``, ``llm2vae``;
- ``und``: everything else: the understanding expert's layers and final norm, ``lm_head``, the
  token embedding (read only by und-routed tokens: text and the image markers, so it belongs to
  the understanding side), the ViT and connector (unused by text-to-image, so their gradients
  are zero).
"""

from __future__ import annotations

import optax

from unigrpo_jax.convert.checkpoint import flatten, unflatten

GEN_PREFIXES = ('language_model/layers/gen/', 'language_model/norm_gen/', 'time_embedder/',
                'vae2llm/', 'llm2vae/')
GROUPS = ('und', 'gen')


def expert_of(path: str) -> str:
    return 'gen' if path.startswith(GEN_PREFIXES) else 'und'


def expert_labels(params):
    """The same tree as ``params`` with ``'und'`` / ``'gen'`` leaves."""
    return unflatten({p: expert_of(p) for p in flatten(params)})


def make_optimizer(c, total_updates: int = 0) -> optax.GradientTransformation:
    """From a config's ``optimizer`` section: ``lr_und``, ``lr_gen``, ``b1``, ``b2``, ``eps``,
    ``weight_decay``, ``grad_clip`` (global norm; 0 = off) and ``final_lr_fraction``: 1 keeps
    both rates constant (the paper); below 1 both decay along a cosine to that fraction over
    ``total_updates`` optimizer updates (RL steps x PPO epochs x minibatches)."""
    if not 0.0 < c.final_lr_fraction <= 1.0:
        raise ValueError(f'optimizer.final_lr_fraction={c.final_lr_fraction}; expected (0, 1]')
    if c.final_lr_fraction < 1.0 and total_updates < 1:
        raise ValueError('a decaying learning rate (optimizer.final_lr_fraction < 1) needs the '
                         f'number of updates; got total_updates={total_updates}')

    def adamw(lr):
        if c.final_lr_fraction < 1.0:
            lr = optax.cosine_decay_schedule(lr, total_updates, alpha=c.final_lr_fraction)
        return optax.adamw(lr, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay)
    per_expert = optax.multi_transform({'und': adamw(c.lr_und), 'gen': adamw(c.lr_gen)},
                                       expert_labels)
    if c.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(c.grad_clip), per_expert)
    return per_expert


def grad_norms(grads) -> dict[str, float]:
    """Global gradient norm per expert group and overall."""
    flat = flatten(grads)
    out = {}
    for g in GROUPS:
        out[f'grad_norm/{g}'] = optax.tree.norm([v for p, v in flat.items() if expert_of(p) == g])
    out['grad_norm/total'] = optax.tree.norm(list(flat.values()))
    return out
