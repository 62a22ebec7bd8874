"""RL gains over seeds: each arm's change of overall strict accuracy over its SFT starting
point, per seed, and the per-seed difference of two arms' gains (``launch/shapes_results.py``
writes them, docs/results.md and the demo report quote them).

``results`` are ``shapes.evaluate.sweep`` rows per seed: ``{row name: [{'think=on cfg=2':
{tag: accuracy, ..., 'overall': accuracy}, ...} for each seed]}``, seed order the same in
every row (an RL run and its SFT model evaluated under the same seed: paired).
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def sample_std(values: np.ndarray) -> float:
    """The sample standard deviation over seeds (ddof 1; 0 for one seed)."""
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def overall(per_seed: list[dict], setting: str) -> np.ndarray:
    """``[seeds]`` overall strict accuracy (%) of a row's runs under ``setting`` (a row key's
    ending, e.g. ``'cfg=2'``)."""
    return 100 * np.array([next(v for k, v in r.items() if k.endswith(setting))['overall']
                           for r in per_seed])


def spread(values: np.ndarray) -> dict:
    """Per-seed ``values``, their mean, sample std, minimum and the 95% Student-t interval of
    the mean (NaN for one seed)."""
    n = len(values)
    half = (float(stats.t.ppf(0.975, n - 1)) * sample_std(values) / np.sqrt(n) if n > 1
            else float('nan'))
    mean = float(np.mean(values))
    return {'values': [round(float(v), 2) for v in values], 'mean': mean,
            'std': sample_std(values), 'min': float(np.min(values)),
            'ci95': [mean - half, mean + half]}


def gains(results: dict[str, list[dict]], settings: list[str], starts: dict[str, str],
          paired: tuple[str, str] | None = None) -> dict:
    """``{arm: {setting: {'sft', 'rl', 'gain'}}}`` (each a ``spread``) for every arm of
    ``starts`` (``{arm row: its SFT row}``) in ``results``; with ``paired = (a, b)`` (both in
    ``results``) also ``'paired': {'arms': [a, b], setting: spread(gain of a - gain of b)}``,
    the gains differenced seed by seed."""
    out = {}
    for arm, start in starts.items():
        if arm not in results:
            continue
        out[arm] = {}
        for setting in settings:
            sft, rl = overall(results[start], setting), overall(results[arm], setting)
            if len(sft) != len(rl):
                raise ValueError(f'{arm}: {len(rl)} seeds but {start} has {len(sft)}')
            out[arm][setting] = {'sft': spread(sft), 'rl': spread(rl), 'gain': spread(rl - sft)}
    if paired and all(arm in out for arm in paired):
        a, b = paired
        out['paired'] = {'arms': [a, b], **{
            setting: spread(np.array(out[a][setting]['gain']['values']) -
                            np.array(out[b][setting]['gain']['values']))
            for setting in settings}}
    return out


def markdown(summary: dict, settings: list[str]) -> str:
    """``gains``' summary as markdown tables (points of overall strict accuracy)."""
    lines = ['| arm | setting | SFT | RL | change per seed | mean ± std | min |',
             '|---|---|---|---|---|---|---|']
    for arm, by_setting in summary.items():
        if arm == 'paired':
            continue
        for setting in settings:
            g = by_setting[setting]
            lines.append(f'| {arm} | {setting} | {g["sft"]["mean"]:.1f} | {g["rl"]["mean"]:.1f} '
                         f'| {" / ".join(f"{v:+.1f}" for v in g["gain"]["values"])} | '
                         f'{g["gain"]["mean"]:+.1f} ± {g["gain"]["std"]:.1f} | '
                         f'{g["gain"]["min"]:+.1f} |')
    if 'paired' in summary:
        a, b = summary['paired']['arms']
        lines += ['', f'Paired by seed, {a} gain minus {b} gain (points):', '',
                  '| setting | per seed | mean | 95% interval (t) |', '|---|---|---|---|']
        for setting in settings:
            d = summary['paired'][setting]
            lines.append(f'| {setting} | {" / ".join(f"{v:+.1f}" for v in d["values"])} | '
                         f'{d["mean"]:+.1f} | [{d["ci95"][0]:+.1f}, {d["ci95"][1]:+.1f}] |')
    return '\n'.join(lines) + '\n'
