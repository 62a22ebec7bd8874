"""The ShapesEval demo (``launch/demo.py``, ``make demo``): UniGRPO from the shipped SFT
model, evaluated before and after, with a report a new user reads.

``run(config, out)`` writes ``<out>/sft_think`` (the SFT model with thinking: a copy of
``checkpoints/shapes_sft_think``, or an SFT workdir with ``from_scratch``), ``<out>/unigrpo``
(the RL workdir of ``config``, started from it; each accepted by ``launch/sample.py`` and
``launch/evaluate.py``) and ``<out>/report.md``: strict accuracy on the evaluation prompts
before and after (without CFG, as the rollout samples, and with the configured text CFG) beside
the documented distribution over seeds, the drawer probe (``shapes.drawer_probe``), the reward
curve (``reward_curve.png``) and image grids with the thinking text. Run again, it resumes the
RL run where it stopped and redoes the report.
"""

import json
import os
import shutil
import time
from typing import Callable

from unigrpo_jax import config_files, viz
from unigrpo_jax.errors import ConfigError
from unigrpo_jax.experiments import table
from unigrpo_jax.loading import tokenizer as tokenizer_lib
from unigrpo_jax.rl import objective
from unigrpo_jax.shapes import drawer_probe
from unigrpo_jax.shapes import evaluate as shapes_eval
from unigrpo_jax.shapes import prompt_source
from unigrpo_jax.shapes.sft import train as sft_train
from unigrpo_jax.train import loop, run_dir

SHIPPED = os.path.join(config_files.ROOT, 'checkpoints', 'shapes_sft_think')
# The distribution over seeds this demo's run is compared with (launch/shapes_results.py's
# gains.json of the documented runs; a row per arm).
DOCUMENTED = os.path.join(config_files.ROOT, 'docs', 'results', 'shapes_gains.json')
SMOOTHING = 10  # steps in the smoothed training-reward curve


def documented_arm(config) -> str:
    """The documented row (``table.ARMS``) of the arm ``config`` trains: the first whose config
    file has the same objective mode and image term (``'UniGRPO (think)'`` for
    ``configs/shapes_unigrpo.py``, ``'UniGRPO-NFT (think)'`` for ``shapes_uninft.py``)."""
    key = (config.objective.mode, config.objective.image_term)
    for name, config_name in table.ARMS.items():
        arm = config_files.load(os.path.join(config_files.CONFIGS, config_name + '.py'))
        if (arm.objective.mode, arm.objective.image_term) == key:
            return name
    raise ConfigError(f'objective.mode={key[0]!r} with objective.image_term={key[1]!r} is no '
                      f'ShapesEval arm ({", ".join(table.ARMS)})')


def policy_name(arm: str) -> str:
    """The trained policy's name in the report and the log: ``'UniGRPO (think)'`` ->
    ``'UniGRPO'``."""
    return arm.split(' (')[0]


def reward_label(config) -> str:
    """The reward curve's axis: the strict GenEval reward (0/1) or FlowGRPO's partial credit."""
    strict = config.reward.options.get('strict', False)
    return 'strict reward (0/1 per image)' if strict else 'partial-credit reward'


def sft_run_dir(out: str, from_scratch: bool, sft_scale: str = '', command: str = '',
                say: Callable[[str], None] = print) -> str:
    """``<out>/sft_think``: a copy of the shipped SFT model, or (``from_scratch``) the shipped
    model's two SFT stages (``configs/shapes_sft.py:think,stage1`` then ``:think,stage2``,
    ``sft_scale=',test'``: the tests' tiny SFT config) trained there; kept when already there."""
    target = os.path.join(out, 'sft_think')
    if from_scratch and os.path.isdir(os.path.join(target, run_dir.SFT_FINAL)):
        say(f'reusing the SFT model trained earlier in {target} (delete it to retrain)')
    elif from_scratch:
        init_from = ''
        for stage, workdir in (('stage1', target + '_stage1'), ('stage2', target)):
            config = config_files.load(os.path.join(config_files.CONFIGS, 'shapes_sft.py'),
                                       f'think,{stage}' + sft_scale)
            config.tokenizer = os.path.join(config_files.ROOT, config.tokenizer)
            config.eval_prompts = os.path.join(config_files.ROOT, config.eval_prompts)
            config.init_from = init_from
            say(f'SFT with thinking from scratch, {stage} ({config.stop_after} of '
                f'{config.steps} steps) -> {workdir}')
            sft_train.train(config, workdir, command=command, log=say)
            init_from = os.path.join(workdir, run_dir.SFT_FINAL)
    elif not os.path.isdir(target):
        say(f'copying the shipped SFT model {SHIPPED} -> {target}')
        shutil.copytree(SHIPPED, target)
    return target


