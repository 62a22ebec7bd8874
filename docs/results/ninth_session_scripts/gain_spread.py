"""How much of Table 2's seed spread is the evaluation's own noise: the SFT model is one fixed
model, so the spread of its scores over the evaluation seeds (4 images per prompt each) is the
evaluation's noise alone; each RL run measured against the SFT's mean over those seeds (20 images
per prompt) removes the SFT's share of it from the gain.
usage: PYTHONPATH=. python docs/results/ninth_session_scripts/gain_spread.py docs/results/uninft_table/gains.json"""
import json
import sys

import numpy as np

gains = json.load(open(sys.argv[1]))
print('| arm | setting | SFT over eval seeds (fixed model) | gain as published (paired by seed) '
      '| RL minus the SFT mean, per seed | mean ± std | min |')
print('|---|---|---|---|---|---|---|')
for arm, table in gains.items():
    if not isinstance(table, dict) or 'cfg=1' not in table:
        continue
    for setting, cell in table.items():
        if not (isinstance(cell, dict) and 'sft' in cell):
            continue
        sft, rl = np.array(cell['sft']['values']), np.array(cell['rl']['values'])
        paired = np.array(cell['gain']['values'])
        against_mean = rl - sft.mean()
        print(f'| {arm} | {setting} | {sft.mean():.1f} ± {sft.std(ddof=1):.1f} '
              f'({sft.min():.1f} .. {sft.max():.1f}) | {paired.mean():+.1f} ± {paired.std(ddof=1):.1f} '
              f'| {" / ".join(f"{x:+.1f}" for x in against_mean)} '
              f'| {against_mean.mean():+.1f} ± {against_mean.std(ddof=1):.1f} | {against_mean.min():+.1f} |')
