"""The sweep's rows as outputs: CSV, a markdown table and a matplotlib figure."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence

import numpy as np

from unigrpo_jax.bench.hlo import KINDS

COLUMNS = (
    'size', 'llm_params', 'strategy', 'mesh', 'devices', 'program', 'status', 'compile_s',
    'step_s', 'throughput', 'throughput_unit', 'model_flops', 'mfu', 'mem_peak',
    'mem_argument', 'mem_output', 'mem_alias', 'mem_temp', 'coll_bytes',
    *(f'coll_{k.replace("-", "_")}' for k in KINDS), 'coll_ops', 'error')



def write_csv(rows: Sequence[dict], path: str, columns: Sequence[str] = COLUMNS) -> None:
    """``rows`` (dicts with keys of ``columns``; None written empty) as CSV at ``path``."""
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: '' if v is None else v for k, v in row.items()})


def _num(v, scale: float = 1.0, fmt: str = '.3g', missing: str = '') -> str:
    return missing if v is None or v == '' else format(float(v) / scale, fmt)


def markdown(rows: Sequence[dict]) -> str:
    """The rows as a markdown table (GiB = 2^30 bytes, MB = 10^6 bytes)."""
    head = ('| size | strategy | mesh | program | status | compile s | step ms | throughput | '
            'model GFLOP | MFU | peak GiB/device | argument GiB | temp GiB | collective MB '
            '| collective ops | error |')
    lines = [head, '|' + '---|' * head.count(' |')]
    for r in rows:
        step = (_num(r['step_s'], 1e-3) if r['step_s'] is not None
                else r['status'] if r['status'] == 'compile-only' else '')
        throughput = (f'{_num(r["throughput"])} {r["throughput_unit"]}'
                      if r['throughput'] is not None else '')
        mfu = _num(r['mfu'], fmt='.1%', missing='n/a' if r['step_s'] is not None else '')
        lines.append('| ' + ' | '.join([
            r['size'], r['strategy'], r['mesh'], r['program'], r['status'],
            _num(r['compile_s'], fmt='.1f'), step, throughput, _num(r['model_flops'], 1e9),
            mfu, _num(r['mem_peak'], 2**30), _num(r['mem_argument'], 2**30),
            _num(r['mem_temp'], 2**30), _num(r['coll_bytes'], 1e6),
            '' if r['coll_ops'] is None else str(r['coll_ops']),
            (r['error'] or '').replace('|', '/')]) + ' |')
    return '\n'.join(lines) + '\n'


def plot(rows: Sequence[dict], path: str) -> None:
    """Peak memory per device and step time, one row of panels per size x program, a group of
    bars per strategy (one bar per mesh); missing bars: not executed or not compiled."""
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use('Agg')
    from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

    panels = list(dict.fromkeys((r['size'], r['program']) for r in rows))
    strategies = list(dict.fromkeys(r['strategy'] for r in rows))
    meshes = list(dict.fromkeys(r['mesh'] for r in rows))
    fig, axes = plt.subplots(len(panels), 2, figsize=(12, 2.8 * len(panels)), squeeze=False)
    width = 0.8 / len(meshes)
    for (size, program), (ax_mem, ax_time) in zip(panels, axes):
        for i, mesh in enumerate(meshes):
            by_strategy = {r['strategy']: r for r in rows
                           if (r['size'], r['program'], r['mesh']) == (size, program, mesh)}
            x = np.arange(len(strategies)) + (i - (len(meshes) - 1) / 2) * width
            for ax, column, scale in ((ax_mem, 'mem_peak', 2**30), (ax_time, 'step_s', 1e-3)):
                values = [by_strategy.get(s, {}).get(column) for s in strategies]
                ax.bar(x, [np.nan if v is None else v / scale for v in values], width,
                       label=mesh)
        for ax, label in ((ax_mem, 'peak GiB / device'), (ax_time, 'step ms')):
            ax.set_xticks(np.arange(len(strategies)), strategies)
            ax.set_xlim(-0.5, len(strategies) - 0.5)
            ax.set_ylabel(label)
            ax.set_title(f'{size} {program}')
            if any(np.isfinite(p.get_height()) and p.get_height() > 0 for p in ax.patches):
                ax.set_yscale('log')
            else:
                ax.set_yticks([])
                ax.text(0.5, 0.5, 'not executed', ha='center', va='center',
                        transform=ax.transAxes)
        ax_mem.legend(title='mesh', fontsize='small')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(rows: Sequence[dict], directory: str) -> list[str]:
    """``bench.csv``, ``bench.md`` and ``bench.png`` in ``directory``; returns their paths."""
    os.makedirs(directory, exist_ok=True)
    paths = [os.path.join(directory, f'bench.{ext}') for ext in ('csv', 'md', 'png')]
    write_csv(rows, paths[0])
    with open(paths[1], 'w') as f:
        f.write(markdown(rows))
    plot(rows, paths[2])
    return paths