def load_documented(path: str = DOCUMENTED) -> dict:
    """The documented distribution over seeds, or {} where the file is missing."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def evaluate(run, out_dir: str, scales: list[float], samples: int, per_tag: int | None = None,
             say: Callable[[str], None] = print) -> tuple[dict, dict]:
    """Strict accuracy per CFG scale (``samples`` images per prompt, as the documented runs
    were scored; ``per_tag``: only the first prompts of each tag), and the drawer probe (one
    random plan per prompt)."""
    tokenizer = tokenizer_lib.load_tokenizer(run.tokenizer_dir)[0]
    metadata = shapes_eval.load_prompts(prompt_source.EVAL_FILE)
    if per_tag:
        metadata = shapes_eval.subset(metadata, per_tag)
    accuracy = shapes_eval.sweep(run, tokenizer, metadata, thinks=[True], cfg_scales=scales,
                                 out_dir=out_dir, samples_per_prompt=samples, log=say)
    drawer = drawer_probe.probe(run, tokenizer, metadata, samples=1, cfg_scale=1.0)
    say(f'drawer probe: {100 * drawer["all"]["drawn_as_planned"]:.1f}% of given plans drawn '
        'as planned')
    return accuracy, drawer


def reward_curves(workdir: str, config) -> dict[str, tuple[list, list]]:
    """The training reward per step (raw and smoothed) and the eval reward of an RL workdir's
    ``metrics.jsonl`` (``config``: its RL config, for how the rollout draws):
    ``{label: (steps, values)}``."""
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
    sampler = ('SDE window' if objective.has_window(config.objective.mode,
                                                    config.objective.image_term) else 'ODE')
    return {f'training reward (rollout: {sampler}, no CFG)': train,
            f'training reward, mean of the last {SMOOTHING} steps':
                (train[0], viz.moving_average(train[1], SMOOTHING)),
            'eval reward (240 held-out prompts, ODE + CFG)': evals}


def documented_lines(before: dict, after: dict, documented: dict, arm: str) -> list[str]:
    """This run's change next to the documented distribution over seeds of ``arm``'s runs
    (``DOCUMENTED``, written by ``launch/shapes_results.py``), one line per setting."""
    rows = documented.get(arm, {})
    lines = []
    for k in before:
        change = 100 * (after[k]['overall'] - before[k]['overall'])
        setting = k.split()[-1]  # 'think=on cfg=2' -> 'cfg=2'
        if not documented:
            lines.append(f'{k}: this run {change:+.1f} points (no documented distribution: '
                         f'{DOCUMENTED} is missing)')
        elif setting not in rows:
            lines.append(f'{k}: this run {change:+.1f} points (no documented value for {arm})')
        else:
            g = rows[setting]['gain']
            lines.append(f'{k}: this run {change:+.1f} points; {arm} documented over seeds '
                         f'{documented["seeds"]} ({documented["steps"][arm]} steps): '
                         f'{g["mean"]:+.1f} ± {g["std"]:.1f} (per seed '
                         f'{" / ".join(f"{v:+.1f}" for v in g["values"])})')
    return lines


def write_report(out: str, before: dict, after: dict, drawer: tuple[dict, dict], step: int,
                 minutes: dict, documented: dict, arm: str) -> str:
    """``<out>/report.md`` (see the module docstring) of a run of ``arm`` (a documented row);
    returns its path."""
    policy = policy_name(arm)
    rows = {f'SFT (think), {k}': v for k, v in before.items()}
    rows.update({f'{policy} step {step}, {k}': v for k, v in after.items()})
    lines = [
        f'# ShapesEval demo: SFT (think) -> {policy}', '',
        'Strict accuracy (%) on the evaluation prompts of `data/shapes_eval/` (greedy '
        'thinking, Euler ODE). `cfg=1`: no guidance, as the RL rollout samples; `cfg=2`: the '
        'configured text CFG.', '',
        shapes_eval.markdown_table(rows), '## This run against the documented seeds', '',
        'RL trajectories differ across machines (float reductions, thread counts), so a fresh '
        'run lands somewhere in the distribution over seeds that docs/results.md reports, not '
        'on one documented number:', '',
        *[f'- {line}' for line in documented_lines(before, after, documented, arm)],
        '', '## The drawer alone', '',
        'One random plan per prompt (free colours and cells uniform, as in the SFT data) given '
        'as the thinking, no CFG: % of images with exactly the planned objects / % strictly '
        'correct (`launch/probe_drawer.py`). Prompts with two objects need the drawer to put '
        'each shape and colour in its planned cell.', '',
        drawer_probe.markdown_table({'SFT': drawer[0], f'{policy} step {step}': drawer[1]}),
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


def run(config, out: str, *, from_scratch: bool = False, sft_scale: str = '',
        per_tag: int | None = None, command: str = '',
        say: Callable[[str], None] = print) -> str:
    """The demo (see the module docstring) with the RL ``config``; returns the report's path."""
    os.makedirs(out, exist_ok=True)
    minutes, start = {}, time.time()
    sft_dir = sft_run_dir(out, from_scratch, sft_scale, command, say)
    before_run = run_dir.load(sft_dir)
    scales = shapes_eval.default_cfg_scales(config.eval)
    documented, arm = load_documented(), documented_arm(config)
    policy = policy_name(arm)
    samples = documented.get('eval_samples', 1)
    say(f'evaluating the SFT model ({before_run.checkpoint}; {samples} image(s) per prompt)')
    before, drawer_before = evaluate(before_run, os.path.join(out, 'eval_sft'), scales, samples,
                                     per_tag, say)
    minutes['SFT + evaluation'] = (time.time() - start) / 60

    t = time.time()
    rl_dir = os.path.join(out, 'unigrpo')
    config.model.checkpoint = os.path.abspath(before_run.checkpoint)
    say(f'{policy}: {config.total_steps} steps of {config.batch_size} prompts x '
        f'{config.rollout.group_size} samples -> {rl_dir} (one line per step below)')
    loop.train(config, rl_dir)
    minutes[policy] = (time.time() - t) / 60

    t = time.time()
    after_run = run_dir.load(rl_dir)
    say(f'evaluating the {policy} model (step {after_run.step})')
    after, drawer_after = evaluate(after_run, os.path.join(out, 'eval_unigrpo'), scales,
                                   samples, per_tag, say)
    minutes['evaluation after RL'] = (time.time() - t) / 60
    viz.plot_curves(os.path.join(out, 'reward_curve.png'), reward_curves(rl_dir, config),
                    title=f'{policy} on ShapesEval', ylabel=reward_label(config))
    minutes['total'] = (time.time() - start) / 60
    path = write_report(out, before, after, (drawer_before, drawer_after), after_run.step,
                        minutes, documented, arm)
    for k in before:
        say(f'{k}: overall {100 * before[k]["overall"]:.1f}% -> '
            f'{100 * after[k]["overall"]:.1f}%')
    for line in documented_lines(before, after, documented, arm):
        say(line)
    say(f'report: {path} ({minutes["total"]:.1f} min)')
    return path
