"""The Table-2-style comparison on ShapesEval and the regulariser ablation
(``launch/shapes_results.py``; docs/results.md).

``run(plan)`` runs (or resumes; finished runs and evaluations are reused) every RL arm from its
SFT starting point with the same budget (``plan.steps`` RL steps, or ``plan.arm_steps``;
everything else as ``configs/shapes_*.py``), one run per seed in ``<out>/<config>_s<seed>``;
then the ablation UniGRPO with the regulariser none / latent KL / velocity MSE (the UniGRPO
runs) at equal steps, seeds ``plan.ablation_seeds``. It evaluates every final model and both
SFT models on the evaluation prompts (greedy thinking, ODE; each CFG scale of ``plan.cfg``;
evaluation seed = run seed) and writes ``<out>/results.md`` (each arm's change over its SFT
model per seed, with mean, sample std and minimum; the per-seed UniGRPO-minus-FlowGRPO gain
difference with a 95% t-interval; per-tag accuracy, mean ± sample std over seeds),
``<out>/results.json``, ``<out>/gains.json`` (the summary that docs/results/shapes_gains.json,
the README and the demo report quote) and the eval-reward curves ``<out>/curves_arms.png``
and ``<out>/curves_ablation.png``.
"""

import dataclasses
import json
import os
import time
from typing import Callable

import numpy as np

from unigrpo_jax import config_files, viz
from unigrpo_jax.shapes import prompt_source
from unigrpo_jax.errors import ConfigError
from unigrpo_jax.loading import tokenizer as tokenizer_lib
from unigrpo_jax.shapes import evaluate as shapes_eval
from unigrpo_jax.shapes import gains as gains_lib
from unigrpo_jax.shapes import prompts as shapes_prompts
from unigrpo_jax.train import loop, run_dir

SFT = {'SFT (no think)': 'shapes_sft_nothink', 'SFT (think)': 'shapes_sft_think'}
ARMS = {'FlowGRPO (no think)': 'shapes_flowgrpo', 'TextGRPO (think)': 'shapes_textgrpo',
        'UniGRPO (think)': 'shapes_unigrpo', 'NFT (no think)': 'shapes_nft',
        'UniGRPO-NFT (think)': 'shapes_uninft',
        'NFT, exact-scene reward (no think)': 'shapes_nft_exact'}
START = {'FlowGRPO (no think)': 'SFT (no think)', 'TextGRPO (think)': 'SFT (think)',
         'UniGRPO (think)': 'SFT (think)', 'NFT (no think)': 'SFT (no think)',
         'UniGRPO-NFT (think)': 'SFT (think)',
         'NFT, exact-scene reward (no think)': 'SFT (no think)'}  # each arm's SFT start
PARTS = ('sft', *(c.removeprefix('shapes_') for c in ARMS.values()), 'ablation')
PAIRED = ('UniGRPO (think)', 'FlowGRPO (no think)')  # gains differenced per seed
REGULARISERS = {'none': dict(regularizer='none'),
                'latent KL': dict(regularizer='latent_kl'),
                'velocity MSE': dict(regularizer='velocity_mse')}


@dataclasses.dataclass(frozen=True)
class Plan:
    """What ``run`` trains and evaluates (``launch/shapes_results.py``'s flags)."""

    out: str                     # the output directory
    steps: int                   # RL steps of every run (the common budget)
    seeds: tuple[int, ...]       # seeds of the arm comparison
    ablation_seeds: tuple[int, ...]  # seeds of the ablation (empty: none)
    arms: tuple[str, ...]        # the compared arms: config names without shapes_
    arm_steps: dict[str, int] = dataclasses.field(default_factory=dict)  # per-arm steps
    latent_kl_weight: float = 0.04  # beta of the latent-KL ablation arm (FlowGRPO's default)
    cfg: tuple[float, ...] = (1.0, 2.0)  # text CFG scales of the evaluation
    eval_samples: int = 1        # images per evaluation prompt, each from its own noise
    eval_every: int | None = None  # in-training evaluation interval (None: the config's)
    keep_period: int | None = None  # also keep every N-th checkpoint (None: the config's)
    only: tuple[str, ...] = ()   # train and evaluate only these PARTS, and write no report


