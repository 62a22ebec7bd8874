r"""The learning check (``unigrpo_jax.shapes.learning_check``): TextGRPO, FlowGRPO, UniGRPO and
NFT (DiffusionNFT's image term, docs/nft.md) each raise a reward whose optimum is obvious (the share of the canvas in red) beyond the
batch-to-batch noise; with both learning rates 0 it does not move; with the reward negated it
falls.

    python launch/check_learning.py --workdir=/tmp/learning_check
    python launch/check_learning.py --workdir=/tmp/lc --seeds=0 --checks=flowgrpo,unigrpo_lr0

Prints one row per check and seed (first / last mean reward, z) and writes ``verdicts.json``;
exits with 1 when a check fails. Each run starts from the shipped SFT model of its mode at the
configs' ``:test`` rollout size with this launcher's learning rates (higher than the ShapesEval
recipe's: the check asks whether the gradient points the right way, in few steps).
"""

import dataclasses
import json
import os
import sys

import jax
import numpy as np
from absl import app, flags

from unigrpo_jax import config_files
from unigrpo_jax.shapes import learning_check
from unigrpo_jax.train import loop

_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory of the runs.', required=True)
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds of the learning checks (the '
                           'controls run on the first).')
_CHECKS = flags.DEFINE_list('checks', list(learning_check.CHECKS), 'Which checks.')
_STEPS = flags.DEFINE_integer('steps', 12, 'RL steps per run.')
_WINDOW = flags.DEFINE_integer('window', 4, 'Steps averaged at the start and at the end.')
_LR_UND = flags.DEFINE_float('lr_und', 1e-3, 'Learning rate of the understanding expert.')
_LR_GEN = flags.DEFINE_float('lr_gen', 3e-4, 'Learning rate of the generation expert.')


def _rewards(workdir: str) -> np.ndarray:
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        return np.array([json.loads(line)['reward/mean'] for line in f if line.strip()])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments {argv[1:]}')
    unknown = set(_CHECKS.value) - set(learning_check.CHECKS)
    if unknown:
        raise app.UsageError(f'unknown checks {sorted(unknown)}; expected some of '
                             f'{tuple(learning_check.CHECKS)}')
    os.makedirs(_WORKDIR.value, exist_ok=True)
    # The runs of a mode compile the same programs: compile them once.
    jax.config.update('jax_compilation_cache_dir', os.path.join(_WORKDIR.value, 'xla_cache'))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
    prompt_file = os.path.join(_WORKDIR.value, 'prompts.jsonl')
    with open(prompt_file, 'w') as f:
        f.writelines(json.dumps({'tag': 'custom', 'include': [], 'prompt': p}) + '\n'
                     for p in learning_check.PROMPTS)
    seeds = [int(s) for s in _SEEDS.value]
    rewards = {}
    for name in _CHECKS.value:
        mode, change, sign = learning_check.CHECKS[name]
        base = config_files.load(os.path.join(config_files.ROOT, 'configs',
                                              f'shapes_{mode}.py'), 'test')
        base.optimizer.update(lr_und=_LR_UND.value, lr_gen=_LR_GEN.value)
        for seed in seeds if sign != 0 and change == 'learn' else seeds[:1]:
            workdir = os.path.join(_WORKDIR.value, f'{name}_seed{seed}')
            if not os.path.exists(os.path.join(workdir, 'metrics.jsonl')):
                loop.train(learning_check.check_config(base, change, prompt_file, _STEPS.value,
                                                       seed), workdir)
            rewards[(name, seed)] = _rewards(workdir)
            print(f'{name} seed {seed}: rewards {np.round(rewards[(name, seed)], 4).tolist()}',
                  flush=True)
    verdicts = learning_check.judge(rewards, _WINDOW.value)
    print('\n| check | seed | first | last | z | passed |\n|---|---|---|---|---|---|')
    for v in verdicts:
        print(f'| {v.check} | {v.seed} | {v.first:.4f} | {v.last:.4f} | {v.z:+.1f} | '
              f'{"yes" if v.passed else "NO"} |')
    with open(os.path.join(_WORKDIR.value, 'verdicts.json'), 'w') as f:
        json.dump([dataclasses.asdict(v) for v in verdicts], f, indent=1)
    if not all(v.passed for v in verdicts):
        sys.exit(1)


if __name__ == '__main__':
    app.run(main, flags_parser=config_files.parse_flags)
