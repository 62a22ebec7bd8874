r"""Converts a Bagel release directory to an Orbax checkpoint directory, or back.

    python launch/convert_bagel.py --src=BAGEL_DIR --dst=OUT_DIR [--dtype=keep|float32|bfloat16]
    python launch/convert_bagel.py --export --src=OUT_DIR --dst=BAGEL_DIR

BAGEL_DIR holds ``ema.safetensors`` (or ``model.safetensors``), ``ae.safetensors``,
``llm_config.json``, ``vit_config.json`` and the tokenizer files (or, like the fixtures, a
``config.json`` with ``new_token_ids``). OUT_DIR gets the json configs, ``checkpoint/`` (Orbax)
and ``tokenizer/`` (with Bagel's special tokens added). The logic is in
``unigrpo_jax.loading.pipeline``.
"""

import sys

from absl import app, flags, logging

from unigrpo_jax.loading import pipeline
from unigrpo_jax.loading.checkpoint import CheckpointError
from unigrpo_jax.errors import ConfigError

_SRC = flags.DEFINE_string('src', None, 'Directory to read.', required=True)
_DST = flags.DEFINE_string('dst', None, 'Directory to write.', required=True)
_DTYPE = flags.DEFINE_enum('dtype', 'keep', list(pipeline.DTYPES),
                           'Dtype of the converted params (keep: the checkpoint\'s).')
_EXPORT = flags.DEFINE_bool('export', False,
                            'Orbax directory --src -> Bagel release directory --dst.')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace an existing checkpoint in --dst.')


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments {argv[1:]}')
    try:
        if _EXPORT.value:
            pipeline.export_release(_SRC.value, _DST.value, log=logging.info)
        else:
            pipeline.convert_release(_SRC.value, _DST.value, dtype=pipeline.DTYPES[_DTYPE.value],
                                     overwrite=_OVERWRITE.value, log=logging.info)
    except (CheckpointError, ConfigError) as e:  # a bad --src or --dst: one line, no trace
        sys.exit(f'launch/convert_bagel.py: {e}')


if __name__ == '__main__':
    app.run(main)
