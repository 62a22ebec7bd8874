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

import os
import time

from absl import app, flags

from unigrpo_jax.errors import ConfigError
from unigrpo_jax.experiments import table

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
_ONLY = flags.DEFINE_list('only', None, 'Train and evaluate only these parts '
                          f'({", ".join(table.PARTS)}; '
                          'sft: evaluate the SFT models) and write no report: to split the work '
                          'over processes; a final run without it reuses everything.')


def _say(message: str) -> None:
    print(f'[results {time.strftime("%H:%M:%S")}] {message}', flush=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments {argv[1:]}')
    plan = table.Plan(
        out=_OUT.value, steps=_STEPS.value, seeds=tuple(int(s) for s in _SEEDS.value),
        ablation_seeds=tuple(int(s) for s in _ABLATION_SEEDS.value),
        arms=tuple(_ARM_LIST.value),
        arm_steps={a: int(n) for a, n in (item.split(':') for item in _ARM_STEPS.value)},
        latent_kl_weight=_LATENT_KL.value, cfg=tuple(float(c) for c in _CFG.value),
        eval_samples=_EVAL_SAMPLES.value, eval_every=_EVAL_EVERY.value,
        keep_period=_KEEP_PERIOD.value, only=tuple(_ONLY.value or ()))
    try:
        path = table.run(plan, say=_say)
    except ConfigError as e:
        raise app.UsageError(str(e)) from e
    if path:
        with open(path) as f:
            print(f.read())


if __name__ == '__main__':
    app.run(main)
