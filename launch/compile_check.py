r"""Compiles the RL programs ahead of time for an accelerator that is not attached and reports
each one's memory per device: does the run fit before it is queued?

    python launch/compile_check.py --config=configs/bagel_grpo.py --target=v5p-16
    python launch/compile_check.py --config=configs/bagel_grpo.py:tiny --target=h100x8 \
        --programs=train --out_dir=/tmp/cc
    python launch/compile_check.py --config=configs/bagel_grpo.py --target=v5p-16 --num_slices=2
    python launch/compile_check.py --config=configs/bagel_grpo.py \
        --target=../shared/data/gpu_targets/h200.txtpb:16
    python launch/compile_check.py --target=list

TPU targets need libtpu (``pip install -e '.[tpu-compile]'``), GPU targets jax's CUDA plugin
(``'.[gpu-compile]'``); neither needs the accelerator. ``--num_slices`` joins TPU slices over the
data-centre network (the mesh's data axis crosses them, else its fsdp axis:
``parallel.mesh.dcn_axis``); ``FILE.txtpb:N`` compiles for N GPUs of an XLA GPU spec file.
Writes ``compile_check.csv`` and ``compile_check.md`` to ``--out_dir`` (default
``runs/compile_check/<target's name>``, e.g. ``2xv5p-16``); the columns are
described in ``unigrpo_jax/bench/compile_check.py``. Exit status: 0 when every program compiles
and fits (peak <= ``--limit_fraction`` of the device memory), 1 when one does not or fails,
2 for a bad target, program name or config.
"""

import functools
import os
import sys

# Compile only: never initialise (or claim) an attached accelerator, and so no need of libtpu's
# one-process-per-machine lock (a training run or another check may hold it).
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from unigrpo_jax import config_files
from unigrpo_jax.bench import compile_check, rl_programs, targets  # noqa: E402
from unigrpo_jax.errors import ConfigError  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file[:arg].',
                                          lock_config=True)
_TARGET = flags.DEFINE_string('target', None, 'Target to compile for: any size of a family '
                              "(v5p-N, v5e-N, v6e-N, h100xN, h200xN), N GPUs of an XLA GPU spec "
                              "file (FILE.txtpb:N), or 'list' to print the forms.", required=True)
_NUM_SLICES = flags.DEFINE_integer('num_slices', 1, 'TPU slices of --target joined by the '
                                   'data-centre network (multi-slice).')
_OUT_DIR = flags.DEFINE_string('out_dir', None, 'Directory for the report (default '
                               'runs/compile_check/<target>).')
_PROGRAMS = flags.DEFINE_list('programs', None, 'Programs to compile (default: all of '
                              'bench.rl_programs.rl_programs).')
_LAYERS = flags.DEFINE_integer('layers', None, 'Compile the model with this many LLM layers '
                               '(quick scaled compiles while iterating; default: the model\'s).')
_SYSTEM_TOKENS = flags.DEFINE_integer('system_tokens', None, 'Tokens of the system segment '
                                      '(default: the tokenizer\'s encoding when config.tokenizer '
                                      'is set, else bench.rl_programs.SYSTEM_TOKENS_BOUND).')
_LIMIT = flags.DEFINE_float('limit_fraction', 0.9, 'A program fits when its peak memory per '
                            'device is at most this fraction of the device memory.')


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments {argv[1:]}')
    if _TARGET.value == 'list':
        print(targets.table())
        return 0
    try:
        # a bad name fails before the config is read
        target = targets.get(_TARGET.value, _NUM_SLICES.value)
        if _CONFIG.value is None:
            raise ConfigError('--config is required, e.g. --config=configs/bagel_grpo.py')
        out_dir = _OUT_DIR.value or os.path.join('runs', 'compile_check', target.name)
        build = functools.partial(rl_programs.rl_programs, system_len=_SYSTEM_TOKENS.value,
                                  layers=_LAYERS.value)
        estimates = functools.partial(rl_programs.program_estimates,
                                      system_len=_SYSTEM_TOKENS.value, layers=_LAYERS.value)
        _, ok = compile_check.check(_CONFIG.value, _TARGET.value, out_dir, _PROGRAMS.value,
                                    _LIMIT.value, build_programs=build,
                                    num_slices=_NUM_SLICES.value, estimates=estimates)
    except (ConfigError, targets.CompilerNotInstalled) as e:  # one line; bugs keep tracebacks
        print(f'launch/compile_check.py: {e}', file=sys.stderr)
        return 2
    return 0 if ok else 1


if __name__ == '__main__':
    app.run(main, flags_parser=config_files.parse_flags)
