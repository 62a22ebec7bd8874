"""The largest per-device buffers of one 7B program (configs/bagel_grpo.py, rollout_strategy=fsdp,
split_terms) compiled for a TPU target: how the ninth session found the reference's prefill built
every chain on every chip, and the train step's gathered float32 lm_head.
usage, from the repository root (libtpu installed, '.[tpu-compile]'):
ALLOW_MULTIPLE_LIBTPU_LOAD=1 JAX_PLATFORMS=cpu [LAYERS=2] PYTHONPATH=. python \
    docs/results/ninth_session_scripts/largest_buffers.py TARGET GROUP_PIECES PROGRAM
e.g. v5e-64 2 reference   or   v5e-64 2 train_step"""
import os
import re
import sys

from unigrpo_jax import config_files
from unigrpo_jax.bench import rl_programs, targets

BYTES = {'f32': 4, 'bf16': 2, 's32': 4, 'u32': 4, 'pred': 1, 'f16': 2, 's8': 1, 'u8': 1}
config = config_files.load('configs/bagel_grpo.py')
config.parallelism.rollout_strategy = 'fsdp'
config.parallelism.rollout_group_pieces = int(sys.argv[2])
config.parallelism.split_terms = True
target = targets.get(sys.argv[1])
programs = {name: (fn, args) for name, fn, args, *_ in rl_programs.rl_programs(
    config, targets.devices(target), layers=int(os.environ.get('LAYERS', '2')))}
fn, args = programs[sys.argv[3]]
compiled = fn.lower(*args).compile()
print(f'temporaries {compiled.memory_analysis().temp_size_in_bytes / 2**30:.2f} GiB')
rows = []
for line in compiled.as_text().splitlines():
    m = re.match(r'\s*(?:ROOT )?%?[\w.\-]+ = (\w+)\[([\d,]*)\]', line)
    if m and m.group(1) in BYTES:
        n = BYTES[m.group(1)]
        for d in filter(None, m.group(2).split(',')):
            n *= int(d)
        rows.append((n, f'{m.group(1)}[{m.group(2)}]', line.strip()[:200]))
seen = set()
for n, shape, line in sorted(rows, reverse=True):
    if shape not in seen and len(seen) < 8:
        seen.add(shape)
        print(f'{n / 2**30:.3f} GiB  {line}')
