r"""Peak host memory and time of converting a Bagel-7B-shaped checkpoint to Orbax, and of
loading the converted checkpoint sharded over devices split between processes.

    python launch/bench_convert.py --layers=4,8 [--dir=/tmp/bench] [--keep]
    python launch/bench_convert.py --tiny --layers=2
    python launch/bench_convert.py --layers=4 --load_processes=1,2 [--load_strategy=fsdp]

For each layer count: writes a synthetic release directory (7B widths, full ViT and VAE,
``--layers`` LLM layers, random bf16 weights; ``unigrpo_jax.loading.synthetic``), then runs
``launch/convert_bagel.py --dtype=keep`` on it in a child process and reports the child's peak
RSS (``ru_maxrss``; and the peaks of its anonymous / file-backed parts sampled from
``/proc/PID/status``) against the bytes of the converted params, and the wall time. One JSON line
per run on stdout. The synthetic and converted directories are deleted unless ``--keep``.

``--load_processes=1,2``: then, for each count P, P processes on localhost (a
``jax.distributed`` run, ``--load_devices`` CPU devices split evenly over them;
``unigrpo_jax.bench.host_memory``) load the converted checkpoint as ``train.loop`` does (``factory.build_model`` with the strategy's
param shardings over a ``(1, devices, 1)`` mesh): each process reads only the shards its
devices hold. One JSON line per P: each process's peak RSS against the converted bytes, and
the bytes of the distinct param shards its devices hold.
"""

import json
import os
import shutil
import sys
import tempfile
import time

import ml_dtypes
import numpy as np
import psutil
from absl import app, flags

from unigrpo_jax.bench import host_memory
from unigrpo_jax.errors import ConfigError
from unigrpo_jax.loading import synthetic

_LAYERS = flags.DEFINE_list('layers', ['8'], 'LLM layer counts to measure (7B: 28).')
_TINY = flags.DEFINE_bool('tiny', False, 'Tiny test shapes instead of the 7B widths.')
_DIR = flags.DEFINE_string('dir', None, 'Work directory (default: a new temporary one).')
_KEEP = flags.DEFINE_bool('keep', False, 'Keep the synthetic and converted directories.')
_DTYPE = flags.DEFINE_enum('dtype', 'bfloat16', ['bfloat16', 'float32'],
                           'Dtype of ema.safetensors (the release: bfloat16).')
_AE_DTYPE = flags.DEFINE_enum('ae_dtype', 'float32', ['bfloat16', 'float32'],
                              'Dtype of ae.safetensors (the release: float32).')
_FORCE = flags.DEFINE_bool('force', False, 'Run even if the host memory looks too small.')
_LOAD_PROCESSES = flags.DEFINE_list('load_processes', [], 'Process counts to measure the '
                                    'sharded load with (e.g. 1,2; empty: no load).')
_LOAD_DEVICES = flags.DEFINE_integer('load_devices', 8, 'CPU devices of the load, in all.')
_LOAD_STRATEGY = flags.DEFINE_enum('load_strategy', 'fsdp', ['fsdp', 'fsdp_tp', 'tp', 'dp'],
                                   'Sharding strategy of the loaded params.')

_CONVERT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'convert_bagel.py')
_DTYPES = {'bfloat16': ml_dtypes.bfloat16, 'float32': np.float32}


def _du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def _gib(n: int) -> float:
    return round(n / 2**30, 3)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments {argv[1:]}')
    work = _DIR.value or tempfile.mkdtemp(prefix='bench_convert_')
    os.makedirs(work, exist_ok=True)
    base = host_memory.measure([sys.executable, '-c', 'import jax; from unigrpo_jax.loading import '
                    'pipeline; jax.devices()'], os.path.join(work, 'baseline.log'))
    failed = 0
    for layers in (int(n) for n in _LAYERS.value):
        config = (synthetic.bagel_tiny if _TINY.value else synthetic.bagel_7b)(layers)
        src, dst = os.path.join(work, f'bagel_{layers}'), os.path.join(work, f'orbax_{layers}')
        start = time.perf_counter()
        sizes = synthetic.write_release(src, config, dtype=_DTYPES[_DTYPE.value],
                                        ae_dtype=_DTYPES[_AE_DTYPE.value])
        seconds_write = time.perf_counter() - start
        converted = sizes['model'] + sizes['ae']
        available = psutil.virtual_memory().available
        if 1.5 * converted + base['peak_rss'] > available and not _FORCE.value:
            raise app.UsageError(f'{layers} layers: {_gib(converted)} GiB of params, only '
                                 f'{_gib(available)} GiB available; use fewer --layers or --force')
        log = os.path.join(work, f'convert_{layers}.log')
        run = host_memory.measure([sys.executable, _CONVERT, f'--src={src}', f'--dst={dst}', '--dtype=keep'],
                      log)
        if run['returncode']:
            with open(log) as f:
                sys.stderr.write(f.read()[-5000:])
            failed += 1
        result = dict(
            shapes='tiny' if _TINY.value else '7b', layers=layers, returncode=run['returncode'],
            converted_gib=_gib(converted),
            checkpoint_gib=_gib(sizes['model'] + sizes['fixed_tables'] + sizes['ae']),
            orbax_gib=_gib(_du(dst)) if os.path.isdir(dst) else None,
            peak_rss_gib=_gib(run['peak_rss']), peak_anon_gib=_gib(run['peak_anon']),
            peak_file_gib=_gib(run['peak_file']), baseline_rss_gib=_gib(base['peak_rss']),
            ratio_peak_rss=round(run['peak_rss'] / converted, 3),
            ratio_peak_rss_minus_baseline=round((run['peak_rss'] - base['peak_rss'])
                                                / converted, 3),
            ratio_peak_anon=round(run['peak_anon'] / converted, 3),
            seconds_convert=round(run['seconds'], 1), seconds_write=round(seconds_write, 1))
        print(json.dumps(result), flush=True)
        for processes in (int(n) for n in _LOAD_PROCESSES.value):
            if run['returncode']:
                break
            try:
                loads = host_memory.measure_load(dst, processes, _LOAD_DEVICES.value,
                                                 _LOAD_STRATEGY.value, work)
            except ConfigError as e:
                raise app.UsageError(str(e)) from e
            failed += sum(bool(r['returncode']) for r in loads)
            print(json.dumps(dict(
                shapes=result['shapes'], layers=layers, load_processes=processes,
                load_devices=_LOAD_DEVICES.value, strategy=_LOAD_STRATEGY.value,
                converted_gib=_gib(converted),
                returncodes=[r['returncode'] for r in loads],
                peak_rss_gib=[_gib(r['peak_rss']) for r in loads],
                local_param_gib=[_gib(r.get('local_param_bytes', 0)) for r in loads],
                local_param_bytes=[r.get('local_param_bytes', 0) for r in loads],
                ratio_peak_rss_minus_baseline=[
                    round((r['peak_rss'] - base['peak_rss']) / converted, 3) for r in loads],
                seconds=[round(r['seconds'], 1) for r in loads])), flush=True)
        if not _KEEP.value:
            shutil.rmtree(src, ignore_errors=True)
            shutil.rmtree(dst, ignore_errors=True)
    if not _KEEP.value and not _DIR.value:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(app.run(main))
