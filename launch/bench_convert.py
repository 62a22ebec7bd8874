r"""Peak host memory and time of converting a Bagel-7B-shaped checkpoint to Orbax.

    python launch/bench_convert.py --layers=4,8 [--dir=/tmp/bench] [--keep]
    python launch/bench_convert.py --tiny --layers=2

For each layer count: writes a synthetic release directory (7B widths, full ViT and VAE,
``--layers`` LLM layers, random bf16 weights; ``unigrpo_jax.convert.synthetic``), then runs
``launch/convert_bagel.py --dtype=keep`` on it in a child process and reports the child's peak
RSS (``ru_maxrss``; and the peaks of its anonymous / file-backed parts sampled from
``/proc/PID/status``) against the bytes of the converted params, and the wall time. One JSON line
per run on stdout. The synthetic and converted directories are deleted unless ``--keep``.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import ml_dtypes
import numpy as np
import psutil
from absl import app, flags

from unigrpo_jax.convert import synthetic

_LAYERS = flags.DEFINE_list('layers', ['8'], 'LLM layer counts to measure (7B: 28).')
_TINY = flags.DEFINE_bool('tiny', False, 'Tiny test shapes instead of the 7B widths.')
_DIR = flags.DEFINE_string('dir', None, 'Work directory (default: a new temporary one).')
_KEEP = flags.DEFINE_bool('keep', False, 'Keep the synthetic and converted directories.')
_DTYPE = flags.DEFINE_enum('dtype', 'bfloat16', ['bfloat16', 'float32'],
                           'Dtype of ema.safetensors (the release: bfloat16).')
_AE_DTYPE = flags.DEFINE_enum('ae_dtype', 'float32', ['bfloat16', 'float32'],
                              'Dtype of ae.safetensors (the release: float32).')
_FORCE = flags.DEFINE_bool('force', False, 'Run even if the host memory looks too small.')

_CONVERT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'convert_bagel.py')
_DTYPES = {'bfloat16': ml_dtypes.bfloat16, 'float32': np.float32}


def _status_kib(pid: int) -> dict[str, int]:
    """RssAnon / RssFile / VmHWM of ``pid`` in KiB (empty once it has exited)."""
    out = {}
    try:
        with open(f'/proc/{pid}/status') as f:
            for line in f:
                name, _, value = line.partition(':')
                if name in ('RssAnon', 'RssFile', 'VmHWM'):
                    out[name] = int(value.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def measure(cmd: list[str], log_path: str, interval: float = 0.05) -> dict:
    """Runs ``cmd``; returns its exit code, wall time and peak memory (bytes)."""
    env = dict(os.environ)
    env.setdefault('JAX_PLATFORMS', 'cpu')
    with open(log_path, 'w') as log:
        start = time.perf_counter()
        child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        peaks = dict(RssAnon=0, RssFile=0, VmHWM=0)
        done = threading.Event()

        def sample():
            while not done.is_set():
                for k, v in _status_kib(child.pid).items():
                    peaks[k] = max(peaks[k], v)
                time.sleep(interval)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
        child.returncode = os.waitstatus_to_exitcode(status)
    return dict(returncode=child.returncode, seconds=seconds,
                peak_rss=usage.ru_maxrss * 1024, peak_anon=peaks['RssAnon'] * 1024,
                peak_file=peaks['RssFile'] * 1024)


def _du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def _gib(n: int) -> float:
    return round(n / 2**30, 3)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments {argv[1:]}')
    work = _DIR.value or tempfile.mkdtemp(prefix='bench_convert_')
    os.makedirs(work, exist_ok=True)
    base = measure([sys.executable, '-c', 'import jax; from unigrpo_jax.convert import '
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
        run = measure([sys.executable, _CONVERT, f'--src={src}', f'--dst={dst}', '--dtype=keep'],
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
        if not _KEEP.value:
            shutil.rmtree(src, ignore_errors=True)
            shutil.rmtree(dst, ignore_errors=True)
    if not _KEEP.value and not _DIR.value:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(app.run(main))
