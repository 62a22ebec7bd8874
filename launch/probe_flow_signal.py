r"""How much of a group's reward spread the SDE window's steps cause (docs/results.md, FlowGRPO).

    python launch/probe_flow_signal.py --config=configs/shapes_flowgrpo.py --out=/tmp/signal
    python launch/probe_flow_signal.py --config=configs/shapes_unigrpo.py --out=/tmp/signal_think

GRPO learns from the spread of rewards within a prompt's group, and the image term credits it
to the window's sampled steps. Each variant here is ``--steps`` rollout batches of the config
from its starting model with both learning rates 0 (so every batch is the starting policy's),
and reports the mean within-group reward std (``reward/group_std``) and the fraction of groups
whose chains all scored the same (``reward/constant_group_fraction``):

* ``initial_noise=chain`` (how the config trains): the whole spread, from the chains' own
  initial noises, their reasoning (a thinking config) and their window steps;
* ``initial_noise=group``: the chains of a prompt share one initial noise, so what is left is
  caused by what they sampled (reasoning and window);
* ``initial_noise=group`` with the window fixed at each start of ``--window_starts``: where in
  the schedule the window's noise still changes the reward.

Every variant sees the same prompts (the run seed); ``<out>/<variant>`` holds its run.
"""

import json
import os

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from unigrpo_jax import config_files
from unigrpo_jax.train import loop

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/shapes_flowgrpo.py',
                                          'RL config whose starting model is probed.')
_OUT = flags.DEFINE_string('out', None, 'Directory of the variants\' runs.', required=True)
_STEPS = flags.DEFINE_integer('steps', 6, 'Rollout batches per variant.', lower_bound=1)
_STARTS = flags.DEFINE_list('window_starts', ['0', '7', '14', '21'],
                            'Fixed window starts probed with a shared initial noise.')


def _variants(config) -> dict[str, dict]:
    configured = (config.rollout.window_min_start, config.rollout.window_max_start)
    out = {f'initial_noise=chain, window start in {list(configured)}': dict(initial_noise='chain'),
           f'initial_noise=group, window start in {list(configured)}': dict(initial_noise='group')}
    for start in (int(s) for s in _STARTS.value):
        out[f'initial_noise=group, window start {start}'] = dict(
            initial_noise='group', window_min_start=start, window_max_start=start)
    return out


def _probe(config, rollout: dict, workdir: str) -> dict[str, float]:
    config = config.copy_and_resolve_references()
    config.rollout.update(rollout)
    config.total_steps = _STEPS.value
    config.optimizer.update(lr_und=0.0, lr_gen=0.0)
    config.ppo_epochs = 1  # the update changes nothing at learning rate 0
    config.eval_every = 0
    config.checkpoint_every = _STEPS.value
    loop.train(config, workdir)
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows = [r for r in rows if 'reward/group_std' in r]
    return {k: float(np.mean([r[k] for r in rows]))
            for k in ('reward/mean', 'reward/group_std', 'reward/constant_group_fraction')}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments {argv[1:]}')
    config = _CONFIG.value
    results = {name: _probe(config, rollout, os.path.join(_OUT.value, f'v{i}'))
               for i, (name, rollout) in enumerate(_variants(config).items())}
    whole = next(iter(results.values()))['reward/group_std']
    lines = [f'{config.model.checkpoint}, {config.objective.mode}: {_STEPS.value} batches of '
             f'{config.batch_size} prompts x {config.rollout.group_size} chains, learning rate 0',
             '', '| variant | reward | group std | of the configured run\'s | constant groups |',
             '|---|---|---|---|---|']
    for name, r in results.items():
        lines.append(f'| {name} | {r["reward/mean"]:.3f} | {r["reward/group_std"]:.3f} | '
                     f'{r["reward/group_std"] / whole:.0%} | '
                     f'{r["reward/constant_group_fraction"]:.0%} |')
    report = '\n'.join(lines)
    print(report)
    with open(os.path.join(_OUT.value, 'signal.md'), 'w') as f:
        f.write(report + '\n')
    with open(os.path.join(_OUT.value, 'signal.json'), 'w') as f:
        json.dump(results, f, indent=1)


if __name__ == '__main__':
    app.run(main, flags_parser=config_files.parse_flags)
