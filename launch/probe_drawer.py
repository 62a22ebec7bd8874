r"""How well a thinking model draws given plans (``unigrpo_jax.shapes.drawer_probe``).

    python launch/probe_drawer.py --workdir=checkpoints/shapes_sft_think --samples=4
    python launch/probe_drawer.py --workdir=runs/shapes_demo/unigrpo --cfg=2
    python launch/probe_drawer.py --workdir=runs/shapes_demo/unigrpo \
        --planners=runs/shapes_demo/sft_think,runs/shapes_demo/unigrpo

Random plans from the SFT data distribution for every prompt of ``--prompts``, drawn as
teacher-forced thinking; prints, per kind of plan (object count, shared colour, neighbouring
cells), how many images show exactly the plan and how many are strictly correct.
``--planners``: instead, the greedy plans of each listed thinking model drawn by ``--workdir``'s
model (strict accuracy per tag; ``drawer_probe.cross``): the SFT model's plans drawn by the RL
model show what RL changed in the drawing, the RL model's plans drawn by the SFT model what it
changed in the planning.
"""

from absl import app, flags

from unigrpo_jax.loading import tokenizer as tokenizer_lib
from unigrpo_jax.shapes import prompt_source
from unigrpo_jax.shapes import drawer_probe
from unigrpo_jax.shapes import evaluate as shapes_eval
from unigrpo_jax.train import run_dir

_WORKDIR = flags.DEFINE_string('workdir', None, 'A run directory of a thinking model.',
                               required=True)
_PROMPTS = flags.DEFINE_string(
    'prompts', prompt_source.EVAL_FILE, 'ShapesEval prompts (GenEval format).')
_SAMPLES = flags.DEFINE_integer('samples', 4, 'Random plans per prompt.', lower_bound=1)
_CFG = flags.DEFINE_float('cfg', 1.0, 'Text CFG scale (1 = off).')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the plans and the noise.')
_PLANNERS = flags.DEFINE_list('planners', None, 'Run directories of thinking models whose greedy '
                              'plans --workdir draws (instead of random plans).')


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments {argv[1:]}')
    run = run_dir.load(_WORKDIR.value)
    tokenizer = tokenizer_lib.load_tokenizer(run.tokenizer_dir)[0]
    metadata = shapes_eval.load_prompts(_PROMPTS.value)
    if _PLANNERS.value:
        rows = {f'plans of {p}, drawn by {run.checkpoint}': drawer_probe.cross(
            run_dir.load(p), run, tokenizer, metadata, cfg_scale=_CFG.value, seed=_SEED.value)
            for p in _PLANNERS.value}
        print(f'{len(metadata)} prompts, cfg {_CFG.value:g}, strict accuracy (%)')
        print(shapes_eval.markdown_table(rows))
        return
    rows = drawer_probe.probe(run, tokenizer, metadata, samples=_SAMPLES.value,
                              cfg_scale=_CFG.value, seed=_SEED.value)
    print(f'{run.checkpoint}: {len(metadata)} prompts x {_SAMPLES.value} plans, cfg {_CFG.value:g}')
    print(drawer_probe.markdown_table({run.checkpoint: rows}))


if __name__ == '__main__':
    app.run(main)
