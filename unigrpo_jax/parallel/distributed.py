"""Joining a multi-process run: ``jax.distributed.initialize`` from flags or the cluster's
environment, and a check that every process runs the same config.

Three ways in, in this order:
- explicit: ``coordinator_address``, ``num_processes`` and ``process_id`` (the launchers'
  flags, ``jax.distributed.initialize``'s own arguments), all three or none;
- a cluster launcher with more than one process: SLURM (``SLURM_NTASKS``), Open MPI
  (``OMPI_COMM_WORLD_SIZE``), a multi-host TPU slice (``TPU_WORKER_HOSTNAMES`` naming more
  than one host) or ``JAX_COORDINATOR_ADDRESS``; JAX reads the rest from the environment;
- none: one process, nothing to do.

``mode`` (``config.distributed``) is 'auto' (the above), 'on' (always initialize, failing
where JAX finds no cluster; a TPU VM made with ``gcloud`` names its workers only in its
metadata server, which JAX reads then) or 'off' (never; explicit flags are then an error).
Commands for each cluster: docs/multihost.md.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import sys
import threading
import time

import jax
import numpy as np
from absl import flags, logging
from jax._src import distributed as jax_distributed
from jax.experimental import multihost_utils

from unigrpo_jax import errors
from unigrpo_jax.errors import ConfigError

MODES = ('auto', 'on', 'off')


def launched_multi_process(environ=None) -> bool:
    """Whether a cluster launcher in ``environ`` started more than one process.

    One SLURM task (an interactive ``salloc``) or a single-host TPU VM is not a multi-process
    run, so 'auto' leaves it alone.
    """
    env = os.environ if environ is None else environ
    if 'JAX_COORDINATOR_ADDRESS' in env:
        return True
    for var in ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE'):
        if var in env:
            return int(env[var]) > 1
    return len([h for h in env.get('TPU_WORKER_HOSTNAMES', '').split(',') if h]) > 1


def require_one_process(tool: str, environ=None) -> None:
    """Raises ``ConfigError`` when a multi-process launcher started ``tool``, a program that
    runs in one process (N copies would each do all the work and write the same files)."""
    if launched_multi_process(environ):
        raise ConfigError(f'{tool} runs in one process on one host, but a multi-process '
                          'launcher started it (SLURM_NTASKS, OMPI_COMM_WORLD_SIZE, '
                          'TPU_WORKER_HOSTNAMES or JAX_COORDINATOR_ADDRESS): run it as one '
                          'task (srun --ntasks=1, or on one TPU worker)')


def initialize_arguments(mode: str, coordinator_address: str | None = None,
                         num_processes: int | None = None, process_id: int | None = None,
                         environ=None, local_device_ids: list[int] | None = None
                         ) -> dict | None:
    """The keyword arguments for ``jax.distributed.initialize``, or None for one process.

    ``local_device_ids`` (the accelerators this process uses) goes with any multi-process
    start: on SLURM JAX otherwise gives each process only GPU ``SLURM_LOCALID`` (one process
    per GPU), so one process per host passes all of its GPUs.

    Raises ``ConfigError`` for an unknown mode, a partial set of explicit arguments, explicit
    arguments with mode 'off' or with one process, or a process id outside
    ``[0, num_processes)``.
    """
    kwargs = _process_arguments(mode, coordinator_address, num_processes, process_id, environ)
    if local_device_ids:
        if kwargs is None:
            raise ConfigError(f'--local_device_ids={local_device_ids} is for a multi-process '
                              'run; none is configured or detected')
        kwargs['local_device_ids'] = [int(i) for i in local_device_ids]
    return kwargs


def _process_arguments(mode, coordinator_address, num_processes, process_id, environ):
    if mode not in MODES:
        raise ConfigError(f'distributed={mode!r}: expected one of {MODES}')
    explicit = {'coordinator_address': coordinator_address, 'num_processes': num_processes,
                'process_id': process_id}
    given = {k: v for k, v in explicit.items() if v is not None}
    if given and mode == 'off':
        raise ConfigError(f'distributed=off, but {sorted(given)} given: drop them or set '
                          '--config.distributed=auto')
    if given:
        missing = sorted(set(explicit) - set(given))
        if missing:
            raise ConfigError(f'multi-process flags need all of --coordinator_address, '
                              f'--num_processes and --process_id; missing {missing}')
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ConfigError(f'--process_id={process_id} must be in [0, --num_processes='
                              f'{num_processes})')
        return explicit
    if mode == 'on' or (mode == 'auto' and launched_multi_process(environ)):
        return {}
    return None


def initialize(mode: str, coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None,
               timeout_s: int = 300, local_device_ids: list[int] | None = None) -> bool:
    """Joins the run (see the module docstring); returns whether it is multi-process.

    On CPU the cross-process collectives go through gloo (JAX's default). A process that
    cannot reach the others (a host missing) aborts after ``timeout_s`` seconds with JAX's
    ``DEADLINE_EXCEEDED`` instead of hanging.
    """
    kwargs = initialize_arguments(mode, coordinator_address, num_processes, process_id,
                                  local_device_ids=local_device_ids)
    if kwargs is None:
        return False
    logging.info('joining a multi-process run (%s); a process that has not joined after '
                 '%d s fails the run with DEADLINE_EXCEEDED', kwargs or 'from the environment',
                 timeout_s)
    jax.distributed.initialize(**kwargs, initialization_timeout=timeout_s)
    if jax.process_count() > 1:
        watch_processes()
    return jax.process_count() > 1


def config_fingerprint(config) -> str:
    """A hash of the config's full text (``ConfigDict.to_json_best_effort``)."""
    text = config.to_json_best_effort(sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def assert_same_config(config) -> None:
    """Raises ``ConfigError`` on every process unless all processes run the same config.

    Each process contributes its config's fingerprint; a difference (different flags, files or
    code on one host) names the processes that disagree with process 0.
    """
    if jax.process_count() == 1:
        return
    digest = np.frombuffer(bytes.fromhex(config_fingerprint(config)), np.uint8)
    every = np.asarray(multihost_utils.process_allgather(digest))  # [P, 32]
    differ = [i for i in range(len(every)) if not np.array_equal(every[i], every[0])]
    if differ:
        raise ConfigError(f'processes {differ} run a different config from process 0 (same '
                          'config file, flags and code on every host are needed)')


def define_flags() -> None:
    """Defines ``--coordinator_address``, ``--num_processes``, ``--process_id`` and
    ``--local_device_ids`` (a launcher calls this at import; ``initialize_from_flags`` reads
    them)."""
    flags.DEFINE_string('coordinator_address', None,
                        'host:port of process 0 for a multi-process run (all three flags or '
                        'none; without them SLURM/TPU pod/Open MPI are detected).')
    flags.DEFINE_integer('num_processes', None, 'Number of processes in the run.')
    flags.DEFINE_integer('process_id', None, 'This process, in [0, num_processes).')
    flags.DEFINE_list('local_device_ids', None, 'The local accelerators this process uses '
                      '(default: all; on SLURM JAX picks GPU SLURM_LOCALID, one process per '
                      'GPU: a process per host passes 0,1,...,7).')


def initialize_from_flags(mode: str) -> bool:
    """``initialize`` with the flags of ``define_flags``."""
    f = flags.FLAGS
    return initialize(mode, f.coordinator_address, f.num_processes, f.process_id,
                      local_device_ids=f.local_device_ids)


def any_process(flag: bool) -> bool:
    """Whether ``flag`` holds on any process (every process gets the same answer)."""
    if jax.process_count() == 1:
        return flag
    return bool(np.asarray(multihost_utils.process_allgather(np.int32(flag))).any())


_TEXT_BYTES = 4096  # what ``gather_text`` carries of each process's text


def gather_text(text: str) -> list[str]:
    """Every process's ``text`` on every process, in process order (UTF-8, cut at 4 KiB);
    a collective: every process must call it."""
    if jax.process_count() == 1:
        return [text]
    data = np.frombuffer(text.encode()[:_TEXT_BYTES], np.uint8)
    padded = np.zeros(_TEXT_BYTES + 1, np.uint8)  # the last byte: 1 where text is set
    padded[:len(data)], padded[-1] = data, 1
    rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(-1, _TEXT_BYTES + 1)
    return [bytes(row[:-1]).rstrip(b'\0').decode(errors='replace') for row in rows]


def raise_if_failed_anywhere(error: BaseException | None, what: str,
                             kind: type[Exception] = RuntimeError) -> None:
    """Agreement on a failure: where ``error`` is set on any process, every process raises
    ``kind`` naming each failed process and its message (one process: ``error`` itself), so
    no process goes on to wait in a collective the failed one never reaches. A collective:
    every process must call it, with ``None`` where it succeeded."""
    if jax.process_count() == 1:
        if error is not None:
            raise error
        return
    messages = gather_text('' if error is None else f'{type(error).__name__}: {error}')
    failed = [f'process {i}: {m}' for i, m in enumerate(messages) if m]
    if failed:
        raise kind(f'{what} failed on {len(failed)} of {len(messages)} processes; '
                   + '; '.join(failed)) from error


def gather_rows(rows: np.ndarray, values: np.ndarray, total: int) -> np.ndarray:
    """``[total, ...]`` on every process from each process's ``rows [r]`` and ``values [r, ...]``
    (``r`` may differ between processes, e.g. ``sharding.addressable_rows``: each row given by
    exactly one process). A collective: every process must call it."""
    if jax.process_count() > 1:
        counts = np.asarray(multihost_utils.process_allgather(np.int32(len(rows)))).reshape(-1)
        pad = int(counts.max()) - len(rows)  # equal shapes for the gather; row -1 is padding
        rows = np.concatenate([rows, np.full(pad, -1, rows.dtype)])
        values = np.concatenate([values, np.zeros((pad,) + values.shape[1:], values.dtype)])
        rows, values = (np.asarray(x) for x in multihost_utils.process_allgather((rows, values)))
        rows, values = rows.reshape(-1), values.reshape((-1,) + values.shape[2:])
        values, rows = values[rows >= 0], rows[rows >= 0]
    if sorted(rows.tolist()) != list(range(total)):
        raise ValueError(f'rows {sorted(rows.tolist())} do not cover 0..{total - 1} once each')
    out = np.empty((total,) + values.shape[1:], values.dtype)
    out[rows] = values
    return out


# The exit status of a process that stops because another process of its run was lost
# (EX_UNAVAILABLE): start every process again with the same command to resume.
EXIT_PROCESS_LOST = 69
_HEARTBEAT = 'unigrpo_jax/heartbeat/'
_ROLL_CALL = 'unigrpo_jax/roll_call/'
_EXITED = 'exited'
_failures = [0]  # this process's failures so far: each roll call has its own keys


def watch_processes(interval_s: float = 2.0, silent_s: float = 30.0) -> None:
    """Starts this process's watchdog: a daemon thread that posts a heartbeat to the
    coordinator's key-value store every ``interval_s`` seconds and reads everyone's. When
    another process's heartbeat stops for ``silent_s`` seconds (killed, its host gone) or the
    store stops answering (process 0, which holds it, is gone), this process prints one line
    naming the lost process and exits with ``EXIT_PROCESS_LOST`` at once, wherever its main
    thread is (compiling, computing, or waiting in a collective the lost process never
    joins). Without it, JAX aborts the survivors after its own heartbeat timeout with SIGABRT
    and a C++ stack dump. A process that exits normally says so first (``atexit``), so the
    others do not take it for lost. ``silent_s`` stays below JAX's heartbeat timeout (its
    ``initialize`` default is 100 s) so the watchdog speaks first."""
    client = jax_distributed.global_state.client
    me, n = jax.process_index(), jax.process_count()
    stopped = threading.Event()

    def beat_and_watch():
        beats, last, changed = 0, {}, dict.fromkeys(range(n), time.monotonic())
        while not stopped.wait(interval_s):
            beats += 1
            try:
                client.key_value_set(f'{_HEARTBEAT}{me}', str(beats), allow_overwrite=True)
                seen = {int(key.rsplit('/', 1)[-1]): value
                        for key, value in client.key_value_dir_get(_HEARTBEAT)}
            except Exception as e:  # noqa: BLE001 - the store is unreachable: process 0 is gone
                if not stopped.is_set():
                    _exit_lost([0], f'the coordinator does not answer '
                               f'({errors.first_line(e) or type(e).__name__})')
                return
            now = time.monotonic()
            for i, value in seen.items():
                if value != last.get(i):
                    last[i], changed[i] = value, now
            lost = [i for i in range(n) if i != me and last.get(i) != _EXITED
                    and now - changed[i] > silent_s]
            if lost and not stopped.is_set():
                _exit_lost(lost, f'no heartbeat for {silent_s:.0f} s')

    def say_exited():
        stopped.set()
        try:
            client.key_value_set(f'{_HEARTBEAT}{me}', _EXITED, allow_overwrite=True)
        except Exception:  # noqa: BLE001 - the coordinator is gone; nobody is left to tell
            pass

    threading.Thread(target=beat_and_watch, name='unigrpo_jax-watchdog', daemon=True).start()
    atexit.register(say_exited)  # runs before JAX's own shutdown (registered earlier)


def _exit_lost(lost: list[int], why: str) -> None:
    names = ', '.join(map(str, lost))
    print(f'unigrpo_jax: process {names} of {jax.process_count()} was lost ({why}). Process '
          f'{jax.process_index()} stops with exit code {EXIT_PROCESS_LOST}; start every process '
          'again with the same command to resume from the last checkpoint.',
          file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(EXIT_PROCESS_LOST)  # skips the shutdown barrier the lost process never reaches


@contextlib.contextmanager
def exit_when_a_process_is_lost(wait_s: float = 40.0):
    """Runs the block; where it fails in a multi-process run, first asks whether every process
    is still there: a roll call through the coordinator's key-value store, which every
    process that fails answers. When all answer (an error every process met), the error is
    raised as it is. When some do not, this process waits up to ``wait_s`` seconds for the
    watchdog (``watch_processes``) to find them lost, which ends the process with one line
    (a collective with a dead process fails at once, long before JAX's shutdown would give
    up on it); a process that is alive but has not failed (yet) lets the error through."""
    try:
        yield
    except Exception:
        if jax.process_count() > 1:
            _failures[0] += 1
            _roll_call(f'{_ROLL_CALL}{_failures[0]}/', wait_s)
        raise


def _roll_call(prefix: str, wait_s: float) -> None:
    client = jax_distributed.global_state.client
    try:
        client.key_value_set(f'{prefix}{jax.process_index()}', 'here', allow_overwrite=True)
        deadline = time.monotonic() + wait_s
        while len(client.key_value_dir_get(prefix)) < jax.process_count():
            if time.monotonic() > deadline:
                return
            time.sleep(0.2)
    except Exception:  # noqa: BLE001 - the store is gone: the watchdog says so and exits
        time.sleep(wait_s)
