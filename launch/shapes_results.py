r"""ShapesEval results (docs/results.md): the Table-2-style comparison and the regulariser ablation.

    python launch/shapes_results.py --out=runs/shapes_results --steps=40 --seeds=0,1,2

Runs (or resumes; finished runs and evaluations are reused) every RL arm from its SFT starting
point with the same budget (``--steps`` RL steps; everything else as ``configs/shapes_*.py``):
FlowGRPO (no think), TextGRPO (think), UniGRPO (think), one run per seed in
``<out>/<arm>_s<seed>``; then the ablation UniGRPO with the regulariser none / latent KL (beta
``--latent_kl_weight``) / velocity MSE (the UniGRPO runs) at equal steps, seeds
``--ablation_seeds``. Evaluates every final model and both SFT models on the 240 evaluation
prompts (greedy thinking, ODE; without CFG and with the configured text CFG; evaluation seed =
run seed) and writes ``<out>/results.md`` (each arm's change over its SFT model per seed,
with mean, sample std and minimum; the per-seed UniGRPO-minus-FlowGRPO gain difference with a
95% t-interval; per-tag accuracy, mean ± sample std over seeds), ``<out>/results.json``,
``<out>/gains.json`` (the summary that docs/results/shapes_gains.json, the README and the demo
report quote) and the eval-reward curves ``<out>/curves_arms.png`` and
``<out>/curves_ablation.png``. ``--arms`` picks the arms, ``--ablation_seeds=`` (empty) skips
the ablation.
"""

import json
import os
import time

import numpy as np
from absl import app, flags

from unigrpo_jax import config_files, viz
from unigrpo_jax.loading import tokenizer as tokenizer_lib
from unigrpo_jax.data import prompts as data_lib
from unigrpo_jax.shapes import evaluate as shapes_eval
from unigrpo_jax.shapes import gains as gains_lib
from unigrpo_jax.shapes import prompts as shapes_prompts
from unigrpo_jax.train import loop, run_dir

_OUT = flags.DEFINE_string('out', os.path.join('runs', 'shapes_results'), 'Output directory.')
_STEPS = flags.DEFINE_integer('steps', 40, 'RL steps of every run (the common budget).')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds of the arm comparison.')
_ABLATION_SEEDS = flags.DEFINE_list('ablation_seeds', ['0'], 'Seeds of the ablation.')
_LATENT_KL = flags.DEFINE_float('latent_kl_weight', 0.04, 'beta of the latent-KL arm '
                                '(FlowGRPO\'s default).')
_CFG = flags.DEFINE_list('cfg', ['1', '2'], 'Text CFG scales of the evaluation.')
_ARM_LIST = flags.DEFINE_list('arms', ['flowgrpo', 'textgrpo', 'unigrpo'],
                              'The arms compared (config names without shapes_).')
_ARM_STEPS = flags.DEFINE_list('arm_steps', [], 'Per-arm RL steps overriding --steps, as '
                                'arm:steps (e.g. unigrpo:100: the step chosen on the '
                                'validation prompts); a longer finished run is evaluated at '
                                'that step (its checkpoint must be kept: --keep_period).')
_EVAL_SAMPLES = flags.DEFINE_integer('eval_samples', 1, 'Images per evaluation prompt, each '
                                     'from its own initial noise.', lower_bound=1)
_EVAL_EVERY = flags.DEFINE_integer('eval_every', None, 'In-training evaluation interval '
                                   '(default: the config\'s).', lower_bound=0)
_KEEP_PERIOD = flags.DEFINE_integer('keep_period', None, 'Also keep every checkpoint whose step '
                                    'is a multiple of this (e.g. to score a mid-run step on the '
                                    'validation prompts); default: the config\'s.', lower_bound=0)
_SFT = {'SFT (no think)': 'shapes_sft_nothink', 'SFT (think)': 'shapes_sft_think'}
_ARMS = {'FlowGRPO (no think)': 'shapes_flowgrpo', 'TextGRPO (think)': 'shapes_textgrpo',
         'UniGRPO (think)': 'shapes_unigrpo', 'NFT (no think)': 'shapes_nft',
         'UniGRPO-NFT (think)': 'shapes_uninft',
         'NFT, exact-scene reward (no think)': 'shapes_nft_exact'}
_START = {'FlowGRPO (no think)': 'SFT (no think)', 'TextGRPO (think)': 'SFT (think)',
          'UniGRPO (think)': 'SFT (think)', 'NFT (no think)': 'SFT (no think)',
          'UniGRPO-NFT (think)': 'SFT (think)',
          'NFT, exact-scene reward (no think)': 'SFT (no think)'}  # each arm's SFT start
