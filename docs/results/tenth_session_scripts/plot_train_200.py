"""Training-reward curve of UniGRPO-NFT at 200 steps (tenth session): mean and band (± one std)
over the 5 seeds of runs/r26f, 10-step running means. Writes
docs/results/train_reward_uninft_200.png and prints tenths of the seed mean.
usage: python docs/results/tenth_session_scripts/plot_train_200.py"""
import glob
import json

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np

runs = sorted(glob.glob('runs/r26f/shapes_uninft_s[0-4]/metrics.jsonl'))
curves = np.array([[r['reward/mean'] for r in map(json.loads, open(p)) if 'reward/mean' in r][:200]
                   for p in runs])
smooth = np.array([np.convolve(c, np.ones(10) / 10, mode='valid') for c in curves])
steps = np.arange(10, 201)
mean, std = smooth.mean(0), smooth.std(0, ddof=1)
fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(steps, mean, color='C1', label=f'UniGRPO-NFT, exact-scene reward, {len(runs)} seeds')
ax.fill_between(steps, mean - std, mean + std, color='C1', alpha=0.2)
ax.set_xlabel('RL step')
ax.set_ylabel('training reward, 10-step mean (exact scene, 0/1)')
ax.set_title('ShapesEval training reward: mean ± std over seeds')
ax.grid(alpha=0.3)
ax.legend(loc='lower right')
fig.tight_layout()
fig.savefig('docs/results/train_reward_uninft_200.png', dpi=100)
print(len(runs), 'runs; tenths of the seed mean:',
      ' '.join(f'{q.mean():.3f}' for q in np.array_split(curves.mean(0), 10)))
