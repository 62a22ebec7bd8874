r"""Supervised fine-tuning of the tiny pixel-space Bagel on ShapesEval, then its evaluation.

    python launch/train_sft.py --config=configs/shapes_sft.py:think --workdir=runs/sft_think \
        --export_dir=checkpoints/shapes_sft_think
    python launch/train_sft.py --config=configs/shapes_sft.py:nothink --workdir=runs/sft_nothink \
        --export_dir=checkpoints/shapes_sft_nothink

Logs steps/s and ETA, writes params-only checkpoints (``workdir/step_{k}``, ``workdir/final``)
and the evaluation (``workdir/eval/``); ``--export_dir`` also copies the final checkpoint with a
``MANIFEST.json``. The loop is ``unigrpo_jax/shapes/sft/train.py``.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from unigrpo_jax import config_files
from unigrpo_jax.errors import ConfigError
from unigrpo_jax.parallel import distributed
from unigrpo_jax.shapes.sft import train

_CONFIG = config_flags.DEFINE_config_file('config', None, 'SFT config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory.', required=True)
_EXPORT = flags.DEFINE_string('export_dir', None, 'Copy the final checkpoint, evaluation and a '
                              'MANIFEST.json here (e.g. checkpoints/shapes_sft_think).')


def main(argv):
    del argv
    try:
        distributed.require_one_process('launch/train_sft.py')
    except ConfigError as e:
        sys.exit(str(e))
    train.train(_CONFIG.value, _WORKDIR.value, export_dir=_EXPORT.value,
                command=' '.join(['python', *sys.argv]), log=lambda s: print(s, flush=True))


if __name__ == '__main__':
    flags.mark_flags_as_required(['config'])
    app.run(main, flags_parser=config_files.parse_flags)