_PARTS = ('sft', *(c.removeprefix('shapes_') for c in _ARMS.values()), 'ablation')
_ONLY = flags.DEFINE_list('only', None, f'Train and evaluate only these parts ({", ".join(_PARTS)}; '
                          'sft: evaluate the SFT models) and write no report: to split the work '
                          'over processes; a final run without it reuses everything.')

_PAIRED = ('UniGRPO (think)', 'FlowGRPO (no think)')  # gains differenced per seed
_REGULARISERS = {'none': dict(regularizer='none'),
                 'latent KL': dict(regularizer='latent_kl'),
                 'velocity MSE': dict(regularizer='velocity_mse')}


def _say(message: str) -> None:
    print(f'[results {time.strftime("%H:%M:%S")}] {message}', flush=True)


def _steps(config_name: str) -> int:
    """The RL steps of an arm's runs (``--arm_steps``, else ``--steps``)."""
    chosen = dict(item.split(':') for item in _ARM_STEPS.value)
    return int(chosen.get(config_name.removeprefix('shapes_'), _STEPS.value))


def _train(config_name: str, seed: int, workdir: str, objective: dict | None = None) -> None:
    config = config_files.load(os.path.join(config_files.CONFIGS, config_name + '.py'))
    config.seed = seed
    config.total_steps = _steps(config_name)
    for field, flag in (('eval_every', _EVAL_EVERY), ('checkpoint_keep_period', _KEEP_PERIOD)):
        if flag.value is not None:
            config[field] = flag.value
    config.objective.update(objective or {})
    if config.objective.regularizer == 'latent_kl':
        config.objective.latent_kl_weight = _LATENT_KL.value
    if os.path.isdir(os.path.join(workdir, 'checkpoints', str(config.total_steps))):
        _say(f'{workdir}: finished ({config.total_steps} steps), reused')
        return
    _say(f'{workdir}: {config_name} seed {seed}, {config.total_steps} steps, objective '
         f'{config.objective.mode}/{config.objective.regularizer}')
    loop.train(config, workdir)


def _evaluate(directory: str, seed: int, out_dir: str, step: int | None = None) -> dict:
    """Accuracy rows of a run at ``step`` (None: its latest checkpoint; cached in
    ``out_dir/results.json``)."""
    cached = os.path.join(out_dir, 'results.json')
    if os.path.exists(cached):
        with open(cached) as f:
            return json.load(f)
    run = run_dir.load(directory, step)
    tokenizer = tokenizer_lib.load_tokenizer(run.tokenizer_dir)[0]
    metadata = shapes_eval.load_prompts(data_lib.SHAPES_EVAL_FILE)
    return shapes_eval.sweep(run, tokenizer, metadata, thinks=[run.think],
                             cfg_scales=[float(c) for c in _CFG.value], out_dir=out_dir,
                             seed=seed, samples_per_prompt=_EVAL_SAMPLES.value, log=_say)


def _eval_curve(workdir: str, last: int) -> tuple[list, list]:
    steps, values = [], []
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        for record in map(json.loads, f):
            if 'eval/reward_mean' in record and record['step'] <= last:
                steps.append(record['step'])
                values.append(record['eval/reward_mean'])
    return steps, values


def _mean_curve(workdirs: list[str], last: int) -> tuple[list, list]:
    curves = [_eval_curve(w, last) for w in workdirs]
    steps = curves[0][0]
    if any(c[0] != steps for c in curves):
        raise ValueError(f'runs {workdirs} evaluated at different steps')
    return steps, list(np.mean([c[1] for c in curves], axis=0))


def _table(rows: dict[str, list[dict]], setting: str) -> str:
    columns = [*shapes_prompts.TAGS, 'overall']
    lines = ['| model | ' + ' | '.join(columns) + ' |', '|---|' + '---|' * len(columns)]
    for name, per_seed in rows.items():
        cells = []
        for c in columns:  # rows are keyed 'think=on cfg=2' / 'think=off cfg=2'
            values = 100 * np.array([next(v for k, v in r.items() if k.endswith(setting))[c]
                                     for r in per_seed])
            cells.append(f'{values.mean():.1f} ± {gains_lib.sample_std(values):.1f}')
        lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def _arms() -> dict[str, str]:
    """The compared arms of ``--arms``: ``{table row: config name}``."""
    chosen = {f'shapes_{a}' for a in _ARM_LIST.value}
    unknown = chosen - set(_ARMS.values())
    if unknown:
        raise app.UsageError(f'--arms={_ARM_LIST.value}: expected some of '
                             + ', '.join(c.removeprefix('shapes_') for c in _ARMS.values()))
    return {name: c for name, c in _ARMS.items() if c in chosen}


