"""ShapesEval evaluation of a Bagel model: images from prompts, detector, GenEval accuracy.

For each prompt (``data/shapes_eval/eval_prompts.jsonl``): ``generate.generate_eval`` (greedy
thinking when ``think``, then Bagel's Euler ODE with text classifier-free guidance, no system
segment), ``detector.detect`` on the image, ``geneval.strict_correct`` with the world's relation
margin; accuracy per tag and overall (mean of the tags). Also reported, for thinking runs: how
many plans parse (``plan.parse_plan``) and how many parsed plans satisfy the prompt themselves
(a plan error vs a drawing error), and how many images draw exactly their plan.
"""

from __future__ import annotations

import dataclasses
import json
import os
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np

from unigrpo_jax.loading import tokenizer as tokenizer_lib
from unigrpo_jax.model.config import BagelConfig
from unigrpo_jax.rewards import geneval
from unigrpo_jax.rollout import eval_sampler, generate
from unigrpo_jax.shapes import detector, plan, prompts, reward, world


@dataclasses.dataclass
class EvalResult:
    """One evaluation run over ``n`` prompts."""

    metadata: list            # [n] GenEval metadata
    images: np.ndarray        # [n, H, W, 3] uint8
    think_texts: list         # [n] decoded thinking ('' without thinking)
    correct: list             # [n] strict correctness
    accuracy: dict            # tag -> accuracy, 'overall'
    # Fractions: extra_objects (images holding more objects than the prompt names: what
    # GenEval's rules do not check), plan_parsed / plan_correct / drawn_as_planned (think only).
    stats: dict