def check(plan: Plan) -> None:
    """Raises ``ConfigError`` naming an unknown arm or part."""
    known = [c.removeprefix('shapes_') for c in ARMS.values()]
    for what, values, allowed in (('arms', plan.arms, known),
                                  ('arm_steps', tuple(plan.arm_steps), known),
                                  ('only', plan.only, PARTS)):
        unknown = sorted(set(values) - set(allowed))
        if unknown:
            raise ConfigError(f'--{what}: {unknown} unknown; expected some of '
                              + ', '.join(allowed))


def steps(plan: Plan, config_name: str) -> int:
    """The RL steps of an arm's runs (``plan.arm_steps``, else ``plan.steps``)."""
    return int(plan.arm_steps.get(config_name.removeprefix('shapes_'), plan.steps))


def arms(plan: Plan) -> dict[str, str]:
    """The compared arms: ``{table row: config name}``, in ``ARMS``' order."""
    chosen = {f'shapes_{a}' for a in plan.arms}
    return {name: c for name, c in ARMS.items() if c in chosen}


def runs(plan: Plan) -> list[tuple]:
    """Every RL run: ``(part, table row, config name, seed, workdir, objective overrides)``.

    The velocity-MSE ablation arm is the UniGRPO run itself (same workdir, part 'unigrpo').
    """
    out = [(config_name.removeprefix('shapes_'), name, config_name, s,
            os.path.join(plan.out, f'{config_name}_s{s}'), {})
           for name, config_name in arms(plan).items() for s in plan.seeds]
    for reg, objective in REGULARISERS.items():
        for s in plan.ablation_seeds:
            suffix = '' if reg == 'velocity MSE' else f'_{objective["regularizer"]}'
            out.append(('unigrpo' if not suffix else 'ablation', f'UniGRPO, regulariser {reg}',
                        'shapes_unigrpo', s,
                        os.path.join(plan.out, f'shapes_unigrpo{suffix}_s{s}'), objective))
    return out


def train(plan: Plan, config_name: str, seed: int, workdir: str, objective: dict,
          say: Callable[[str], None] = print) -> None:
    """One RL run of ``configs/<config_name>.py`` (reused when its last checkpoint exists)."""
    config = config_files.load(os.path.join(config_files.CONFIGS, config_name + '.py'))
    config.seed = seed
    config.total_steps = steps(plan, config_name)
    for field, value in (('eval_every', plan.eval_every),
                         ('checkpoint_keep_period', plan.keep_period)):
        if value is not None:
            config[field] = value
    config.objective.update(objective)
    if config.objective.regularizer == 'latent_kl':
        config.objective.latent_kl_weight = plan.latent_kl_weight
    if os.path.isdir(os.path.join(workdir, 'checkpoints', str(config.total_steps))):
        say(f'{workdir}: finished ({config.total_steps} steps), reused')
        return
    say(f'{workdir}: {config_name} seed {seed}, {config.total_steps} steps, objective '
        f'{config.objective.mode}/{config.objective.regularizer}')
    loop.train(config, workdir)


def evaluate(plan: Plan, directory: str, seed: int, out_dir: str, step: int | None = None,
             say: Callable[[str], None] = print) -> dict:
    """Accuracy rows of a run at ``step`` (None: its latest checkpoint; cached in
    ``out_dir/results.json``)."""
    cached = os.path.join(out_dir, 'results.json')
    if os.path.exists(cached):
        with open(cached) as f:
            return json.load(f)
    run_ = run_dir.load(directory, step)
    tokenizer = tokenizer_lib.load_tokenizer(run_.tokenizer_dir)[0]
    metadata = shapes_eval.load_prompts(prompt_source.EVAL_FILE)
    return shapes_eval.sweep(run_, tokenizer, metadata, thinks=[run_.think],
                             cfg_scales=list(plan.cfg), out_dir=out_dir, seed=seed,
                             samples_per_prompt=plan.eval_samples, log=say)


def eval_curve(workdir: str, last: int) -> tuple[list, list]:
    """``(steps, eval reward)`` of an RL workdir's ``metrics.jsonl`` up to step ``last``."""
    steps_, values = [], []
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        for record in map(json.loads, f):
            if 'eval/reward_mean' in record and record['step'] <= last:
                steps_.append(record['step'])
                values.append(record['eval/reward_mean'])
    return steps_, values


