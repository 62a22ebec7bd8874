"""The RL run's periodic evaluation (train.evaluation) on a random tiny Bagel."""

import jax
import numpy as np
from clu import metric_writers

from configs import bagel_grpo
from unigrpo_jax.loading import factory
from unigrpo_jax.loading import tokenizer as tokenizer_lib
from unigrpo_jax.parallel.mesh import make_mesh
from unigrpo_jax.train import evaluation
from unigrpo_jax.train.settings import settings


def test_every_chunk_draws_its_own_noise(tmp_path):
    cfg = bagel_grpo.get_config('tiny')
    cfg.batch_size = 2
    tokenizer, tokens, _ = tokenizer_lib.load_tokenizer(cfg.tokenizer)
    model, params, ae = factory.build_model(cfg.model, tokens=tokens)
    s = settings(cfg, 1)
    item = {'prompt': 'a red circle', 'tag': 'single_object', 'include': []}
    writer = metric_writers.create_default_writer(str(tmp_path), just_logging=True)
    # The image's mean as its "reward": equal prompts and thinking, so only the noise differs.
    evaluate = evaluation.make_evaluator(
        cfg, s, model, make_mesh((1, 1, 1), jax.devices()[:1]), tokenizer, tokens, None,
        [item] * 4, lambda images, meta: [float(np.mean(im)) for im in images], writer,
        str(tmp_path))
    scores = evaluate(params, ae, 0)
    # Rows i and i + batch_size (chunks 0 and 1) differ; one chunk's two rows differ too.
    assert scores.shape == (4,) and len(set(scores.tolist())) == 4, scores
