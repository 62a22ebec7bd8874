r"""Images (and thinking) from a run's latest checkpoint for a GenEval-format prompt file.

    python launch/sample.py --workdir=runs/shapes_demo/unigrpo \
        --prompts=data/shapes_eval/eval_prompts.jsonl --out=/tmp/samples --samples=4

``--workdir``: an RL workdir, an SFT workdir or an exported SFT checkpoint
(``unigrpo_jax.train.run_dir``). ``--prompts``: one JSON object per line with a ``prompt``
(GenEval's metadata format; other fields are kept in the output). Writes
``<prompt index>_<sample index>.png`` (prompt index = 0-based line of the file, blank lines
counted) and ``samples.jsonl`` (one line per image: indices, prompt, thinking text; in the order
drawn, sample 0 of every prompt first, and written as each batch is drawn, so a stopped run
keeps the lines of its images) to ``--out``. Every prompt
is encoded before anything is drawn: a prompt too long for the run or with words outside its
tokenizer stops the script with its line number. Sampling as the run evaluates: greedy thinking (``--sample_think``: sampled at temperature 1),
then the ODE sampler with the run's text CFG (``--cfg`` overrides it).
"""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from unigrpo_jax import viz
from unigrpo_jax.loading import tokenizer as tokenizer_lib
from unigrpo_jax.data import prompts as data_lib
from unigrpo_jax.rollout import eval_sampler
from unigrpo_jax.rollout import generate
from unigrpo_jax.rollout.sampling import TokenSampler
from unigrpo_jax.errors import ConfigError
from unigrpo_jax.parallel import distributed
from unigrpo_jax.train import checkpointing, run_dir

_WORKDIR = flags.DEFINE_string('workdir', None, 'A run directory.', required=True)
_PROMPTS = flags.DEFINE_string('prompts', None, 'GenEval-format JSONL prompt file.',
                               required=True)
_WEIGHTS = flags.DEFINE_enum('weights', None, list(checkpointing.WEIGHTS), 'An RL run\'s '
                             'params or their moving average (optimizer.ema_decay > 0); default: '
                             'the moving average when the run kept one.')
_OUT = flags.DEFINE_string('out', None, 'Output directory.', required=True)
_SAMPLES = flags.DEFINE_integer('samples', 1, 'Images per prompt.', lower_bound=1)
_CFG = flags.DEFINE_float('cfg', None, 'Text CFG scale (1 = off); default: the run\'s.')
_SAMPLE_THINK = flags.DEFINE_bool('sample_think', False, 'Sample the thinking (temperature 1) '
                                  'instead of decoding it greedily.')
_BATCH = flags.DEFINE_integer('batch_size', 64, 'Prompts per generation call.', lower_bound=1)
_SEED = flags.DEFINE_integer('seed', 0, 'Random seed (noise, sampled thinking).')


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments {argv[1:]}')
    try:
        distributed.require_one_process('launch/sample.py')
    except ConfigError as e:
        sys.exit(str(e))
    prompts = data_lib.read_jsonl_lines(_PROMPTS.value)  # a bad file fails before any load
    try:
        run = run_dir.load(_WORKDIR.value, weights=_WEIGHTS.value)
    except (FileNotFoundError, ValueError) as e:  # not a run, nothing saved, no EMA
        sys.exit(f'launch/sample.py: {e}')
    tokenizer, tokens, _ = tokenizer_lib.load_tokenizer(run.tokenizer_dir)
    for line, item in prompts:  # every prompt is checked before any image is drawn
        try:
            tokenizer_lib.encode_segments(tokenizer, tokens, [item['prompt']],
                                          run.max_prompt_tokens)
        except ValueError as e:  # too long for the run, or words the tokenizer does not know
            sys.exit(f'launch/sample.py: {_PROMPTS.value}:{line + 1}: {e}')
    system_ids = (jnp.asarray(tokenizer_lib.encode_segment(tokenizer, tokens, run.system_prompt))
                  if run.think and run.system_prompt else None)
    think_tokens = run.max_think_tokens if run.think else 0
    token_sampler = (TokenSampler(temperature=1.0, top_k=0, top_p=1.0) if _SAMPLE_THINK.value
                     else generate.GREEDY)
    sampler = eval_sampler.sampler_config(run.eval, _CFG.value)
    params = jax.tree.map(jnp.asarray, run.params)
    ae_params = jax.tree.map(jnp.asarray, run.ae_params)
    os.makedirs(_OUT.value, exist_ok=True)
    print(f'{run.kind} run {run.directory}' + (f', step {run.step}' if run.step else '') +
          f': {len(prompts)} prompts x {_SAMPLES.value} samples -> {_OUT.value}', flush=True)
    batch = min(_BATCH.value, len(prompts))
    done, total = 0, len(prompts) * _SAMPLES.value
    records = open(os.path.join(_OUT.value, 'samples.jsonl'), 'w')
    for k in range(_SAMPLES.value):
        for start in range(0, len(prompts), batch):
            chunk = prompts[start:start + batch]
            padded = chunk + [chunk[-1]] * (batch - len(chunk))  # one compiled shape
            ids, lengths = tokenizer_lib.encode_segments(
                tokenizer, tokens, [m['prompt'] for _, m in padded], run.max_prompt_tokens)
            key = jax.random.fold_in(jax.random.fold_in(jax.random.key(_SEED.value), k), start)
            images, think, mask = generate.generate_eval(
                params, ae_params, run.model, sampler, system_ids, jnp.asarray(ids),
                jnp.asarray(lengths), key, think_tokens=think_tokens,
                token_sampler=token_sampler, image_size=tuple(run.image_size))
            images, think, mask = np.asarray(images), np.asarray(think), np.asarray(mask)
            for j, (index, item) in enumerate(chunk):
                viz.save_png(images[j], os.path.join(_OUT.value, f'{index}_{k}.png'))
                text = tokenizer.decode(think[j][mask[j]], skip_special_tokens=True)
                records.write(json.dumps({'prompt_index': index, 'sample_index': k,
                                          'file': f'{index}_{k}.png', 'prompt': item['prompt'],
                                          'thinking': text, 'metadata': item}) + '\n')
            records.flush()
            done += len(chunk)
            print(f'{done}/{total} images', flush=True)
    records.close()


if __name__ == '__main__':
    app.run(main)