def _plan(out: str, seeds: list[int], ablation_seeds: list[int]) -> list[tuple]:
    """Every RL run: ``(part, table row, config name, seed, workdir, objective overrides)``.

    The velocity-MSE ablation arm is the UniGRPO run itself (same workdir, part 'unigrpo').
    """
    plan = [(config_name.removeprefix('shapes_'), name, config_name, s,
             os.path.join(out, f'{config_name}_s{s}'), {})
            for name, config_name in _arms().items() for s in seeds]
    for reg, objective in _REGULARISERS.items():
        for s in ablation_seeds:
            suffix = '' if reg == 'velocity MSE' else f'_{objective["regularizer"]}'
            plan.append(('unigrpo' if not suffix else 'ablation', f'UniGRPO, regulariser {reg}',
                         'shapes_unigrpo', s, os.path.join(out, f'shapes_unigrpo{suffix}_s{s}'),
                         objective))
    return plan


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments {argv[1:]}')
    out = _OUT.value
    os.makedirs(out, exist_ok=True)
    seeds = [int(s) for s in _SEEDS.value]
    ablation_seeds = [int(s) for s in _ABLATION_SEEDS.value]
    only = set(_ONLY.value or [])
    if only - set(_PARTS):
        raise app.UsageError(f'--only={_ONLY.value}: expected some of {", ".join(_PARTS)}')
    start = time.time()
    results: dict[str, list[dict]] = {}
    if not only or 'sft' in only:
        for name, ckpt in _SFT.items():
            directory = os.path.join(config_files.ROOT, 'checkpoints', ckpt)
            results[name] = [_evaluate(directory, s, os.path.join(out, f'{ckpt}_eval_s{s}'))
                             for s in seeds]
    plan = _plan(out, seeds, ablation_seeds)
    for part, name, config_name, seed, workdir, objective in plan:
        if only and part not in only:
            continue
        _train(config_name, seed, workdir, objective)
        steps = _steps(config_name)
        results.setdefault(name, []).append(_evaluate(
            workdir, seed, os.path.join(workdir, 'eval_final' if steps == _STEPS.value
                                        else f'eval_step{steps}'), steps))
    if only:
        return

    settings = [f'cfg={float(c):g}' for c in _CFG.value]
    lines = [f'# ShapesEval results ({_STEPS.value} RL steps per run'
             + ''.join(f', {a}' for a in _ARM_STEPS.value) + f', seeds {seeds}; '
             f'ablation seeds {ablation_seeds}; {_EVAL_SAMPLES.value} evaluation image(s) per '
             'prompt)', '']
    summary = gains_lib.gains(results, settings, _START, _PAIRED)
    lines += ['## Change of overall strict accuracy over the SFT starting point', '',
              gains_lib.markdown(summary, settings)]
    for setting in settings:
        lines += [f'## Strict accuracy (%), {setting}, mean ± sample std over seeds', '',
                  _table(results, setting)]
    lines.append(f'Wall time: {(time.time() - start) / 60:.1f} min')
    with open(os.path.join(out, 'results.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    with open(os.path.join(out, 'results.json'), 'w') as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(out, 'gains.json'), 'w') as f:  # docs/results/shapes_gains.json
        json.dump({'steps': {name: _steps(c) for name, c in _arms().items()}, 'seeds': seeds,
                   'eval_samples': _EVAL_SAMPLES.value, **summary}, f, indent=1)
    workdirs: dict[str, list[str]] = {}
    for _, name, config_name, _, workdir, _ in plan:
        workdirs.setdefault(name, []).append(workdir)
    arms = _arms()
    viz.plot_curves(os.path.join(out, 'curves_arms.png'),
                    {name: _mean_curve(workdirs[name], _steps(arms[name])) for name in arms},
                    title=f'Eval reward (mean of seeds {seeds})', ylabel='eval reward')
    if ablation_seeds:
        viz.plot_curves(os.path.join(out, 'curves_ablation.png'),
                        {reg: _mean_curve(workdirs[f'UniGRPO, regulariser {reg}'],
                                          _steps('shapes_unigrpo'))
                         for reg in _REGULARISERS},
                        title='UniGRPO regulariser ablation', ylabel='eval reward')
    with open(os.path.join(out, 'results.md')) as f:
        print(f.read())


if __name__ == '__main__':
    app.run(main)
