"""The drawer probe: plans grouped by what they ask of the drawer, teacher-forced plans steer the
image, and the launcher prints its table."""

import json
import os

import numpy as np
import pytest

from unigrpo_jax.loading import tokenizer as tokenizer_lib
from unigrpo_jax.rollout import eval_sampler
from unigrpo_jax.shapes import detector, drawer_probe, evaluate
from unigrpo_jax.train import run_dir

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SFT_THINK = os.path.join(REPO, 'checkpoints', 'shapes_sft_think')


def test_plan_kinds():
    assert drawer_probe.plan_kind([('circle', 'red', 0, 0)]) == '1 object'
    assert drawer_probe.plan_kind([('circle', 'red', 0, 0), ('square', 'red', 1, 1)]) == (
        '2 objects, same colour, near')  # diagonal neighbours count as near
    assert drawer_probe.plan_kind([('circle', 'red', 0, 0), ('square', 'blue', 0, 2)]) == (
        '2 objects, mixed colours, apart')
    assert drawer_probe.plan_kind([('circle', 'red', 0, 0), ('circle', 'red', 3, 3),
                                   ('square', 'blue', 3, 2)]) == '3 objects, mixed colours, near'


def test_forced_plans_decide_where_the_model_draws():
    """The shipped SFT model draws a single shape where a teacher-forced plan puts it: every
    cell of the grid, wherever its own plan would have put it."""
    run = run_dir.load(SFT_THINK)
    tokenizer = tokenizer_lib.load_tokenizer(run.tokenizer_dir)[0]
    meta = {'tag': 'single_object', 'include': [{'class': 'square', 'count': 1}],
            'prompt': 'a photo of a square'}
    plans = [[('square', 'blue', row, col)] for row in range(4) for col in range(4)]
    result = evaluate.evaluate(run.params, run.model, tokenizer, [meta] * 16, think=True,
                               sampler=eval_sampler.sampler_config(run.eval, 1.0),
                               max_think_tokens=run.max_think_tokens,
                               prompt_len=run.max_prompt_tokens, batch_size=16, plans=plans)
    as_planned = [evaluate.drawn_as_planned(detector.detect(img), p)
                  for img, p in zip(result.images, plans)]
    assert np.mean(as_planned) >= 0.75, as_planned
    assert result.think_texts[5] == '<think> blue square at r1c1 </think>'
    # Images with more objects than the prompt names (one square here).
    assert result.stats['extra_objects'] == np.mean(
        [len(detector.detect(img)) > 1 for img in result.images])


def test_probe_launcher(tmp_path, launch):
    prompts = tmp_path / 'p.jsonl'
    lines = [{'tag': 'two_object', 'include': [{'class': 'circle', 'count': 1},
                                               {'class': 'square', 'count': 1}],
              'prompt': 'a photo of a circle and a square'},
             {'tag': 'single_object', 'include': [{'class': 'circle', 'count': 1}],
              'prompt': 'a photo of a circle'}]
    prompts.write_text(''.join(json.dumps(x) + '\n' for x in lines))
    stdout = launch(['launch/probe_drawer.py', f'--workdir={SFT_THINK}', f'--prompts={prompts}',
                     '--samples=3'])
    assert '2 prompts x 3 plans' in stdout
    rows = {line.split('|')[1].strip(): line for line in stdout.splitlines()
            if line.startswith('| ') and 'count' not in line}
    assert rows['all'].split('|')[2].strip() == '6'
    assert rows['1 object'].split('|')[2].strip() == '3'


def test_cross_launcher_draws_another_models_plans(tmp_path, launch):
    """The SFT model's plans drawn by itself score what its own evaluation scores when the
    image noise is the same (greedy plans, same seed, one batch)."""
    prompts = tmp_path / 'p.jsonl'
    meta = evaluate.subset(evaluate.load_prompts(
        os.path.join(REPO, 'data', 'shapes_eval', 'eval_prompts.jsonl')), 2)  # 2 of each tag
    prompts.write_text(''.join(json.dumps(m) + '\n' for m in meta))
    stdout = launch(['launch/probe_drawer.py', f'--workdir={SFT_THINK}', f'--prompts={prompts}',
                     f'--planners={SFT_THINK}'])
    assert '12 prompts, cfg 1, strict accuracy (%)' in stdout
    row = [line for line in stdout.splitlines() if line.startswith('| plans of ')]
    assert len(row) == 1 and row[0].split('|')[-2].strip() == '100.0'  # plan_parsed
    run = run_dir.load(SFT_THINK)
    tokenizer = tokenizer_lib.load_tokenizer(run.tokenizer_dir)[0]
    own = evaluate.evaluate(run.params, run.model, tokenizer, meta, think=True,
                            sampler=eval_sampler.sampler_config(run.eval, 1.0),
                            max_think_tokens=run.max_think_tokens,
                            prompt_len=run.max_prompt_tokens, batch_size=80)
    crossed = drawer_probe.cross(run, run, tokenizer, meta, cfg_scale=1.0)
    assert 0 < own.accuracy['overall'] < 1, own.accuracy  # not trivially all right or wrong
    assert crossed == pytest.approx({**own.accuracy, 'plan_parsed': 1.0})
