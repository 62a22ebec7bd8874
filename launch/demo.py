r"""The ShapesEval demo: UniGRPO from the shipped SFT model, evaluated before and after.

    make demo                                  # = python launch/demo.py (after the install)
    python launch/demo.py --from-scratch       # redo the SFT first (two stages, ~25 min more)
    python launch/demo.py --config.total_steps=10 --out=/tmp/demo   # shorter

Run directories (each accepted by ``launch/sample.py`` and ``launch/evaluate.py``):
``<out>/sft_think`` (the SFT model with thinking: a copy of ``checkpoints/shapes_sft_think``, or
an SFT workdir with ``--from-scratch``) and ``<out>/unigrpo`` (the RL workdir of
``configs/shapes_unigrpo.py``, started from it). Writes ``<out>/report.md``: strict accuracy on
the 240 evaluation prompts before and after (without CFG, as the rollout samples, and with the
configured text CFG), the drawer probe (``unigrpo_jax.shapes.drawer_probe``: given plans drawn as
planned, before and after), the reward curve (``reward_curve.png``) and image grids with the
thinking text. Running it again resumes the RL run where it stopped and redoes the report.
"""

import json
import os
import shutil
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from unigrpo_jax import config_files, viz
from unigrpo_jax.loading import tokenizer as tokenizer_lib
from unigrpo_jax.data import prompts as data_lib
from unigrpo_jax.shapes import drawer_probe
from unigrpo_jax.shapes import evaluate as shapes_eval
from unigrpo_jax.sft import train as sft_train
from unigrpo_jax.train import loop, run_dir

_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(config_files.CONFIGS, 'shapes_unigrpo.py'), 'RL config.',
    lock_config=False)
_OUT = flags.DEFINE_string('out', os.path.join('runs', 'shapes_demo'), 'Output directory.')
_FROM_SCRATCH = flags.DEFINE_bool('from-scratch', False, 'Train the SFT model first, as the '
                                  'shipped one was (configs/shapes_sft.py:think,stage1 then '
                                  ':think,stage2), instead of copying it.')
_SFT_SCALE = flags.DEFINE_enum('sft_scale', '', ['', ',test'], 'With --from-scratch: \',test\' '
                               'trains the tiny SFT config of the tests instead.')
_PER_TAG = flags.DEFINE_integer('eval_per_tag', None, 'Evaluate only the first N prompts of '
                                'each tag (default: all 40).')
_SHIPPED = os.path.join(config_files.ROOT, 'checkpoints', 'shapes_sft_think')


# The distribution over seeds this demo's run is compared with (launch/shapes_results.py's
# gains.json of the documented runs), and its row.
DOCUMENTED = os.path.join(config_files.ROOT, 'docs', 'results', 'shapes_gains.json')
_ARM = 'UniGRPO (think)'
SMOOTHING = 10  # steps in the smoothed training-reward curve


def _reward_label(config) -> str:
    """The reward curve's axis: the strict GenEval reward (0/1) or FlowGRPO's partial credit."""
    strict = config.reward.options.get('strict', False)
    return 'strict reward (0/1 per image)' if strict else 'partial-credit reward'


def _say(message: str) -> None:
    print(f'[demo {time.strftime("%H:%M:%S")}] {message}', flush=True)


def _sft_run_dir(out: str) -> str:
    target = os.path.join(out, 'sft_think')
    if _FROM_SCRATCH.value and os.path.isdir(os.path.join(target, run_dir.SFT_FINAL)):
        _say(f'reusing the SFT model trained earlier in {target} (delete it to retrain)')
    elif _FROM_SCRATCH.value:  # the shipped model's two stages (configs/shapes_sft.py)
        init_from = ''
        for stage, workdir in (('stage1', target + '_stage1'), ('stage2', target)):
            config = config_files.load(os.path.join(config_files.CONFIGS, 'shapes_sft.py'),
                                       f'think,{stage}' + _SFT_SCALE.value)
            config.tokenizer = os.path.join(config_files.ROOT, config.tokenizer)
            config.eval_prompts = os.path.join(config_files.ROOT, config.eval_prompts)
            config.init_from = init_from
            _say(f'SFT with thinking from scratch, {stage} ({config.stop_after} of '
                 f'{config.steps} steps) -> {workdir}')
            sft_train.train(config, workdir, command=' '.join(['python', *sys.argv]), log=_say)
            init_from = os.path.join(workdir, run_dir.SFT_FINAL)
    elif not os.path.isdir(target):
        _say(f'copying the shipped SFT model {_SHIPPED} -> {target}')
        shutil.copytree(_SHIPPED, target)
    return target


