"""Which half of the training sampler keeps UniGRPO's training reward flat: the reward of frozen
policies (learning rates 0) under four samplers, paired on the same prompts and seeds.

Samplers: ``sampled_sde`` (the training rollout: thinking at temperature 1, the SDE window),
``greedy_sde`` (greedy thinking, the SDE window), ``sampled_ode`` (temperature 1, every step by
the ODE: the TextGRPO rollout) and ``greedy_ode`` (greedy thinking and the ODE: evaluation's
sampler without CFG, on training prompts).

usage, from the repository root:
  PYTHONPATH=. python docs/results/ninth_session_scripts/sampler_probe.py STEPS SEED SAMPLER MODEL...
MODEL: ``sft`` (the shipped think SFT model) or a UniGRPO run directory (its step-100 params).
Prints one line per model: the strict training reward per rollout batch and its mean."""
import json
import os
import sys

import numpy as np

from unigrpo_jax import config_files
from unigrpo_jax.loading import orbax_io
from unigrpo_jax.train import loop, run_dir

SAMPLERS = {'sampled_sde': (1.0, 'unigrpo'), 'greedy_sde': (0.0, 'unigrpo'),
            'sampled_ode': (1.0, 'textgrpo'), 'greedy_ode': (0.0, 'textgrpo')}
steps, seed, sampler, models = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:]
temperature, mode = SAMPLERS[sampler]
out = 'runs/s9/probe'
for model in models:
    config = config_files.load('configs/shapes_unigrpo.py')
    name = 'sft' if model == 'sft' else os.path.basename(model.rstrip('/'))
    if model != 'sft':
        export = os.path.join(out, f'{name}_step100_params')
        if not os.path.isdir(export):
            run = run_dir.load(model, step=100, weights='params')
            orbax_io.save_params(export, run.model, run.params, run.ae_params)
        config.model.checkpoint = os.path.abspath(export)
    config.total_steps = steps
    config.seed = seed
    config.rollout.temperature = temperature
    config.objective.mode = mode
    config.objective.dt_reweight = mode == 'unigrpo'  # weights the window's loss, not the sampler
    config.optimizer.update(lr_und=0.0, lr_gen=0.0)
    config.eval_every = 0
    config.checkpoint_every = steps
    workdir = os.path.join(out, f'{name}_{sampler}_seed{seed}')
    loop.train(config, workdir)
    rows = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl')) if l.strip()]
    rewards = [r['reward/mean'] for r in rows if 'reward/mean' in r]
    print(name, sampler, 'per step', ' '.join(f'{x:.3f}' for x in rewards),
          'mean', f'{np.mean(rewards):.4f}', flush=True)
