"""Device meshes with the axes ``(data, fsdp, tensor)``."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import jax
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

AXES = ('data', 'fsdp', 'tensor')

# XLA:CPU runs every emulated device's program on one intra-op pool (by default as many threads
# as cores, at least the device count), and a collective holds its thread until every
# participant arrives. The thunk executor can start a device's next collective before its last
# one finished (collectives are ordered only at launch; in an executable loaded from the
# compilation cache not even that), so with every thread waiting in a different collective the
# program deadlocks (jax 0.10.2: an 8-device train step on (1, 8, 1) and (1, 4, 2), 7 devices in
# an all-reduce and 1 in an all-to-all). A larger pool leaves threads free.
CPU_POOL_THREADS = 64


def reserve_cpu_collective_threads(threads: int = CPU_POOL_THREADS) -> None:
    """Sizes XLA:CPU's thread pool (``PJRT_NPROC``, unless already set) so that sharded
    programs on emulated CPU devices leave threads free while collectives wait. Call before the first
    JAX computation of the process (the pool is made with the CPU client)."""
    os.environ.setdefault('PJRT_NPROC', str(threads))


def resolve_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Replaces one ``-1`` by the remaining devices; the product must equal ``num_devices``."""
    shape = tuple(int(s) for s in shape)
    if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
        raise ValueError(f'parallelism.mesh={shape}: use positive sizes and at most one -1')
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            raise ValueError(f'parallelism.mesh={shape}: {num_devices} devices are not '
                             f'divisible by {known}')
        shape = tuple(num_devices // known if s == -1 else s for s in shape)
    if math.prod(shape) != num_devices:
        raise ValueError(f'parallelism.mesh={shape} needs {math.prod(shape)} devices, '
                         f'{num_devices} are present')
    return shape


def num_slices(devices: Sequence) -> int:
    """How many TPU slices ``devices`` span (their distinct ``slice_index``; 1 elsewhere)."""
    return len({getattr(d, 'slice_index', 0) for d in devices})


def dcn_axis(shape: Sequence[int], slices: int) -> int:
    """The mesh axis that crosses ``slices`` slices over the data-centre network: ``data`` when
    its size is a multiple of ``slices``, else ``fsdp`` (the paper's mesh is (1, N, 1)); the
    ``tensor`` axis never does (its collectives are per layer). A ValueError when neither fits."""
    for axis in (0, 1):
        if shape[axis] % slices == 0:
            return axis
    raise ValueError(f'parallelism.mesh={tuple(shape)} over {slices} slices: the data or the '
                     f'fsdp axis must be a multiple of {slices} (the axis that crosses slices)')


def make_mesh(shape: Sequence[int] = (-1, 1, 1), devices=None) -> Mesh:
    """A mesh over ``devices`` (default: all) with axes ``(data, fsdp, tensor)``.

    Over several TPU slices (``num_slices``) the mesh is hybrid, as MaxText's: the ``dcn_axis``
    is split into an outer part over the slices and an inner part within each slice; every
    other axis stays within a slice. Axes are ``Auto`` (sharding propagated by the compiler from
    in/out shardings, the jit successor of pjit).
    """
    devices = jax.devices() if devices is None else list(devices)
    shape = resolve_shape(shape, len(devices))
    axis_types = (AxisType.Auto,) * len(AXES)
    slices = num_slices(devices)
    if slices == 1:
        return jax.make_mesh(shape, AXES, devices=devices, axis_types=axis_types)
    axis = dcn_axis(shape, slices)
    within = tuple(s // slices if i == axis else s for i, s in enumerate(shape))
    across = tuple(slices if i == axis else 1 for i in range(len(shape)))
    grid = mesh_utils.create_hybrid_device_mesh(within, across, devices,
                                                allow_split_physical_axes=True)
    return Mesh(grid, AXES, axis_types=axis_types)
