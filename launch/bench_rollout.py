r"""Speed of the rollout's two phases and of the whole rollout, on the configured model.

    python launch/bench_rollout.py --config=configs/bagel_grpo.py:tiny
    python launch/bench_rollout.py --config=configs/bagel_grpo.py --shapes=7b \
        --config.rollout.group_size=4 --config.rollout.max_think_tokens=256 --out=bench.json

What it measures (think decoding and denoising at batch 1 and at the group size, the whole
rollout, recompiles, and on a GPU the roofline fractions): ``unigrpo_jax.bench.rollout_speed``;
``--repeats`` / ``--rollout_repeats`` timed calls each.
``--shapes=7b`` (accelerator only) replaces the config's model by random bf16 weights of
Bagel-7B's sizes; ``docs/performance.md`` has the results and the analytic expectations.
"""

import json
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from unigrpo_jax import config_files
from unigrpo_jax.bench import perf, rollout_speed

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Training config file.',
                                          lock_config=True)
_SHAPES = flags.DEFINE_enum('shapes', 'config', ['config', '7b'],
                            "Model: the config's model, or random bf16 weights of Bagel-7B's "
                            'sizes (accelerator only).')
_LAYERS = flags.DEFINE_integer('layers', None, 'With --shapes=7b: LLM layers (7B: 28), to fit '
                               'memory.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed calls per decode/denoise measurement.')
_ROLLOUT_REPEATS = flags.DEFINE_integer('rollout_repeats', 3, 'Timed calls of the rollout.')
_SYSTEM_LEN = flags.DEFINE_integer('system_len', 32, 'Tokens of the random system segment.')
_PROMPT_LEN = flags.DEFINE_integer('prompt_len', 32, 'Tokens of the random prompt segment.')
_OUT = flags.DEFINE_string('out', None, 'Also write the results to this JSON file.')


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments {argv[1:]}')
    if _LAYERS.value is not None and _SHAPES.value != '7b':
        raise app.UsageError('--layers only applies to --shapes=7b')
    if _SHAPES.value == '7b' and jax.default_backend() == 'cpu':
        llm = perf.bagel_7b_config(_LAYERS.value or 28).llm
        print('--shapes=7b skipped: it needs an accelerator (random bf16 Bagel-7B weights are '
              f'{perf.decoder_param_count(llm) * 2 / 1e9:.0f} GB and a CPU would take hours per '
              'rollout); the backend is cpu.')
        return 0
    header, rows = rollout_speed.measure(
        _CONFIG.value, _SHAPES.value, _LAYERS.value, _REPEATS.value, _ROLLOUT_REPEATS.value,
        _SYSTEM_LEN.value, _PROMPT_LEN.value)
    print(rollout_speed.table(header, rows))
    if _OUT.value:
        with open(_OUT.value, 'w') as f:
            json.dump(dict(header=header, rows=rows), f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(app.run(main, flags_parser=config_files.parse_flags))