def mean_curve(workdirs: list[str], last: int) -> tuple[list, list]:
    """The eval-reward curve averaged over runs evaluated at the same steps."""
    curves = [eval_curve(w, last) for w in workdirs]
    steps_ = curves[0][0]
    if any(c[0] != steps_ for c in curves):
        raise ValueError(f'runs {workdirs} evaluated at different steps')
    return steps_, list(np.mean([c[1] for c in curves], axis=0))


def accuracy_table(rows: dict[str, list[dict]], setting: str) -> str:
    """Markdown: per-tag strict accuracy (%), mean ± sample std over seeds, of each model's
    rows (one per seed, keyed like 'think=on cfg=2') at ``setting`` ('cfg=2')."""
    columns = [*shapes_prompts.TAGS, 'overall']
    lines = ['| model | ' + ' | '.join(columns) + ' |', '|---|' + '---|' * len(columns)]
    for name, per_seed in rows.items():
        cells = []
        for c in columns:
            values = 100 * np.array([next(v for k, v in r.items() if k.endswith(setting))[c]
                                     for r in per_seed])
            cells.append(f'{values.mean():.1f} ± {gains_lib.sample_std(values):.1f}')
        lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def run(plan: Plan, say: Callable[[str], None] = print) -> str | None:
    """Trains and evaluates what ``plan`` asks and writes the report (see the module
    docstring); returns the path of ``results.md`` (None with ``plan.only``)."""
    check(plan)
    os.makedirs(plan.out, exist_ok=True)
    start = time.time()
    results: dict[str, list[dict]] = {}
    if not plan.only or 'sft' in plan.only:
        for name, ckpt in SFT.items():
            directory = os.path.join(config_files.ROOT, 'checkpoints', ckpt)
            results[name] = [evaluate(plan, directory, s,
                                      os.path.join(plan.out, f'{ckpt}_eval_s{s}'), say=say)
                             for s in plan.seeds]
    every = runs(plan)
    for part, name, config_name, seed, workdir, objective in every:
        if plan.only and part not in plan.only:
            continue
        train(plan, config_name, seed, workdir, objective, say)
        n = steps(plan, config_name)
        results.setdefault(name, []).append(evaluate(
            plan, workdir, seed, os.path.join(workdir, 'eval_final' if n == plan.steps
                                              else f'eval_step{n}'), n, say))
    if plan.only:
        return None

    settings = [f'cfg={c:g}' for c in plan.cfg]
    lines = [f'# ShapesEval results ({plan.steps} RL steps per run'
             + ''.join(f', {a}:{n}' for a, n in plan.arm_steps.items())
             + f', seeds {list(plan.seeds)}; ablation seeds {list(plan.ablation_seeds)}; '
             f'{plan.eval_samples} evaluation image(s) per prompt)', '']
    summary = gains_lib.gains(results, settings, START, PAIRED)
    lines += ['## Change of overall strict accuracy over the SFT starting point', '',
              gains_lib.markdown(summary, settings)]
    for setting in settings:
        lines += [f'## Strict accuracy (%), {setting}, mean ± sample std over seeds', '',
                  accuracy_table(results, setting)]
    lines.append(f'Wall time: {(time.time() - start) / 60:.1f} min')
    path = os.path.join(plan.out, 'results.md')
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    with open(os.path.join(plan.out, 'results.json'), 'w') as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(plan.out, 'gains.json'), 'w') as f:  # docs/results/shapes_gains.json
        json.dump({'steps': {name: steps(plan, c) for name, c in arms(plan).items()},
                   'seeds': list(plan.seeds), 'eval_samples': plan.eval_samples, **summary},
                  f, indent=1)
    workdirs: dict[str, list[str]] = {}
    for _, name, _, _, workdir, _ in every:
        workdirs.setdefault(name, []).append(workdir)
    chosen = arms(plan)
    viz.plot_curves(os.path.join(plan.out, 'curves_arms.png'),
                    {name: mean_curve(workdirs[name], steps(plan, chosen[name]))
                     for name in chosen},
                    title=f'Eval reward (mean of seeds {list(plan.seeds)})',
                    ylabel='eval reward')
    if plan.ablation_seeds:
        viz.plot_curves(os.path.join(plan.out, 'curves_ablation.png'),
                        {reg: mean_curve(workdirs[f'UniGRPO, regulariser {reg}'],
                                         steps(plan, 'shapes_unigrpo'))
                         for reg in REGULARISERS},
                        title='UniGRPO regulariser ablation', ylabel='eval reward')
    return path
