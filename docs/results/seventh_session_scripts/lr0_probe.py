"""The training sampler's reward of frozen policies (learning rates 0), paired on the same prompts
and seeds: the SFT think model against UniGRPO's step-100 models of runs/r26c (seventh session).
usage, from the repository root: PYTHONPATH=. python docs/results/seventh_session_scripts/lr0_probe.py
STEPS SEED RUN... ("sft" for the SFT model; RUN: a run directory name under runs/r26c)."""
import json, os, sys
import numpy as np
from unigrpo_jax import config_files
from unigrpo_jax.loading import orbax_io
from unigrpo_jax.train import loop, run_dir

steps, seed, names = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
out = 'runs/s7/lr0'
for name in names:
    config = config_files.load('configs/shapes_unigrpo.py')
    if name != 'sft':
        export = os.path.join(out, f'{name}_step100_params')
        if not os.path.isdir(export):
            run = run_dir.load(f'runs/r26c/{name}', step=100, weights='params')
            orbax_io.save_params(export, run.model, run.params, run.ae_params)
        config.model.checkpoint = os.path.abspath(export)
    config.total_steps = steps
    config.seed = seed
    config.optimizer.update(lr_und=0.0, lr_gen=0.0)
    config.eval_every = 0
    config.checkpoint_every = steps
    workdir = os.path.join(out, f'{name}_seed{seed}')
    loop.train(config, workdir)
    rows = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl')) if l.strip()]
    rewards = [r['reward/mean'] for r in rows if 'reward/mean' in r]
    print(name, 'per step', ' '.join(f'{x:.3f}' for x in rewards), 'mean', f'{np.mean(rewards):.4f}', flush=True)
