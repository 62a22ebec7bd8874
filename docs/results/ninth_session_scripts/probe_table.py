"""The sampler probe's table: each frozen model's training reward under each sampler and its
paired change over the SFT model (mean ± standard error over the rollout batches).
usage: PYTHONPATH=. python docs/results/ninth_session_scripts/probe_table.py runs/s9/probe_0.txt runs/s9/probe_1.txt"""
import sys

import numpy as np

rewards = {}
for path in sys.argv[1:]:
    for line in open(path):
        if ' per step ' in line:
            head, tail = line.split(' per step ')
            model, sampler = head.split()
            rewards[sampler, model] = np.array([float(x) for x in tail.split(' mean ')[0].split()])
samplers = list(dict.fromkeys(s for s, _ in rewards))
models = list(dict.fromkeys(m for _, m in rewards))
print('| sampler | ' + ' | '.join(models) + ' |')
print('|---|' + '---|' * len(models))
for s in samplers:
    base = rewards[s, 'sft']
    cells = []
    for m in models:
        r = rewards[s, m]
        if m == 'sft':
            cells.append(f'{r.mean():.3f}')
        else:
            d = 100 * (r - base)
            cells.append(f'{r.mean():.3f} ({d.mean():+.1f} ± {d.std(ddof=1) / np.sqrt(len(d)):.1f})')
    print(f'| {s} | ' + ' | '.join(cells) + ' |')
