"""Training-reward curves, mean and band (± one std) over seeds, 10-step running means:
UniGRPO (Table 2) against UniGRPO-NFT (seventh session). Writes
docs/results/train_reward_unigrpo_vs_uninft.png and prints fifths of the seed mean."""
import glob, json
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np

fig, ax = plt.subplots(figsize=(7, 4))
for arm, label, color in (('unigrpo', 'UniGRPO (flow term, SDE window)', 'C0'),
                          ('uninft', 'UniGRPO-NFT (NFT term, ODE rollout)', 'C1')):
    runs = sorted(glob.glob(f'runs/r26c/shapes_{arm}_s[0-4]/metrics.jsonl'))
    curves = np.array([[r['reward/mean'] for r in map(json.loads, open(p)) if 'reward/mean' in r][:100]
                       for p in runs])
    smooth = np.array([np.convolve(c, np.ones(10) / 10, mode='valid') for c in curves])
    steps = np.arange(10, 101)
    mean, std = smooth.mean(0), smooth.std(0, ddof=1)
    ax.plot(steps, mean, color=color, label=f'{label}, {len(runs)} seeds')
    ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2)
    print(arm, len(runs), 'fifths of the seed mean:',
          ' '.join(f'{q.mean():.3f}' for q in np.array_split(curves.mean(0), 5)))
ax.set_xlabel('RL step')
ax.set_ylabel('training reward, 10-step mean (strict 0/1)')
ax.set_title('ShapesEval training reward: mean ± std over seeds')
ax.grid(alpha=0.3)
ax.legend(loc='lower right')
fig.tight_layout()
fig.savefig('docs/results/train_reward_unigrpo_vs_uninft.png', dpi=100)
