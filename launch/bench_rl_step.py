r"""Where an RL step's time goes, and how much of the machine's matmul rate each phase reaches.

    python launch/bench_rl_step.py --config=configs/shapes_unigrpo.py --workdir=/tmp/bench_step
    python launch/bench_rl_step.py --config=configs/shapes_flowgrpo.py --workdir=/tmp/bench_flow

Runs ``--steps`` RL steps of the config (evaluation off, from its starting model) and averages
the loop's own time split (``time/*`` in ``metrics.jsonl``) over the steps that compiled
nothing: after the first (the rollout's compile), each update size (``update/chains``, one of
the config's ``rl.compaction`` buckets) counts from its second step on. Then measures this device's rate on one large matmul and on reading a large
array (``bench.perf``), makes them the peaks of a local ``targets.Target`` and prints, per
phase, its share of the step and the analytic roofline time at those peaks
(``rl_programs.iteration_estimate``: matmul FLOPs / rate, or bytes / bandwidth) as a fraction of
the measured time: the fraction of the machine's large-matmul rate the phase reaches (ratios,
not timings to compare across machines).
"""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from unigrpo_jax import config_files
from unigrpo_jax.bench import perf, rl_programs, targets
from unigrpo_jax.train import loop

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/shapes_unigrpo.py', 'RL config.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory of the benchmark run (a fresh one).',
                               required=True)
_STEPS = flags.DEFINE_integer('steps', 4, 'RL steps; the first (compiling) is not counted.',
                              lower_bound=2)
_OUT = flags.DEFINE_string('out', None, 'Also write the results to this JSON file.')

# Phases of the loop's time split (rl_step) and the roofline terms each one holds.
_PHASES = {'rollout': ('rollout_decode_s', 'rollout_denoise_s'), 'reward': (),
           'reference': ('reference_s',), 'update': ('train_s',)}


def compiled_nothing(rows: list[dict]) -> list[dict]:
    """The metrics rows of the steps that compiled nothing: not the first, and not the first
    of each update size (``update/chains``; absent: one size)."""
    seen, out = set(), []
    for i, row in enumerate(rows):
        size = row.get('update/chains')
        if i and size in seen:
            out.append(row)
        seen.add(size)
    return out


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments {argv[1:]}')
    config = _CONFIG.value
    if os.path.exists(os.path.join(_WORKDIR.value, 'metrics.jsonl')):
        raise app.UsageError(f'--workdir={_WORKDIR.value} holds a run; give a fresh directory')
    config.total_steps = _STEPS.value
    config.eval_every = 0
    config.checkpoint_every = _STEPS.value
    loop.train(config, _WORKDIR.value)
    with open(os.path.join(_WORKDIR.value, 'metrics.jsonl')) as f:
        rows = compiled_nothing([json.loads(line) for line in f if line.strip()])
    if not rows:
        raise app.UsageError(f'every one of the {_STEPS.value} steps compiled a program: give '
                             'more --steps')
    measured = {p: float(np.mean([r[f'time/{p}_s'] for r in rows])) for p in _PHASES}
    step_s = float(np.mean([r['time/step_s'] for r in rows]))

    devices = jax.devices()
    n = config.parallelism.num_devices
    n = len(devices) if n <= 0 else n
    flops = perf.matmul_flops_per_second(jnp.dtype(config.model.dtype))
    bandwidth = perf.read_bytes_per_second()
    local = targets.Target(name=f'{devices[0].device_kind} (measured)',
                           platform=devices[0].platform, topology='', num_devices=n, hosts=1,
                           device_memory=0, peak_flops=flops, bandwidth=bandwidth)
    roofline = rl_programs.iteration_estimate(config, local, system_len=0)
    print(f'{config.model.checkpoint or "random model"}, {config.objective.mode}: '
          f'{config.batch_size} prompts x {config.rollout.group_size} chains, '
          f'{config.ppo_epochs * config.num_minibatches} updates per step, {n} device(s) '
          f'({devices[0].device_kind}); mean of the {len(rows)} of {_STEPS.value} steps that '
          'compiled nothing')
    print(f'measured: one {config.model.dtype} 2048^3 matmul {flops / 1e9:.1f} GFLOP/s per '
          f'device, reading {bandwidth / 1e9:.1f} GB/s')
    print(f'step {step_s:.2f} s\n')
    print('| phase | share of the step | roofline / measured (fraction of the matmul rate) |')
    print('|---|---|---|')
    table = {}
    for phase, terms in _PHASES.items():
        ideal = sum(roofline[t] for t in terms)
        fraction = ideal / measured[phase] if terms and measured[phase] > 0 else math.nan
        table[phase] = {'seconds': measured[phase], 'share': measured[phase] / step_s,
                        'roofline_s': ideal if terms else None, 'fraction': fraction}
        print(f'| {phase} | {measured[phase] / step_s:.0%} | '
              f'{"-" if math.isnan(fraction) else f"{fraction:.1%}"} |')
    if _OUT.value:
        with open(_OUT.value, 'w') as f:
            json.dump({'step_s': step_s, 'matmul_flops': flops, 'bandwidth': bandwidth,
                       'phases': table}, f, indent=1)


if __name__ == '__main__':
    app.run(main, flags_parser=config_files.parse_flags)
