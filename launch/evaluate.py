r"""ShapesEval accuracy of a run: per tag and overall, a markdown table and image grids.

    python launch/evaluate.py --workdir=checkpoints/shapes_sft_think --think=both --cfg=1,2,4
    python launch/evaluate.py --workdir=runs/shapes_unigrpo        # an RL run's latest checkpoint
    python launch/evaluate.py --workdir=runs/sft_think --per_tag=10  # an SFT run, quick
    python launch/evaluate.py --workdir=runs/shapes_unigrpo --step=40 \
        --prompts=data/shapes_eval/val_prompts.jsonl   # a saved step, on the validation set
    python launch/evaluate.py --workdir=runs/shapes_unigrpo --weights=params  # not its EMA

``--workdir``: an RL workdir, an SFT workdir or an exported SFT checkpoint
(``unigrpo_jax.train.run_dir``). Sweeps thinking on/off (``--think=auto``: as the run was
trained) x the text-CFG scales (1 = off; default: 1 and the run's scale) with the run's ODE
sampler; writes ``results.md``, ``results.json`` and ``grid_*.png`` to ``--out`` (default
``<workdir>/eval_sweep``). An RL run that kept a moving average of its params
(``optimizer.ema_decay`` > 0) is evaluated with it unless ``--weights=params``.
"""

import os
import sys

from absl import app, flags

from unigrpo_jax.loading import tokenizer as tokenizer_lib
from unigrpo_jax.shapes import prompt_source
from unigrpo_jax.shapes import evaluate as shapes_eval
from unigrpo_jax.errors import ConfigError
from unigrpo_jax.parallel import distributed
from unigrpo_jax.train import checkpointing, run_dir

_WORKDIR = flags.DEFINE_string('workdir', None, 'A run directory (RL, SFT or an exported SFT '
                               'checkpoint).', required=True)
_PROMPTS = flags.DEFINE_string(
    'prompts', prompt_source.EVAL_FILE, 'ShapesEval prompts (GenEval format).')
_THINK = flags.DEFINE_enum('think', 'auto', ['auto', 'on', 'off', 'both'], 'Thinking.')
_CFG = flags.DEFINE_list('cfg', None, 'Text CFG scales (1 = off); default: 1 and the run\'s '
                         'scale.')
_PER_TAG = flags.DEFINE_integer('per_tag', None, 'Only the first N prompts of each tag.')
_NUM_TIMESTEPS = flags.DEFINE_integer('num_timesteps', None, 'Override the ODE grid points.')
_STEP = flags.DEFINE_integer('step', None, 'An RL run\'s checkpoint step (default: the latest).')
_SAMPLES = flags.DEFINE_integer('samples_per_prompt', 1, 'Images per prompt, each from its own '
                                'initial noise (less sampling noise in the score).',
                                lower_bound=1)
_WEIGHTS = flags.DEFINE_enum('weights', None, list(checkpointing.WEIGHTS), 'An RL run\'s '
                             'params or their moving average (optimizer.ema_decay > 0); default: '
                             'the moving average when the run kept one.')
_OUT = flags.DEFINE_string('out', None, 'Output directory.')


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments {argv[1:]}')
    try:
        distributed.require_one_process('launch/evaluate.py')
    except ConfigError as e:
        sys.exit(str(e))
    try:
        run = run_dir.load(_WORKDIR.value, _STEP.value, weights=_WEIGHTS.value)
    except (FileNotFoundError, ValueError) as e:  # not a run, nothing saved, no EMA
        sys.exit(f'launch/evaluate.py: {e}')
    if _NUM_TIMESTEPS.value:
        run.eval.num_timesteps = _NUM_TIMESTEPS.value
    tokenizer = tokenizer_lib.load_tokenizer(run.tokenizer_dir)[0]
    thinks = {'auto': [run.think], 'on': [True], 'off': [False],
              'both': [True, False]}[_THINK.value]
    scales = ([float(s) for s in _CFG.value] if _CFG.value
              else shapes_eval.default_cfg_scales(run.eval))
    metadata = shapes_eval.load_prompts(_PROMPTS.value)
    if _PER_TAG.value:
        metadata = shapes_eval.subset(metadata, _PER_TAG.value)
    out = _OUT.value or os.path.join(_WORKDIR.value, 'eval_sweep')
    print(f'evaluating {run.checkpoint}' + (f' (step {run.step})' if run.step else ''),
          flush=True)
    shapes_eval.sweep(run, tokenizer, metadata, thinks=thinks, cfg_scales=scales, out_dir=out,
                      samples_per_prompt=_SAMPLES.value, log=lambda s: print(s, flush=True))
    with open(os.path.join(out, 'results.md')) as f:
        print(f.read())


if __name__ == '__main__':
    app.run(main)