def _load_documented() -> dict:
    """The documented distribution over seeds (``DOCUMENTED``), or {} where it is missing."""
    if not os.path.exists(DOCUMENTED):
        return {}
    with open(DOCUMENTED) as f:
        return json.load(f)


def _evaluate(run, out_dir: str, scales: list[float], samples: int) -> tuple[dict, dict]:
    """Strict accuracy per CFG scale (``samples`` images per prompt, as the documented runs
    were scored), and the drawer probe (one random plan per prompt)."""
    tokenizer = tokenizer_lib.load_tokenizer(run.tokenizer_dir)[0]
    metadata = shapes_eval.load_prompts(data_lib.SHAPES_EVAL_FILE)
    if _PER_TAG.value:
        metadata = shapes_eval.subset(metadata, _PER_TAG.value)
    accuracy = shapes_eval.sweep(run, tokenizer, metadata, thinks=[True], cfg_scales=scales,
                                 out_dir=out_dir, samples_per_prompt=samples, log=_say)
    drawer = drawer_probe.probe(run, tokenizer, metadata, samples=1, cfg_scale=1.0)
    _say(f'drawer probe: {100 * drawer["all"]["drawn_as_planned"]:.1f}% of given plans drawn '
         'as planned')
    return accuracy, drawer


def _reward_curves(workdir: str) -> dict[str, tuple[list, list]]:
    train, evals = ([], []), ([], [])
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        for record in map(json.loads, f):
            if 'reward/mean' in record:
                train[0].append(record['step'])
                train[1].append(record['reward/mean'])
            if 'eval/reward_mean' in record:
                evals[0].append(record['step'])
                evals[1].append(record['eval/reward_mean'])
    # A batch's mean reward moves with its 8 prompts' difficulty: the trend shows in a mean
    # over the last SMOOTHING steps.
    return {'training reward (rollout: SDE window, no CFG)': train,
            f'training reward, mean of the last {SMOOTHING} steps':
                (train[0], viz.moving_average(train[1], SMOOTHING)),
            'eval reward (240 held-out prompts, ODE + CFG)': evals}


def _documented(before: dict, after: dict, documented: dict) -> list[str]:
    """This run's change next to the documented distribution over seeds (``DOCUMENTED``,
    written by ``launch/shapes_results.py``), one line per setting."""
    arm = documented.get(_ARM, {})
    lines = []
    for k in before:
        change = 100 * (after[k]['overall'] - before[k]['overall'])
        setting = k.split()[-1]  # 'think=on cfg=2' -> 'cfg=2'
        if not documented:
            lines.append(f'{k}: this run {change:+.1f} points (no documented distribution: '
                         f'{DOCUMENTED} is missing)')
        elif setting not in arm:
            lines.append(f'{k}: this run {change:+.1f} points (no documented value)')
        else:
            g = arm[setting]['gain']
            lines.append(f'{k}: this run {change:+.1f} points; documented over seeds '
                         f'{documented["seeds"]} ({documented["steps"][_ARM]} steps): '
                         f'{g["mean"]:+.1f} ± {g["std"]:.1f} (per seed '
                         f'{" / ".join(f"{v:+.1f}" for v in g["values"])})')
    return lines


