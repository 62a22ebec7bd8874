r"""The ShapesEval demo: UniGRPO from the shipped SFT model, evaluated before and after.

    make demo                                  # = python launch/demo.py (after the install)
    python launch/demo.py --from-scratch       # redo the SFT first (two stages, ~25 min more)
    python launch/demo.py --config.total_steps=10 --out=/tmp/demo   # shorter
    python launch/demo.py --config=configs/shapes_unigrpo.py --out=runs/demo_paper  # window term

The default config is ``configs/shapes_uninft.py``: UniGRPO with DiffusionNFT as its image term
and the exact-scene reward, the ShapesEval configuration whose reward visibly rises and which
gains on every documented seed (docs/results.md); ``configs/shapes_unigrpo.py`` is UniGRPO with
the paper's image term (the SDE-window flow term).

The report puts the run beside the documented seeds of the arm its config trains
(``docs/results/shapes_gains.json``).

What it writes under ``--out`` (run directories, ``report.md``, the reward curve, image
grids): ``unigrpo_jax.experiments.demo``. Running it again resumes the RL run where it stopped
and redoes the report.
"""

import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from unigrpo_jax import config_files
from unigrpo_jax.experiments import demo

_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(config_files.CONFIGS, 'shapes_uninft.py'), 'RL config.',
    lock_config=False)
_OUT = flags.DEFINE_string('out', os.path.join('runs', 'shapes_demo'), 'Output directory.')
_FROM_SCRATCH = flags.DEFINE_bool('from-scratch', False, 'Train the SFT model first, as the '
                                  'shipped one was (configs/shapes_sft.py:think,stage1 then '
                                  ':think,stage2), instead of copying it.')
_SFT_SCALE = flags.DEFINE_enum('sft_scale', '', ['', ',test'], 'With --from-scratch: \',test\' '
                               'trains the tiny SFT config of the tests instead.')
_PER_TAG = flags.DEFINE_integer('eval_per_tag', None, 'Evaluate only the first N prompts of '
                                'each tag (default: all 40).')


def _say(message: str) -> None:
    print(f'[demo {time.strftime("%H:%M:%S")}] {message}', flush=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments {argv[1:]}')
    demo.run(_CONFIG.value, _OUT.value, from_scratch=_FROM_SCRATCH.value,
             sft_scale=_SFT_SCALE.value, per_tag=_PER_TAG.value,
             command=' '.join(['python', *sys.argv]), say=_say)


if __name__ == '__main__':
    app.run(main, flags_parser=config_files.parse_flags)