def load_prompts(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def subset(metadata: list[dict], per_tag: int) -> list[dict]:
    """The first ``per_tag`` prompts of each tag (a quick evaluation)."""
    seen: dict[str, int] = {}
    out = []
    for m in metadata:
        if seen.get(m['tag'], 0) < per_tag:
            out.append(m)
            seen[m['tag']] = seen.get(m['tag'], 0) + 1
    return out


def layout_detections(layout: world.Layout) -> list[dict]:
    """The detections an exact drawing of ``layout`` gives (for scoring a plan by itself)."""
    return [dict({'class': shape, 'color': color}, center=world.cell_center(row, col))
            for shape, color, row, col in layout]


def drawn_as_planned(detections: list[dict], layout: world.Layout) -> bool:
    """Whether the detections are exactly the plan's objects (shape, colour, cell)."""
    found = sorted((d['class'], d['color'], *d['cell']) for d in detections)
    return found == sorted(layout)


def evaluate(params, config: BagelConfig, tokenizer, metadata: list[dict], *, think: bool,
             sampler: eval_sampler.SamplerConfig, max_think_tokens: int, prompt_len: int,
             image_size=(32, 32), batch_size: int = 80, seed: int = 0,
             ae_params=None, plans: list | None = None) -> EvalResult:
    """Generates one image per prompt and scores it (see the module docstring).

    ``ae_params``: the autoencoder's params (``None``: the identity autoencoder's empty tree).
    ``plans``: ``[n]`` layouts to draw as given plans (teacher-forced thinking; ``think`` must be
    on) instead of the model's own plans.
    """
    if plans is not None and (not think or len(plans) != len(metadata)):
        raise ValueError(f'plans need think=True and one layout per prompt; got think={think}, '
                         f'{len(plans)} plans for {len(metadata)} prompts')
    params = jax.tree.map(jnp.asarray, params)
    images, texts = [], []
    for start in range(0, len(metadata), batch_size):
        chunk = metadata[start:start + batch_size]
        padded = chunk + [chunk[-1]] * (batch_size - len(chunk))  # one compiled shape
        ids, lengths = tokenizer_lib.encode_segments(tokenizer, config.tokens,
                                                     [m['prompt'] for m in padded], prompt_len)
        key = jax.random.fold_in(jax.random.key(seed), start // batch_size)
        forced = None
        if plans is not None:
            texts_in = [plan.plan_text(p) for p in plans[start:start + batch_size]]
            texts_in += [texts_in[-1]] * (batch_size - len(chunk))
            forced = tuple(map(jnp.asarray, tokenizer_lib.encode_segments(
                tokenizer, config.tokens, texts_in, max_think_tokens + 2, what='think')))
        imgs, tokens, mask = generate.generate_eval(
            params, ae_params or {}, config, sampler, None, jnp.asarray(ids),
            jnp.asarray(lengths), key, think_tokens=max_think_tokens if think else 0,
            token_sampler=generate.GREEDY, image_size=tuple(image_size), forced_think=forced)
        imgs, tokens, mask = np.asarray(imgs), np.asarray(tokens), np.asarray(mask)
        images.append(imgs[:len(chunk)])
        for i in range(len(chunk)):
            if plans is not None:
                texts.append(plan.plan_text(plans[start + i]))
            else:
                texts.append(tokenizer.decode(tokens[i][mask[i]], skip_special_tokens=True)
                             if think else '')
    images = np.concatenate(images)
    threshold = world.RELATION_THRESHOLD_PX
    correct, parsed, plan_ok, as_planned, extra = [], 0, 0, 0, 0
    for m, image, text in zip(metadata, images, texts):
        detections = detector.detect(image)
        extra += len(detections) > reward.named_objects(m)
        correct.append(geneval.strict_correct(detections, m, threshold=threshold))
        layout = plan.parse_plan(text) if think else None
        if layout is not None:
            parsed += 1
            plan_ok += geneval.strict_correct(layout_detections(layout), m, threshold=threshold)
            as_planned += drawn_as_planned(detections, layout)
    accuracy = geneval.tag_accuracy([(m['tag'], c) for m, c in zip(metadata, correct)])
    n = len(metadata)
    stats = {'extra_objects': extra / n}
    if think:
        stats.update(plan_parsed=parsed / n, plan_correct=plan_ok / n,
                     drawn_as_planned=as_planned / n)
    return EvalResult(metadata=metadata, images=images, think_texts=texts, correct=correct,
                      accuracy=accuracy, stats=stats)


def evaluate_run(run, tokenizer, metadata: list[dict], *, think: bool, cfg_scale: float,
                 seed: int = 0, batch_size: int = 80, plans: list | None = None) -> EvalResult:
    """``evaluate`` with a ``train.run_dir.Run``: its params, model, autoencoder, sequence sizes
    and evaluation sampler at text-CFG scale ``cfg_scale``."""
    return evaluate(run.params, run.model, tokenizer, metadata, think=think,
                    sampler=eval_sampler.sampler_config(run.eval, cfg_scale),
                    max_think_tokens=run.max_think_tokens, prompt_len=run.max_prompt_tokens,
                    image_size=run.image_size, batch_size=batch_size, seed=seed,
                    ae_params=run.ae_params, plans=plans)


def markdown_table(rows: dict[str, dict]) -> str:
    """Rows ``{name: accuracy dict (+ plan stats)}`` -> a markdown table, accuracies in %."""
    columns = [*prompts.TAGS, 'overall']
    extra = sorted({k for r in rows.values() for k in r} - set(columns))
    head = ['run', *columns, *extra]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for name, r in rows.items():
        cells = [f'{100 * r[c]:.1f}' if c in r else '' for c in (*columns, *extra)]
        lines.append('| ' + ' | '.join([name, *cells]) + ' |')
    return '\n'.join(lines) + '\n'


def save_grid(path: str, result: EvalResult, per_tag: int = 6, title: str = '') -> None:
    """A PNG of ``per_tag`` images per tag (rows), each captioned with its prompt, thinking and
    correctness."""
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

    chosen = {tag: [] for tag in prompts.TAGS}
    for i, m in enumerate(result.metadata):
        if m['tag'] in chosen and len(chosen[m['tag']]) < per_tag:
            chosen[m['tag']].append(i)
    rows = [tag for tag in prompts.TAGS if chosen[tag]]
    fig, axes = plt.subplots(len(rows), per_tag, figsize=(2.3 * per_tag, 3.4 * len(rows)),
                             squeeze=False)
    for r, tag in enumerate(rows):
        for c in range(per_tag):
            ax = axes[r][c]
            ax.axis('off')
            if c >= len(chosen[tag]):
                continue
            i = chosen[tag][c]
            ax.imshow(result.images[i], interpolation='nearest')
            think = result.think_texts[i].replace('<think>', '').replace('</think>', '').strip()
            caption = result.metadata[i]['prompt'].replace('a photo of ', '')
            if result.think_texts[i]:
                caption += '\n' + textwrap.shorten(think, 110, placeholder=' ...').replace(
                    ' ; ', '\n')
            ax.set_title(('OK  ' if result.correct[i] else 'XX  ') + caption, fontsize=6.5,
                         color='green' if result.correct[i] else 'red', loc='left')
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def default_cfg_scales(eval_cfg) -> list[float]:
    """CFG off (1) and the configured scale."""
    return sorted({1.0, float(eval_cfg.cfg_text_scale)})


def sweep(run, tokenizer, metadata: list[dict], *, thinks: list[bool], cfg_scales: list[float],
          out_dir: str | None, batch_size: int = 80, seed: int = 0, samples_per_prompt: int = 1,
          log=print) -> dict[str, dict]:
    """Evaluates a ``train.run_dir.Run`` at every (think, text-CFG scale) pair.

    ``samples_per_prompt``: images drawn per prompt, each from its own initial noise (the
    greedy plan is the same); accuracies are over all of them, so the score's sampling noise
    shrinks as ``1 / sqrt(samples_per_prompt)`` (one standard deviation of an overall score
    at 240 prompts and one sample is ~2.5 points).

    Writes ``results.md``/``results.json`` and one grid PNG per pair to ``out_dir`` (None:
    nothing written). Returns ``{'think=on cfg=2': accuracy per tag + plan stats}``.
    """
    if run.system_prompt:
        raise ValueError('ShapesEval runs have no system prompt; this run has '
                         f'{run.system_prompt!r}')
    if samples_per_prompt < 1:
        raise ValueError(f'samples_per_prompt must be >= 1, got {samples_per_prompt}')
    prompts_given = len(metadata)
    metadata = list(metadata) * samples_per_prompt
    rows = {}
    for think in thinks:
        for scale in cfg_scales:
            name = f'think={"on" if think else "off"} cfg={scale:g}'
            start = time.time()
            result = evaluate_run(run, tokenizer, metadata, think=think, cfg_scale=scale,
                                  seed=seed, batch_size=batch_size)
            rows[name] = {**result.accuracy, **result.stats}
            log(f'eval {name}: overall {100 * result.accuracy["overall"]:.1f}% '
                f'({prompts_given} prompts x {samples_per_prompt} samples, '
                f'{time.time() - start:.0f}s) {rows[name]}')
            if out_dir:
                os.makedirs(out_dir, exist_ok=True)
                tag = f'think_{"on" if think else "off"}_cfg_{scale:g}'
                save_grid(os.path.join(out_dir, f'grid_{tag}.png'), result, title=name)
    if out_dir:
        with open(os.path.join(out_dir, 'results.md'), 'w') as f:
            f.write(f'ShapesEval strict accuracy (%), {prompts_given} prompts x '
                    f'{samples_per_prompt} samples\n\n')
            f.write(markdown_table(rows))
        with open(os.path.join(out_dir, 'results.json'), 'w') as f:
            json.dump(rows, f, indent=1)
    return rows
