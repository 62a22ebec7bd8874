r"""Sharding strategies x model sizes x meshes: compile time, step time, FLOPs, MFU, memory per
device and collective bytes of the train step, the think decode step and the denoising step.

    python launch/bench_sharding.py --config=configs/bagel_grpo.py:tiny --out=/tmp/sweep
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python launch/bench_sharding.py \
        --config=configs/bagel_grpo.py:tiny --sizes=tiny,1b,7b --meshes='8,1,1;1,8,1;1,4,2' \
        --out=/tmp/sweep

Strategies: every table of ``sharding.STRATEGIES`` plus ``config.parallelism.rules``. Sizes:
``tiny`` (the config's random model), ``1b`` (``perf.bagel_1b_config``), ``7b``
(``perf.bagel_7b_config``). The think tokens, SDE window and image size come from the config's
rollout section. Rows that do not fit (``--memory_limit_gb``, default the device's memory) or
fail are reported, not fatal. On a CPU only the tiny model runs, everything else is compiled
only. Writes ``bench.csv``, ``bench.md`` and ``bench.png`` to ``--out``; the conventions of
every column are in ``unigrpo_jax/bench/sweep.py``.
"""

import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from unigrpo_jax import config_files
from unigrpo_jax.bench import programs, report, sweep
from unigrpo_jax.parallel import mesh as mesh_lib
from unigrpo_jax.parallel import sharding
from unigrpo_jax.train import settings
from unigrpo_jax.train.optimizer import make_optimizer

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Training config file.',
                                          lock_config=True)
_OUT = flags.DEFINE_string('out', None, 'Directory for bench.csv, bench.md and bench.png.',
                           required=True)
_SIZES = flags.DEFINE_list('sizes', ['tiny'], f'Model sizes, of {programs.SIZES}.')
_STRATEGIES = flags.DEFINE_list('strategies', None, 'Strategies (default: all of '
                                'sharding.STRATEGIES and config.parallelism.rules).')
_MESHES = flags.DEFINE_string('meshes', None, "Mesh shapes (data,fsdp,tensor) separated by ';', "
                              "e.g. '8,1,1;1,4,2' (default: sweep.default_meshes).")
_PROGRAMS = flags.DEFINE_list('programs', list(programs.PROGRAMS), f'Of {programs.PROGRAMS}.')
_BATCH = flags.DEFINE_integer('batch', 8, 'Chains (train, decode) or images (denoise) per call.')
_SYSTEM_LEN = flags.DEFINE_integer('system_len', 32, 'Tokens of the system segment.')
_PROMPT_LEN = flags.DEFINE_integer('prompt_len', 32, 'Tokens of the prompt segment.')
_LAYERS = flags.DEFINE_integer('layers', None, 'LLM layers of the 1b and 7b sizes (default 16 '
                               'and 28).')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed calls per executed row.')
_MEMORY_LIMIT = flags.DEFINE_float('memory_limit_gb', None, 'Rows whose peak memory per device '
                                   'exceeds this (GiB) are not run (default: the device memory '
                                   'where known).')
_EXECUTE = flags.DEFINE_bool('execute', True, 'Run the rows that may run (else compile only).')


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments {argv[1:]}')
    mesh_lib.reserve_cpu_collective_threads()
    cfg = _CONFIG.value
    strategies = _STRATEGIES.value or [*sharding.STRATEGIES, *cfg.parallelism.rules.keys()]
    meshes = (sweep.parse_meshes(_MESHES.value) if _MESHES.value
              else sweep.default_meshes(jax.device_count()))
    limit = (_MEMORY_LIMIT.value * 2**30 if _MEMORY_LIMIT.value is not None
             else sweep.device_memory_limit())
    print(f'backend={jax.default_backend()} devices={jax.device_count()} '
          f'device_kind={jax.devices()[0].device_kind} jax={jax.__version__} '
          f'memory_limit={limit}')
    rows = []
    for row in sweep.sweep(cfg, make_optimizer(cfg.optimizer, settings.total_updates(cfg)),
                           sizes=_SIZES.value, strategies=strategies, meshes=meshes,
                           programs=_PROGRAMS.value, batch=_BATCH.value,
                           system_len=_SYSTEM_LEN.value, prompt_len=_PROMPT_LEN.value,
                           layers=_LAYERS.value, repeats=_REPEATS.value, memory_limit=limit,
                           execute=_EXECUTE.value):
        rows.append(row)
        print(report.markdown([row]).splitlines()[-1], flush=True)
    for path in report.write_outputs(rows, _OUT.value):
        print('wrote', path)
    return 0


if __name__ == '__main__':
    sys.exit(app.run(main, flags_parser=config_files.parse_flags))
