r"""ShapesEval accuracy of an SFT (or RL) checkpoint: per tag and overall, table and image grids.

    python launch/evaluate.py --workdir=runs/sft_think                    # its final/ checkpoint
    python launch/evaluate.py --checkpoint=checkpoints/shapes_sft_think --think=both --cfg=1,2,4

Sweeps thinking on/off (``--think=auto`` uses the training arm) x the text-CFG scales (1 = off);
writes ``results.md``, ``results.json`` and ``grid_*.png`` to ``--out`` (default
``<checkpoint>/eval_sweep``). Settings (sampler, sequence lengths) come from the training
config saved with the run (``sft_config.json``), else ``configs/shapes_sft.py``.
"""

import importlib.util
import json
import os

import ml_collections
from absl import app, flags

from unigrpo_jax.sft import checkpoint, train
from unigrpo_jax.shapes import tokenizer as shapes_tokenizer

_WORKDIR = flags.DEFINE_string('workdir', None, 'An SFT workdir (its final/ is evaluated).')
_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'A checkpoint directory (overrides '
                                  '--workdir/final).')
_THINK = flags.DEFINE_enum('think', 'auto', ['auto', 'on', 'off', 'both'], 'Thinking.')
_CFG = flags.DEFINE_list('cfg', None, 'Text CFG scales (1 = off); default: 1 and the config '
                         'scale.')
_PER_TAG = flags.DEFINE_integer('per_tag', None, 'Only the first N prompts of each tag.')
_OUT = flags.DEFINE_string('out', None, 'Output directory.')
_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), '..', 'configs', 'shapes_sft.py')
_NUM_TIMESTEPS = flags.DEFINE_integer('num_timesteps', None, 'Override the ODE grid points.')


def _config(directories: list[str]) -> ml_collections.ConfigDict:
    for d in directories:
        f = os.path.join(d, train.CONFIG_FILE)
        if os.path.exists(f):
            with open(f) as fh:
                return ml_collections.ConfigDict(json.load(fh))
    spec = importlib.util.spec_from_file_location('shapes_sft', _DEFAULT_CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config('think')


def main(argv):
    del argv
    if not (_CHECKPOINT.value or _WORKDIR.value):
        raise app.UsageError('give --workdir or --checkpoint')
    ckpt = _CHECKPOINT.value or os.path.join(_WORKDIR.value, train.FINAL)
    config = _config([d for d in (ckpt, _WORKDIR.value) if d])
    if _NUM_TIMESTEPS.value:
        config.eval.num_timesteps = _NUM_TIMESTEPS.value
    model, params, _ = checkpoint.load(ckpt)
    tok_dir = checkpoint.tokenizer_dir(ckpt)
    tokenizer, _ = shapes_tokenizer.load(tok_dir if os.path.isdir(tok_dir) else config.tokenizer)
    thinks = {'auto': [bool(config.think)], 'on': [True], 'off': [False],
              'both': [True, False]}[_THINK.value]
    scales = ([float(s) for s in _CFG.value] if _CFG.value
              else train.default_cfg_scales(config))
    out = _OUT.value or os.path.join(ckpt, 'eval_sweep')
    rows = train.evaluate_sweep(params, model, tokenizer, config, thinks=thinks,
                                cfg_scales=scales, out_dir=out, per_tag=_PER_TAG.value,
                                log=lambda s: print(s, flush=True))
    with open(os.path.join(out, 'results.md')) as f:
        print(f.read())
    del rows


if __name__ == '__main__':
    app.run(main)
