"""How well a model's image phase draws *given* plans, apart from the planning.

Each prompt gets ``samples`` random plans from the SFT data distribution
(``prompts.sample_layout``: free colours and cells uniform); the model draws each as
teacher-forced thinking (``evaluate.evaluate(plans=...)``). Every image is scored twice: drawn
exactly as planned (the detector finds the plan's objects and nothing else) and strictly
correct for its prompt. Results are grouped by what the plan asks of the drawer: how many
objects, whether they share one colour, and whether two of them sit in neighbouring cells
(8-neighbourhood), where a drawer that binds shapes to cells loosely mixes them up.

``cross`` separates planning from drawing between two models: one model's greedy plans drawn by
the other (e.g. the SFT model's plans drawn by the RL model: what RL changed in the drawing).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from unigrpo_jax.rewards import geneval
from unigrpo_jax.shapes import detector, evaluate, plan, prompts, world


def plan_kind(layout: world.Layout) -> str:
    """The group of a plan: ``'1 object'`` or ``'<n> objects, same|mixed colours, near|apart'``."""
    if len(layout) == 1:
        return '1 object'
    colours = 'same colour' if len({color for _, color, _, _ in layout}) == 1 else 'mixed colours'
    cells = [(row, col) for _, _, row, col in layout]
    near = any(max(abs(a[0] - b[0]), abs(a[1] - b[1])) == 1
               for i, a in enumerate(cells) for b in cells[i + 1:])
    return f'{len(layout)} objects, {colours}, {"near" if near else "apart"}'


def probe(run, tokenizer, metadata: list[dict], *, samples: int, cfg_scale: float,
          seed: int = 0, batch_size: int = 80) -> dict[str, dict]:
    """Draws ``samples`` random plans per prompt with a ``train.run_dir.Run`` (a thinking model).

    Returns ``{plan kind: {'plans': count, 'drawn_as_planned': fraction, 'strict': fraction}}``
    plus an ``'all'`` row.
    """
    if not run.think:
        raise ValueError(f'{run.directory} was trained without thinking: it takes no plans')
    rng = np.random.default_rng(seed)
    items = [m for m in metadata for _ in range(samples)]
    layouts = [prompts.sample_layout(m, rng) for m in items]
    result = evaluate.evaluate_run(run, tokenizer, items, think=True, cfg_scale=cfg_scale,
                                   seed=seed, batch_size=batch_size, plans=layouts)
    groups = defaultdict(list)
    for layout, image, correct in zip(layouts, result.images, result.correct):
        as_planned = evaluate.drawn_as_planned(detector.detect(image), layout)
        for kind in (plan_kind(layout), 'all'):
            groups[kind].append((as_planned, correct))
    return {kind: {'plans': len(rows), 'drawn_as_planned': float(np.mean([r[0] for r in rows])),
                   'strict': float(np.mean([r[1] for r in rows]))}
            for kind, rows in sorted(groups.items())}


def markdown_table(results: dict[str, dict[str, dict]]) -> str:
    """``{model name: probe() rows}`` (same prompts and seed) -> one table: a row per plan kind,
    a column per model with "% drawn as planned / % strict"."""
    names = list(results)
    kinds = sorted({kind for rows in results.values() for kind in rows})
    lines = ['| plans | count | ' + ' | '.join(f'{n}: drawn as planned / strict (%)'
                                               for n in names) + ' |',
             '|---|---|' + '---|' * len(names)]
    for kind in kinds:
        counts = {rows[kind]['plans'] for rows in results.values() if kind in rows}
        cells = [f'{100 * rows[kind]["drawn_as_planned"]:.1f} / {100 * rows[kind]["strict"]:.1f}'
                 if kind in rows else '' for rows in results.values()]
        lines.append(f'| {kind} | {"/".join(map(str, sorted(counts)))} | ' + ' | '.join(cells)
                     + ' |')
    return '\n'.join(lines) + '\n'


def cross(planner, drawer, tokenizer, metadata: list[dict], *, cfg_scale: float, seed: int = 0,
          batch_size: int = 80) -> dict[str, float]:
    """Strict accuracy per tag (and ``'overall'``) of ``drawer`` drawing ``planner``'s plans.

    Both are ``train.run_dir.Run`` of thinking models with the same tokenizer. The planner's
    greedy plans (as its evaluation makes them, same seed) are teacher-forced into the drawer;
    a prompt whose plan does not parse counts as wrong. Also returns ``'plan_parsed'``.
    """
    for run in (planner, drawer):
        if not run.think:
            raise ValueError(f'{run.directory} was trained without thinking: no plans')
    settings = dict(think=True, cfg_scale=cfg_scale, seed=seed, batch_size=batch_size)
    planned = evaluate.evaluate_run(planner, tokenizer, metadata, **settings)
    layouts = [plan.parse_plan(text) for text in planned.think_texts]
    parsed = [i for i, layout in enumerate(layouts) if layout is not None]
    correct = [False] * len(metadata)
    if parsed:
        drawn = evaluate.evaluate_run(drawer, tokenizer, [metadata[i] for i in parsed],
                                      plans=[layouts[i] for i in parsed], **settings)
        for i, ok in zip(parsed, drawn.correct):
            correct[i] = ok
    accuracy = geneval.tag_accuracy([(m['tag'], c) for m, c in zip(metadata, correct)])
    return {**accuracy, 'plan_parsed': len(parsed) / len(metadata)}
