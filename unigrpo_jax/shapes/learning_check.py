"""The learning check: does the RL raise a reward whose optimum is obvious, term by term?

From the shipped ShapesEval SFT models, on fixed prompts (half with free colours, half asking for
red: the share of red can rise and fall), with the reward
``color_fraction`` (the share of the canvas drawn in red; ``shapes.reward``), TextGRPO (plans
that choose red), FlowGRPO (denoising steps that draw red) and UniGRPO (both) each train a few
dozen steps; two controls on UniGRPO: both learning rates 0 (the reward must not move) and the
reward negated (every advantage flips sign: the reward must fall). A failing check says "the
gradient is wrong", not "the recipe is weak". ``launch/check_learning.py`` runs it.

The measure: the mean training reward of the last ``window`` steps minus that of the first,
in units of its own batch-to-batch noise: the standard error of that difference when the steps'
rewards scatter as the learning-rate-0 control's do (``z``).
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

# Prompts whose colours are free (a plan may choose red, a drawing may draw it: the share of
# red can rise) and prompts that ask for red (it can fall: the negated reward's control).
PROMPTS = ('a photo of a circle', 'a photo of two triangles', 'a photo of three squares',
           'a photo of a circle and a square', 'a photo of a red circle',
           'a photo of a red square', 'a photo of two red triangles',
           'a photo of a red square and a circle')

# Each check: (the arm: configs/shapes_<arm>.py, the change to the config, the sign z must have).
CHECKS = {
    'textgrpo': ('textgrpo', 'learn', 1),
    'flowgrpo': ('flowgrpo', 'learn', 1),
    'unigrpo': ('unigrpo', 'learn', 1),
    'nft': ('nft', 'learn', 1),  # DiffusionNFT's image term alone (docs/nft.md)
    'unigrpo_lr0': ('unigrpo', 'lr0', 0),
    'unigrpo_flipped': ('unigrpo', 'flipped', -1),
}
Z_THRESHOLD = 3.0  # |z| beyond which a change is "well beyond the batch-to-batch noise"


def check_config(config: ml_collections.ConfigDict, change: str, prompt_file: str, steps: int,
                 seed: int) -> ml_collections.ConfigDict:
    """``config`` (a ShapesEval RL config of the check's mode) set up for the check: the fixed
    prompts of ``prompt_file`` (one batch per step), the ``color_fraction`` reward, ``steps``
    steps of one PPO epoch each (the first update's ratios are exactly 1: a plain policy
    gradient), no evaluation; ``change``: 'learn', 'lr0' (both learning rates 0) or 'flipped' (the
    reward negated)."""
    config = config.copy_and_resolve_references()
    config.update(total_steps=steps, batch_size=len(PROMPTS), eval_every=0,
                  checkpoint_every=steps, seed=seed, ppo_epochs=1)
    config.data.train = prompt_file
    config.reward = ml_collections.ConfigDict(dict(
        name='color_fraction',
        options=ml_collections.ConfigDict(dict(color='red',
                                               sign=-1.0 if change == 'flipped' else 1.0))))
    if change == 'lr0':
        config.optimizer.update(lr_und=0.0, lr_gen=0.0)
    elif change not in ('learn', 'flipped'):
        raise ValueError(f'unknown change {change!r}')
    return config


@dataclasses.dataclass(frozen=True)
class Verdict:
    check: str
    seed: int
    first: float   # mean training reward of the first `window` steps (sign-corrected)
    last: float    # of the last `window` steps
    z: float       # (last - first) / its batch-to-batch standard error
    passed: bool


def z_score(rewards: np.ndarray, window: int, noise: float) -> tuple[float, float, float]:
    """``(first, last, z)`` of per-step rewards ``[steps]``: the means of the first and last
    ``window`` steps and their difference over ``noise * sqrt(2 / window)`` (``noise``: the
    per-step std of the rewards without learning)."""
    rewards = np.asarray(rewards, np.float64)
    if len(rewards) < 2 * window:
        raise ValueError(f'{len(rewards)} steps: the check needs at least 2 x {window}')
    first, last = rewards[:window].mean(), rewards[-window:].mean()
    return float(first), float(last), float((last - first) / (noise * np.sqrt(2.0 / window)))


def judge(rewards: dict[tuple[str, int], np.ndarray], window: int) -> list[Verdict]:
    """The verdict of every ``(check, seed)``'s per-step training rewards (the flipped runs'
    rewards as the loop logs them: negated). The noise is the per-step std of the ``lr0``
    runs' rewards (pooled over their seeds)."""
    control = [np.asarray(r) for (name, _), r in rewards.items() if CHECKS[name][1] == 'lr0']
    if not control:
        raise ValueError('the check needs the learning-rate-0 control (unigrpo_lr0)')
    noise = float(np.sqrt(np.mean([np.var(r, ddof=1) for r in control])))
    out = []
    for (name, seed), r in sorted(rewards.items()):
        sign = CHECKS[name][2]
        first, last, z = z_score(np.asarray(r) * (-1.0 if CHECKS[name][1] == 'flipped' else 1.0),
                                 window, noise)
        passed = abs(z) < Z_THRESHOLD if sign == 0 else sign * z >= Z_THRESHOLD
        out.append(Verdict(name, seed, first, last, z, passed))
    return out
