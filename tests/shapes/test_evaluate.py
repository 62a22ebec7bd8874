"""ShapesEval's sweep: several images per prompt, each from its own initial noise."""

import os

import pytest

from unigrpo_jax.loading import tokenizer as tokenizer_lib
from unigrpo_jax.shapes import prompt_source
from unigrpo_jax.shapes import evaluate
from unigrpo_jax.train import run_dir

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SFT_NOTHINK = os.path.join(REPO, 'checkpoints', 'shapes_sft_nothink')


def test_samples_per_prompt_score_every_draw(tmp_path):
    run = run_dir.load(SFT_NOTHINK)
    tokenizer = tokenizer_lib.load_tokenizer(run.tokenizer_dir)[0]
    meta = evaluate.subset(evaluate.load_prompts(prompt_source.EVAL_FILE), 2)  # 12 prompts
    rows = evaluate.sweep(run, tokenizer, meta, thinks=[False], cfg_scales=[1.0],
                          out_dir=str(tmp_path), batch_size=16, samples_per_prompt=3)
    drawn = evaluate.evaluate_run(run, tokenizer, meta * 3, think=False, cfg_scale=1.0,
                                  batch_size=16)
    assert rows['think=off cfg=1'] == {**drawn.accuracy, **drawn.stats}
    # The repeats are new draws: the same prompt's images differ between its samples.
    assert (drawn.images[0] != drawn.images[12]).any()
    assert '12 prompts x 3 samples' in (tmp_path / 'results.md').read_text()
    with pytest.raises(ValueError, match='samples_per_prompt'):
        evaluate.sweep(run, tokenizer, meta, thinks=[False], cfg_scales=[1.0], out_dir=None,
                       samples_per_prompt=0)
