"""A short SFT run lowers its loss; the launchers train, checkpoint and evaluate at tiny scale."""

import json
import os

import jax
import numpy as np
import pytest
import flax.linen as nn

from configs import shapes_sft
from unigrpo_jax.loading import orbax_io
from unigrpo_jax.model import bagel
from unigrpo_jax.parallel import sharding
from unigrpo_jax.parallel.mesh import make_mesh
from unigrpo_jax.shapes.sft import objective, samples, train
from unigrpo_jax.train import optimizer as opt_lib
from unigrpo_jax.train import step as step_lib


def test_short_sft_lowers_loss():
    cfg = shapes_sft.get_config('think,test')
    model = train.model_config(cfg)
    tokenizer = train.load_tokenizer(cfg, model)
    lay = samples.layout(model, cfg.data, think=True)
    optimizer = opt_lib.make_optimizer(cfg.optimizer, cfg.steps)
    rng = np.random.default_rng(0)
    example = samples.sample_batch(rng, tokenizer, model, lay, cfg.data.batch_size, 0.1)
    # The shared train step, its batch split over 2 devices.
    place = step_lib.placement(model, optimizer, make_mesh((2, 1, 1), jax.devices()[:2]),
                               sharding.strategy_rules('dp'), example.arrays(), frozen=False)
    state = step_lib.init_state(nn.unbox(bagel.init_params(model, jax.random.key(0))),
                                optimizer, place)
    train_step = step_lib.make_train_step(objective.sft_loss(model, lay, cfg.loss, 0),
                                          optimizer, place)
    losses = []
    for _ in range(cfg.steps):
        batch = samples.sample_batch(rng, tokenizer, model, lay, cfg.data.batch_size, 0.1)
        state, metrics = train_step(state, None, batch.arrays())
        losses.append({k: float(v) for k, v in metrics.items()})
    first, last = losses[:5], losses[-5:]
    mean = lambda rows, k: np.mean([r[k] for r in rows])  # noqa: E731
    assert mean(last, 'loss') < mean(first, 'loss') - 0.3
    assert mean(last, 'ce') < mean(first, 'ce') and mean(last, 'mse') < mean(first, 'mse')
    assert int(state.step) == cfg.steps and sum(r['skipped'] for r in losses) == 0
    assert not state.params['llm2vae']['kernel'].sharding.device_set - set(jax.devices()[:2])


def test_launchers_train_checkpoint_evaluate(tmp_path, launch):
    workdir, export = str(tmp_path / 'run'), str(tmp_path / 'export')
    stdout = launch(['launch/train_sft.py', '--config=configs/shapes_sft.py:nothink,test',
                   f'--workdir={workdir}', f'--export_dir={export}', '--config.steps=4',
                   '--config.log_every=2', '--config.checkpoint_every=2',
                   '--config.eval.final_per_tag=1', '--config.data.num_examples=16',
                   '--config.eval.cfg_text_scale=1'])
    assert 'steps/s' in stdout and 'ETA' in stdout
    config, params, ae = orbax_io.load_params(export)
    assert config.ae.kind == 'identity' and ae == {}
    expected = nn.unbox(bagel.abstract_params(config))
    assert jax.tree.map(np.shape, params) == jax.tree.map(lambda x: x.shape, expected)
    assert os.path.isdir(os.path.join(workdir, 'step_2', 'checkpoint'))
    manifest = json.load(open(os.path.join(export, 'MANIFEST.json')))
    assert manifest['steps'] == 4 and not manifest['think']
    assert 'think=off cfg=1' in manifest['accuracy']
    stdout = launch(['launch/evaluate.py', f'--workdir={export}', '--think=on', '--cfg=2',
                   '--per_tag=1', f'--out={tmp_path / "sweep"}'])
    assert '| think=on cfg=2 |' in stdout
    assert os.path.exists(tmp_path / 'sweep' / 'grid_think_on_cfg_2.png')


def test_stop_after_ends_early_on_the_long_schedule(tmp_path, launch):
    workdir, export = str(tmp_path / 'run'), str(tmp_path / 'export')
    stdout = launch(['launch/train_sft.py', '--config=configs/shapes_sft.py:nothink,test',
                     f'--workdir={workdir}', f'--export_dir={export}', '--config.steps=8',
                     '--config.stop_after=3', '--config.log_every=1', '--config.checkpoint_every=0',
                     '--config.eval.final_per_tag=1', '--config.eval.cfg_text_scale=1'])
    assert '8 steps (stopping after 3)' in stdout and 'step 3/3' in stdout
    assert 'step 4/' not in stdout
    manifest = json.load(open(os.path.join(export, 'MANIFEST.json')))
    assert (manifest['steps'], manifest['schedule_steps']) == (3, 8)


def test_stop_after_outside_the_schedule_is_an_error():
    cfg = shapes_sft.get_config('think,test')
    cfg.stop_after = cfg.steps + 1
    with pytest.raises(ValueError, match='stop_after'):
        train.end_step(cfg)
