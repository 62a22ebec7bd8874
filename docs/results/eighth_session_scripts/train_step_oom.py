"""The 7B train step (configs/bagel_grpo.py, rollout_strategy=fsdp) compiled for a TPU target;
prints 'compiled' or the compiler's error (its RESOURCE_EXHAUSTED line gives the temporaries).
The eighth session's measurement of the train step's memory growing with the slice.
usage, from the repository root (libtpu installed, '.[tpu-compile]'):
ALLOW_MULTIPLE_LIBTPU_LOAD=1 JAX_PLATFORMS=cpu [LAYERS=2] PYTHONPATH=. python \
    docs/results/eighth_session_scripts/train_step_oom.py TARGET GROUP_PIECES [field=value ...]
e.g. v5e-64 2 "objective.mode='flowgrpo'"   or   v5e-64 2 parallelism.split_terms=True"""
import os
import sys

from unigrpo_jax import config_files
from unigrpo_jax.bench import rl_programs, targets

config = config_files.load('configs/bagel_grpo.py')
config.parallelism.rollout_strategy = 'fsdp'
config.parallelism.rollout_group_pieces = int(sys.argv[2])
for override in sys.argv[3:]:
    field, value = override.split('=', 1)
    *path, last = field.split('.')
    section = config
    for name in path:
        section = section[name]
    section[last] = type(section[last])(eval(value))
target = targets.get(sys.argv[1])
programs = {name: (fn, args) for name, fn, args, *_ in rl_programs.rl_programs(
    config, targets.devices(target), layers=int(os.environ.get('LAYERS', '28')))}
fn, args = programs['train_step']
try:
    fn.lower(*args).compile()
    print('compiled')
except Exception as e:  # pylint: disable=broad-except  (the compiler's message is the result)
    print(str(e)[:6000])
