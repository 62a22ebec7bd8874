"""The SFT loop (``launch/train_sft.py``) and the evaluation sweep (``launch/evaluate.py``).

Workdir layout::

    sft_config.json          the training config (``evaluate`` reads think / eval settings)
    metrics.jsonl            one line per log step, and one per quick evaluation
    step_{k}/                params-only checkpoints (``train.checkpointing.save_params_dir``, with tokenizer/)
    final/                   the last params
    eval/results.md, eval/*.png, eval/results.json   the final evaluation sweep

With ``export_dir`` the final checkpoint, the evaluation and a ``MANIFEST.json`` (command, git
commit, steps, wall time, accuracy) are copied there (``checkpoints/shapes_sft_{arm}/``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from unigrpo_jax.loading import orbax_io
from unigrpo_jax.model import bagel
from unigrpo_jax.model.config import BagelConfig, config_from_dict
from unigrpo_jax.parallel import mesh as mesh_lib
from unigrpo_jax.parallel import sharding
from unigrpo_jax.shapes import evaluate as shapes_eval
from unigrpo_jax.shapes import tokenizer as shapes_tokenizer
from unigrpo_jax.shapes.sft import dataset, objective, samples
from unigrpo_jax.train import checkpointing, run_dir, settings
from unigrpo_jax.train import optimizer as opt_lib
from unigrpo_jax.train import step as step_lib

FINAL = run_dir.SFT_FINAL
CONFIG_FILE = run_dir.SFT_CONFIG


def model_config(config: ml_collections.ConfigDict) -> BagelConfig:
    random = config.model.random
    random = random.to_dict() if hasattr(random, 'to_dict') else dict(random)
    return config_from_dict(random, dtype=config.model.dtype)


def load_tokenizer(config: ml_collections.ConfigDict, model: BagelConfig):
    tokenizer, tokens = shapes_tokenizer.load(config.tokenizer)
    if tokens != model.tokens or len(tokenizer) != model.llm.vocab_size:
        raise ValueError(f'tokenizer {config.tokenizer} has {len(tokenizer)} tokens and {tokens}; '
                         f'the model config has vocab_size={model.llm.vocab_size} and '
                         f'{model.tokens}')
    return tokenizer


def _log(workdir: str, record: dict) -> None:
    with open(os.path.join(workdir, 'metrics.jsonl'), 'a') as f:
        f.write(json.dumps(record) + '\n')


def _git(*args: str) -> str:
    try:
        return subprocess.run(['git', *args], capture_output=True, text=True, check=True,
                              cwd=os.path.dirname(__file__)).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return 'unknown'


def git_commit() -> str:
    """``git rev-parse HEAD``, with ``+dirty`` when the SFT code has uncommitted changes."""
    head = _git('rev-parse', 'HEAD')
    dirty = _git('status', '--porcelain', '--', 'unigrpo_jax', 'configs', 'launch')
    return head + ('+dirty' if dirty and dirty != 'unknown' else '')


def end_step(config: ml_collections.ConfigDict) -> int:
    """The step SFT ends at: ``config.stop_after`` if set (the learning-rate schedule still spans
    ``config.steps``, so this is an intermediate model of that run), else ``config.steps``."""
    stop_after = int(config.stop_after)
    if not 0 <= stop_after <= config.steps:
        raise ValueError(f'stop_after={stop_after} must lie in [0, steps={config.steps}] '
                         '(0: train all the steps)')
    return stop_after or int(config.steps)


def train(config: ml_collections.ConfigDict, workdir: str, *, export_dir: str | None = None,
          command: str = '', log=print) -> dict:
    """Runs SFT, checkpoints, evaluates at the end; returns the final evaluation rows."""
    run_dir.make_writable(workdir)
    commit = git_commit()  # the code that trains (not the one at export time)
    with open(os.path.join(workdir, CONFIG_FILE), 'w') as f:
        f.write(config.to_json(indent=1))
    model = model_config(config)
    tokenizer = load_tokenizer(config, model)
    lay = samples.layout(model, config.data, config.think)
    settings.check_optimizer(config.optimizer)
    p = config.parallelism
    devices = jax.devices()[:p.num_devices] if p.num_devices > 0 else jax.devices()
    mesh = mesh_lib.make_mesh(settings.check_parallelism(p, len(devices)), devices)
    if config.init_from:
        loaded, params, _ = orbax_io.load_params(config.init_from)
        if loaded.llm != model.llm or loaded.tokens != model.tokens:
            raise ValueError(f'init_from={config.init_from} has llm {loaded.llm} / '
                             f'{loaded.tokens}, the config asks for {model.llm} / {model.tokens}')
        log(f'initialised from {config.init_from}')
    else:
        params = nn.unbox(bagel.init_params(model, jax.random.key(config.seed)))
    n_params = sum(x.size for x in jax.tree.leaves(params))
    last = end_step(config)
    optimizer = opt_lib.make_optimizer(config.optimizer, config.steps)
    example = samples.sample_batch(np.random.default_rng(0), tokenizer, model, lay,
                                   config.data.batch_size, 0.0).arrays()
    rules = sharding.strategy_rules(p.strategy, p.rules.to_dict())
    place = step_lib.placement(model, optimizer, mesh, rules, example, frozen=False)
    state = step_lib.init_state(params, optimizer, place)
    train_step = step_lib.make_train_step(
        objective.sft_loss(model, lay, config.loss, config.seed), optimizer, place)
    rng = np.random.default_rng(config.seed)
    examples = None
    if config.data.num_examples:  # a fixed TFDS dataset instead of fresh samples every step
        examples = dataset.load(config.data.num_examples, config.seed,
                                    config.data.data_dir or os.path.join(workdir, 'tfds'))
        log(f'SFT data: {config.data.num_examples} fixed samples (tensorflow-datasets)')
    stop = f' (stopping after {last})' if last < config.steps else ''
    log(f'SFT think={config.think}: {n_params / 1e6:.2f}M params, layout {lay}, '
        f'batch {config.data.batch_size}, {config.steps} steps{stop} -> {workdir}')

    def save(name: str):  # the evaluated params (the moving average when the optimizer keeps one)
        checkpointing.save_params_dir(
            os.path.join(workdir, name), model,
            jax.device_get(opt_lib.evaluated_params(state.params, state.opt_state)),
            config.tokenizer)

    eval_prompts = shapes_eval.load_prompts(config.eval_prompts)

    def evaluate(per_tag: int | None, cfg_scales: list[float], out_dir: str | None):
        metadata = shapes_eval.subset(eval_prompts, per_tag) if per_tag else eval_prompts
        run = run_dir.sft_run(workdir, config, model,
                              opt_lib.evaluated_params(state.params, state.opt_state))
        return shapes_eval.sweep(run, tokenizer, metadata, thinks=[config.think],
                                 cfg_scales=cfg_scales, out_dir=out_dir,
                                 batch_size=config.eval.batch_size, seed=config.eval.seed,
                                 log=log)

    def quick_eval(step: int):
        rows = evaluate(config.eval.quick_per_tag, [float(config.eval.cfg_text_scale)], None)
        for name, row in rows.items():
            _log(workdir, dict(step=step, eval=name, per_tag=config.eval.quick_per_tag, **row))

    start = time.time()
    window_start, window_steps = time.time(), 0
    sums: dict[str, float] = {}
    for k in range(1, last + 1):
        if examples is None:
            batch = samples.sample_batch(rng, tokenizer, model, lay, config.data.batch_size,
                                         config.data.text_dropout)
        else:
            batch = samples.make_batch(rng, tokenizer, model, lay,
                                       *examples.batch(config.seed, k - 1, config.data.batch_size),
                                       config.data.text_dropout)
        state, metrics = train_step(state, None, batch.arrays())
        window_steps += 1
        for name, value in metrics.items():  # device scalars; summed lazily
            sums[name] = sums.get(name, 0.0) + value
        if k % config.log_every == 0 or k == last:
            means = {name: float(v) / window_steps for name, v in sums.items()}
            if not np.isfinite(means['loss']):
                raise FloatingPointError(f'non-finite loss at step {k}: {means}')
            now = time.time()
            rate = window_steps / (now - window_start)
            eta = (last - k) / rate
            log(f'step {k}/{last} ' + ' '.join(f'{n}={v:.4f}' for n, v in means.items())
                + f' | {rate:.2f} steps/s, {now - start:.0f}s elapsed, ETA {eta / 60:.1f} min')
            _log(workdir, dict(step=k, time=now - start, steps_per_s=rate, **means))
            window_start, window_steps, sums = now, 0, {}
        if config.checkpoint_every and k % config.checkpoint_every == 0 and k < last:
            save(f'step_{k}')
        if config.eval_every and k % config.eval_every == 0 and k < last:
            quick_eval(k)
    train_time = time.time() - start
    save(FINAL)
    log(f'trained {last} steps in {train_time / 60:.1f} min; final evaluation')
    rows = evaluate(config.eval.final_per_tag or None, shapes_eval.default_cfg_scales(config.eval),
                    os.path.join(workdir, 'eval'))
    for name, row in rows.items():
        _log(workdir, dict(step=last, eval=name, per_tag=None, **row))
    if export_dir:
        export(workdir, export_dir, config, command=command, train_time=train_time, rows=rows,
               commit=commit)
        log(f'exported to {export_dir}')
    return rows


def export(workdir: str, export_dir: str, config, *, command: str, train_time: float,
           rows: dict, commit: str) -> None:
    """Copies ``workdir/final`` and ``workdir/eval`` to ``export_dir`` with a MANIFEST.json."""
    shutil.rmtree(export_dir, ignore_errors=True)
    shutil.copytree(os.path.join(workdir, FINAL), export_dir)
    shutil.copytree(os.path.join(workdir, 'eval'), os.path.join(export_dir, 'eval'))
    shutil.copy(os.path.join(workdir, CONFIG_FILE), export_dir)
    curve = []
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        curve = [r for r in map(json.loads, f) if 'eval' in r]
    manifest = dict(command=command, git_commit=commit, think=bool(config.think),
                    steps=end_step(config), schedule_steps=int(config.steps),
                    batch_size=int(config.data.batch_size),
                    train_wall_time_s=round(train_time, 1), accuracy=rows,
                    learning_curve=curve, workdir=os.path.abspath(workdir))
    with open(os.path.join(export_dir, 'MANIFEST.json'), 'w') as f:
        json.dump(manifest, f, indent=1)