def _report(out: str, before: dict, after: dict, drawer: tuple[dict, dict], step: int,
            minutes: dict, documented: dict) -> str:
    rows = {f'SFT (think), {k}': v for k, v in before.items()}
    rows.update({f'UniGRPO step {step}, {k}': v for k, v in after.items()})
    lines = [
        '# ShapesEval demo: SFT (think) -> UniGRPO', '',
        'Strict accuracy (%) on the evaluation prompts of `data/shapes_eval/` (greedy '
        'thinking, Euler ODE). `cfg=1`: no guidance, as the RL rollout samples; `cfg=2`: the '
        'configured text CFG.', '',
        shapes_eval.markdown_table(rows), '## This run against the documented seeds', '',
        'RL trajectories differ across machines (float reductions, thread counts), so a fresh '
        'run lands somewhere in the distribution over seeds that docs/results.md reports, not '
        'on one documented number:', '',
        *[f'- {line}' for line in _documented(before, after, documented)],
        '', '## The drawer alone', '',
        'One random plan per prompt (free colours and cells uniform, as in the SFT data) given '
        'as the thinking, no CFG: % of images with exactly the planned objects / % strictly '
        'correct (`launch/probe_drawer.py`). Prompts with two objects need the drawer to put '
        'each shape and colour in its planned cell.', '',
        drawer_probe.markdown_table({'SFT': drawer[0], f'UniGRPO step {step}': drawer[1]}),
        '', '## Reward', '', '![reward curve](reward_curve.png)', '',
        '## Samples after RL (prompt | thinking; green = correct)', '',
        *[f'![{k}](eval_unigrpo/grid_{k.replace("=", "_").replace(" ", "_")}.png)'
          for k in ('think=on cfg=1', 'think=on cfg=2') if k in after],
        '', '## Runs', '',
        '- `sft_think/`: the SFT model with thinking (start of RL)',
        '- `unigrpo/`: the RL workdir (`rl_config.json`, checkpoints, `metrics.jsonl`, '
        'TensorBoard events, sample grids under `samples/`)',
        '- `eval_sft/`, `eval_unigrpo/`: evaluation tables and grids', '',
        'Wall time (min): ' + ', '.join(f'{k} {v:.1f}' for k, v in minutes.items()), '',
        'Sample a run: `python launch/sample.py --workdir=runs/shapes_demo/unigrpo '
        '--prompts=data/shapes_eval/eval_prompts.jsonl --out=/tmp/samples`', '']
    path = os.path.join(out, 'report.md')
    with open(path, 'w') as f:
        f.write('\n'.join(lines))
    return path


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments {argv[1:]}')
    out, config = _OUT.value, _CONFIG.value
    os.makedirs(out, exist_ok=True)
    minutes, start = {}, time.time()
    sft_dir = _sft_run_dir(out)
    before_run = run_dir.load(sft_dir)
    scales = shapes_eval.default_cfg_scales(config.eval)
    documented = _load_documented()
    samples = documented.get('eval_samples', 1)
    _say(f'evaluating the SFT model ({before_run.checkpoint}; {samples} image(s) per prompt)')
    before, drawer_before = _evaluate(before_run, os.path.join(out, 'eval_sft'), scales, samples)
    minutes['SFT + evaluation'] = (time.time() - start) / 60

    t = time.time()
    rl_dir = os.path.join(out, 'unigrpo')
    config.model.checkpoint = os.path.abspath(before_run.checkpoint)
    _say(f'UniGRPO: {config.total_steps} steps of {config.batch_size} prompts x '
         f'{config.rollout.group_size} samples -> {rl_dir} (one line per step below)')
    loop.train(config, rl_dir)
    minutes['UniGRPO'] = (time.time() - t) / 60

    t = time.time()
    after_run = run_dir.load(rl_dir)
    _say(f'evaluating the UniGRPO model (step {after_run.step})')
    after, drawer_after = _evaluate(after_run, os.path.join(out, 'eval_unigrpo'), scales,
                                    samples)
    minutes['evaluation after RL'] = (time.time() - t) / 60
    viz.plot_curves(os.path.join(out, 'reward_curve.png'), _reward_curves(rl_dir),
                    title='UniGRPO on ShapesEval', ylabel=_reward_label(config))
    minutes['total'] = (time.time() - start) / 60
    path = _report(out, before, after, (drawer_before, drawer_after), after_run.step, minutes,
                   documented)
    for k in before:
        _say(f'{k}: overall {100 * before[k]["overall"]:.1f}% -> {100 * after[k]["overall"]:.1f}%')
    for line in _documented(before, after, documented):
        _say(line)
    _say(f'report: {path} ({minutes["total"]:.1f} min)')


if __name__ == '__main__':
    app.run(main, flags_parser=config_files.parse_flags)
