"""Training-reward curves, mean and band (± one std) over seeds, 10-step running means; prints
the seed mean by fifths (or tenths past 100 steps).

usage: python docs/results/seventh_session_scripts/plot_train.py OUT.png STEPS 'LABEL=GLOB' ...
  seventh session: ... docs/results/train_reward_unigrpo_vs_uninft.png 100
      'UniGRPO (flow term, SDE window)=runs/r26c/shapes_unigrpo_s[0-4]/metrics.jsonl'
      'UniGRPO-NFT (NFT term, ODE rollout)=runs/r26c/shapes_uninft_s[0-4]/metrics.jsonl'
  tenth session: ... docs/results/train_reward_uninft_200.png 200
      'UniGRPO-NFT, exact-scene reward=runs/r26f/shapes_uninft_s[0-4]/metrics.jsonl'
"""
import glob
import json
import sys

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np

out, last = sys.argv[1], int(sys.argv[2])
fig, ax = plt.subplots(figsize=(7, 4))
for i, arm in enumerate(sys.argv[3:]):
    label, pattern = arm.split('=', 1)
    runs = sorted(glob.glob(pattern))
    curves = np.array([[r['reward/mean'] for r in map(json.loads, open(p)) if 'reward/mean' in r][:last]
                       for p in runs])
    smooth = np.array([np.convolve(c, np.ones(10) / 10, mode='valid') for c in curves])
    steps = np.arange(10, last + 1)
    mean, std = smooth.mean(0), smooth.std(0, ddof=1)
    ax.plot(steps, mean, color=f'C{i}', label=f'{label}, {len(runs)} seeds')
    ax.fill_between(steps, mean - std, mean + std, color=f'C{i}', alpha=0.2)
    parts = 5 if last <= 100 else 10
    print(label, len(runs), 'runs; the seed mean by parts of the run:',
          ' '.join(f'{q.mean():.3f}' for q in np.array_split(curves.mean(0), parts)))
ax.set_xlabel('RL step')
ax.set_ylabel('training reward, 10-step mean (strict 0/1)')
ax.set_title('ShapesEval training reward: mean ± std over seeds')
ax.grid(alpha=0.3)
ax.legend(loc='lower right')
fig.tight_layout()
fig.savefig(out, dpi=100)
