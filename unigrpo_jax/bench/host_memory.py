"""Peak host memory of programs run as child processes, and the child that loads a converted
checkpoint sharded over the devices of several processes (``launch/bench_convert.py``).

    python -m unigrpo_jax.bench.host_memory PORT PROCESS_ID PROCESSES DEVICES CHECKPOINT STRATEGY

runs one process of such a load (``load_sharded``) and prints ``{"local_param_bytes": N}``.
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time

from unigrpo_jax.errors import ConfigError


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


def measure_all(cmds: list[list[str]], log_paths: list[str], interval: float = 0.05
                ) -> list[dict]:
    """Runs ``cmds`` at once (on CPU, each setting its own device count); returns each one's
    exit code, wall time and peak memory in bytes: ``peak_rss`` (``ru_maxrss``), and the
    peaks of its anonymous / file-backed parts sampled every ``interval`` s from
    ``/proc/PID/status`` (``peak_anon``, ``peak_file``)."""
    env = dict(os.environ)
    env.setdefault('JAX_PLATFORMS', 'cpu')
    env.pop('XLA_FLAGS', None)  # the children set their own device counts
    logs = [open(path, 'w') for path in log_paths]
    start = time.perf_counter()
    children = [subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
                for cmd, log in zip(cmds, logs)]
    peaks = [dict(RssAnon=0, RssFile=0, VmHWM=0) for _ in children]
    done = threading.Event()

    def sample():
        while not done.is_set():
            for child, peak in zip(children, peaks):
                for k, v in _status_kib(child.pid).items():
                    peak[k] = max(peak[k], v)
            time.sleep(interval)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out = []
    for child, peak in zip(children, peaks):
        _, status, usage = os.wait4(child.pid, 0)
        out.append(dict(returncode=os.waitstatus_to_exitcode(status),
                        seconds=time.perf_counter() - start, peak_rss=usage.ru_maxrss * 1024,
                        peak_anon=peak['RssAnon'] * 1024, peak_file=peak['RssFile'] * 1024))
    done.set()
    sampler.join()
    for log in logs:
        log.close()
    return out


def measure(cmd: list[str], log_path: str) -> dict:
    """Runs ``cmd``; returns its exit code, wall time and peak memory (``measure_all``)."""
    return measure_all([cmd], [log_path])[0]


def measure_load(checkpoint: str, processes: int, devices: int, strategy: str,
                 work: str) -> list[dict]:
    """Each of ``processes`` processes on localhost loading ``checkpoint`` sharded over
    ``devices`` CPU devices in all (``load_sharded``): ``measure_all``'s numbers and
    ``local_param_bytes``, the bytes of the distinct param shards its devices hold."""
    if devices % processes:
        raise ConfigError(f'--load_devices={devices} does not split over {processes} '
                          'processes')
    port = _free_port()
    logs = [os.path.join(work, f'load_{processes}_{i}.log') for i in range(processes)]
    runs = measure_all([[sys.executable, '-m', __name__, str(port), str(i), str(processes),
                         str(devices // processes), checkpoint, strategy]
                        for i in range(processes)], logs)
    for run, log in zip(runs, logs):
        with open(log) as f:
            text = f.read()
        if run['returncode']:
            sys.stderr.write(text[-5000:])
        else:
            [line] = [x for x in text.splitlines() if x.startswith('{"local_param_bytes"')]
            run.update(json.loads(line))  # gloo's own lines may follow it
    return runs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def load_sharded(port: int, process_id: int, processes: int, checkpoint: str,
                 strategy: str) -> int:
    """One process of a sharded load, as ``train.loop`` loads (``factory.build_model`` with
    ``strategy``'s param shardings over a ``(1, devices, 1)`` mesh of every process's
    devices): the bytes of the distinct param shards this process's devices hold."""
    from unigrpo_jax.parallel import distributed, sharding
    from unigrpo_jax.parallel import mesh as mesh_lib
    if processes > 1:
        distributed.initialize('auto', f'127.0.0.1:{port}', processes, process_id)
    import jax
    import ml_collections

    from unigrpo_jax.loading import factory
    from unigrpo_jax.model import bagel
    from unigrpo_jax.model.config import load_config
    mesh = mesh_lib.make_mesh((1, len(jax.devices()), 1), jax.devices())
    shardings = sharding.param_shardings(bagel.abstract_params(load_config(checkpoint)), mesh,
                                         sharding.strategy_rules(strategy))
    model = ml_collections.ConfigDict(dict(checkpoint=checkpoint, dtype='bfloat16',
                                           attention='xla', random=None))
    _, params, _ = factory.build_model(model, shardings=shardings)
    held = {(i, str(s.index)): s.data.nbytes  # distinct shards: a replica counts once
            for i, x in enumerate(jax.tree.leaves(jax.block_until_ready(params)))
            for s in x.addressable_shards}
    return sum(held.values())


if __name__ == '__main__':
    port, pid, processes, devices, checkpoint, strategy = sys.argv[1:]
    os.environ['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
    print(json.dumps(dict(local_param_bytes=load_sharded(
        int(port), int(pid), int(processes), checkpoint, strategy))), flush=True)
