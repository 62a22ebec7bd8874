"""The no-think NFT arm (configs/shapes_nft_exact.py, 5 seeds, runs/r28) against the Table-2 runs
of docs/results/uninft_table (the same SFT checkpoints, evaluation seed = run seed, 240 evaluation
prompts x 4 images). usage, from the repository root:
PYTHONPATH=. python docs/results/eighth_session_scripts/nft_nothink_table.py [SEEDS...]
Writes docs/results/nft_nothink_table/{results.json,results.md}."""
import json, os, sys
import numpy as np

seeds = [int(s) for s in sys.argv[1:]] or [0, 1, 2, 3, 4]
table = json.load(open('docs/results/uninft_table/results.json'))
nft = [json.load(open(f'runs/r28/shapes_nft_exact_s{s}/eval_final/results.json')) for s in seeds]
rows = {'NFT, exact-scene reward (no think)': ('SFT (no think)', nft)}
for arm, start in (('FlowGRPO (no think)', 'SFT (no think)'), ('UniGRPO (think)', 'SFT (think)'),
                   ('UniGRPO-NFT (think)', 'SFT (think)')):
    rows[arm] = (start, [table[arm][s] for s in seeds])
out, lines = {}, ['| arm | setting | SFT | RL | change per seed | mean ± std | min | extra objects (RL) |',
                  '|---|---|---|---|---|---|---|---|']
for arm, (start, runs) in rows.items():
    for cfg in ('1', '2'):
        def key(r):
            return next(k for k in r if k.endswith(f'cfg={cfg}'))
        sft = np.array([table[start][s][key(table[start][s])]['overall'] for s in seeds]) * 100
        rl = np.array([r[key(r)]['overall'] for r in runs]) * 100
        extra = [r[key(r)].get('extra_objects') for r in runs]
        d = rl - sft
        out[f'{arm} cfg={cfg}'] = dict(sft=sft.tolist(), rl=rl.tolist(), change=d.tolist(),
                                       extra_objects=extra)
        ex = ('%.1f' % (100 * np.mean(extra))) if None not in extra else ''
        lines.append(f'| {arm} | cfg={cfg} | {sft.mean():.1f} | {rl.mean():.1f} | '
                     + ' / '.join(f'{x:+.1f}' for x in d)
                     + f' | {d.mean():+.1f} ± {d.std(ddof=1):.1f} | {d.min():+.1f} | {ex} |')
os.makedirs('docs/results/nft_nothink_table', exist_ok=True)
json.dump(out, open('docs/results/nft_nothink_table/results.json', 'w'), indent=1)
open('docs/results/nft_nothink_table/results.md', 'w').write('\n'.join(lines) + '\n')
print('\n'.join(lines))
