"""Accelerators to compile for ahead of time, on a machine that has none of them.

A target is named by its family and size, any size the family comes in (``get``;
``python launch/compile_check.py --target=list`` prints the forms):

| form     | platform | what N counts                  | sizes                         | topology (chips)                 | hosts       |
|----------|----------|--------------------------------|-------------------------------|----------------------------------|-------------|
| v5p-N    | tpu      | TensorCores (2 per chip)       | 8, 16, 32, ..., 8192          | 2x2x1, 2x2x2, then x, y, z doubled in turn (4x4x2 for v5p-64) | chips / 4 |
| v5e-N    | tpu      | chips                          | 4, 8, 16, 32, 64, 128, 256    | 2x2, 2x4, 4x4, 4x8, 8x8, 8x16, 16x16 | chips / 4 |
| v6e-N    | tpu      | chips                          | as v5e                        | as v5e                           | as v5e      |
| h100xN   | cuda     | GPUs                           | 1, 2, 4, 8, then multiples of 8 | 1 x hosts x GPUs per host      | N / 8 (at least 1) |
| h200xN   | cuda     | GPUs                           | as h100                       | as h100                          | as h100     |
| FILE:N   | cuda     | GPUs of the spec file FILE     | as h100                       | as h100                          | as h100     |

Memory per chip (bytes): v5p 102,803,393,408 (95.74 GiB), v5e 16,909,403,136 (15.75 GiB),
v6e 33,550,336,768 (31.25 GiB), H100 84,942,979,072 (79.11 GiB), H200 151,397,597,184
(141.0 GiB). ``TARGETS`` holds the sizes the docs and tests use. (A single v5e/v6e chip is
not a topology libtpu compiles for without a host layout.)

**Multi-slice TPU** (``num_slices`` > 1, MaxText's ``compile_topology_num_slices``): that many
copies of the slice joined by the data-centre network (DCN), named ``<slices>xv5p-16`` and so
on; devices and hosts multiply, the memory per chip does not. ``parallel.mesh.make_mesh`` lays
the mesh over them with the DCN on one axis (``mesh.dcn_axis``).

**Other GPUs**: ``FILE:N`` names N GPUs described by the ``GpuTargetConfigProto`` text file
FILE (e.g. XLA's ``xla/backends/gpu/target_config/specs/*.txtpb``; a path ending in
``.txtpb``), 8 per host as for H100. Its memory is the file's ``device_memory_size``, its
bandwidth ``memory_bandwidth`` and its peak the bf16 matrix-unit rate the file gives
(``2 x clock x units per core x ops per clock x cores``: 989 TFLOP/s for the H100 file, the
data sheet's number); the target is called ``<file stem>xN``.

TPU names are Cloud TPU slice names; the topology is libtpu's
``get_topology_desc(topology_name=...)``, and ``hosts`` is the number of processes libtpu lays
the chips over (4 chips per host: v6e-8 is two hosts here, as in MaxText's ``v6e:2x4``). A TPU
chip's memory is what the TPU compiler lets one program use: the largest ``mem_peak``
(``hlo.memory``) that compiled for one sharded float32 argument (bisection in 4 KiB steps, jax
0.10.2 / libtpu 0.0.42.1), its HBM less a reservation (16 GiB less 258 MiB on v5e); its
RESOURCE_EXHAUSTED errors print it as 95.74G, 15.75G and 31.25G. libtpu lets one process per
machine load it unless ``ALLOW_MULTIPLE_LIBTPU_LOAD=1`` (harmless where nothing runs on the
chips: the launcher sets it).

A GPU topology is ``partitions x hosts x GPUs per host``, described by an XLA
``GpuTargetConfigProto`` (``gpu_spec``, relative to the repository root, which is checked out
next to ``shared/``); its memory is the spec's ``device_memory_size``.

``peak_flops`` (dense bf16 matmul FLOP/s per chip) and ``bandwidth`` (HBM bytes/s per chip) are
the vendors' published numbers (Cloud TPU system architecture pages; NVIDIA H100/H200 SXM data
sheets, dense): the analytic step-time estimates (``bench.rl_programs.iteration_estimate``) and,
through ``bench.perf.PEAKS`` (keyed by ``jax.Device.device_kind``), the measured fractions of
peak of ``launch/bench_rollout.py``, ``bench_sharding.py`` and ``device_check.py``.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import pathlib
import re

from unigrpo_jax.errors import ConfigError

REPO = pathlib.Path(__file__).resolve().parents[2]
_GPU_SPECS = '../shared/data/gpu_targets'


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    platform: str        # 'tpu' or 'cuda'
    topology: str        # TPU: 'v5p:2x2x2'; cuda: 'partitions x hosts x GPUs per host'
    num_devices: int
    hosts: int
    device_memory: int   # bytes one device's program may use
    peak_flops: float    # dense bf16 FLOP/s per device (published; a spec file: its rate)
    bandwidth: float     # HBM bytes/s per device (published)
    gpu_spec: str = ''   # cuda: GpuTargetConfigProto text file, relative to REPO (or absolute)
    num_slices: int = 1  # tpu: slices joined by DCN (devices and hosts count all of them)


_V5P, _V5E, _V6E = 102_803_393_408, 16_909_403_136, 33_550_336_768
_H100, _H200 = 84_942_979_072, 151_397_597_184


@dataclasses.dataclass(frozen=True)
class _Family:
    platform: str
    device_memory: int
    peak_flops: float
    bandwidth: float
    gpu_spec: str = ''


_FAMILIES = {
    'v5p': _Family('tpu', _V5P, 459e12, 2.765e12),
    'v5e': _Family('tpu', _V5E, 197e12, 819e9),
    'v6e': _Family('tpu', _V6E, 918e12, 1.64e12),
    'h100': _Family('cuda', _H100, 989e12, 3.35e12, f'{_GPU_SPECS}/h100_sxm.txtpb'),
    'h200': _Family('cuda', _H200, 989e12, 4.8e12, f'{_GPU_SPECS}/h200.txtpb'),
}


def family_peaks(family: str) -> tuple[float, float]:
    """``(peak_flops, bandwidth)`` per device of a family ('v5p', 'v5e', 'v6e', 'h100',
    'h200'): the published dense bf16 FLOP/s and HBM bytes/s (the one table of them;
    ``bench.perf.PEAKS`` names the device kinds that have them)."""
    if family not in _FAMILIES:
        raise ConfigError(f'unknown device family {family!r}; expected one of {list(_FAMILIES)}')
    spec = _FAMILIES[family]
    return spec.peak_flops, spec.bandwidth


_LITE_GRIDS = {4: '2x2', 8: '2x4', 16: '4x4', 32: '4x8', 64: '8x8', 128: '8x16',
               256: '16x16'}  # v5e / v6e slices: chips -> topology
_V5P_CHIPS = tuple(2 ** k for k in range(2, 13))  # v5p-8 ... v5p-8192
_FORMS = ('v5p-N (N = TensorCores: ' + ', '.join(str(2 * c) for c in _V5P_CHIPS) + '), '
          'v5e-N / v6e-N (N = chips: ' + ', '.join(map(str, _LITE_GRIDS)) + '), '
          'h100xN / h200xN (N = GPUs: 1, 2, 4, 8 or a multiple of 8), '
          'FILE.txtpb:N (N GPUs of a GpuTargetConfigProto file); TPU slices times --num_slices')


def _v5p_grid(chips: int) -> str:
    """2x2x1 for 4 chips, 2x2x2 for 8, then x, y and z doubled in turn."""
    if chips == 4:
        return '2x2x1'
    dims, axis = [2, 2, 2], 0
    while dims[0] * dims[1] * dims[2] < chips:
        dims[axis] *= 2
        axis = (axis + 1) % 3
    return 'x'.join(map(str, dims))


_SPEC_SUFFIX = '.txtpb'
_BF16 = 16  # xla.PrimitiveType of bfloat16: the key of the spec's matrix-unit rates


def _spec_field(text: str, field: str, path: str) -> float:
    found = re.search(rf'\b{field}:\s*([0-9.eE+]+)', text)
    if found is None:
        raise ConfigError(f'GPU spec {path}: no {field} (expected a GpuTargetConfigProto text '
                          'file, e.g. XLA\'s xla/backends/gpu/target_config/specs/h100_sxm.txtpb)')
    return float(found.group(1))


def _spec_family(path: str) -> _Family:
    """The device family a ``GpuTargetConfigProto`` text file describes: its memory, HBM
    bandwidth and dense bf16 peak (``2 x clock x units_per_core x ops_per_clock x
    core_count`` of the file's bf16 matrix-unit rate). ``path``: relative to the working
    directory or absolute (the family keeps it absolute)."""
    file = pathlib.Path(path).resolve()
    if not file.is_file():
        raise ConfigError(f'GPU spec {path}: no such file')
    text = file.read_text()
    rate = re.search(r'matrix_unit_description\s*{.*?key:\s*' + str(_BF16) +
                     r'\s+value\s*{([^}]*)}', text, re.S)
    if rate is None:
        raise ConfigError(f'GPU spec {path}: no bf16 rate (key {_BF16}) in its '
                          'matrix_unit_description')
    peak = (2 * _spec_field(rate.group(1), 'clock_rate_ghz', path) * 1e9
            * _spec_field(rate.group(1), 'units_per_core', path)
            * _spec_field(rate.group(1), 'ops_per_clock', path)
            * _spec_field(text, 'core_count', path))
    return _Family('cuda', int(_spec_field(text, 'device_memory_size', path)), peak,
                   _spec_field(text, 'memory_bandwidth', path), str(file))


def parse(name: str, num_slices: int = 1) -> Target:
    """The target ``name`` names (a form of the module docstring's table), ``num_slices``
    copies of it for a TPU slice; a ConfigError naming the forms and sizes otherwise."""
    if num_slices < 1:
        raise ConfigError(f'num_slices={num_slices}: expected 1 or more')
    spec_path, colon, count = name.rpartition(':')
    from_file = bool(colon) and spec_path.endswith(_SPEC_SUFFIX)
    if from_file:
        family, sep, size = pathlib.Path(spec_path).stem, 'x', count
        spec = _spec_family(spec_path)
    else:
        family, sep, size = (name.partition('-') if name[:1] == 'v' else name.partition('x'))
        spec = _FAMILIES.get(family)
    if spec is None or not sep or not size.isdigit() or int(size) < 1:
        raise ConfigError(f'unknown target {name!r}; expected {_FORMS}')
    n = int(size)
    if family == 'v5p':
        chips = n // 2
        if n % 2 or chips not in _V5P_CHIPS:
            raise ConfigError(f'{name}: a v5p slice has ' + ', '.join(
                str(2 * c) for c in _V5P_CHIPS) + ' TensorCores (2 per chip)')
        topology, devices = f'v5p:{_v5p_grid(chips)}', chips
    elif spec.platform == 'tpu':
        if n not in _LITE_GRIDS:
            raise ConfigError(f'{name}: a {family} slice has {", ".join(map(str, _LITE_GRIDS))} '
                              'chips')
        topology, devices = f'{family}:{_LITE_GRIDS[n]}', n
    else:
        if n > 8 and n % 8 or n in (3, 5, 6, 7):
            raise ConfigError(f'{name}: {family} hosts hold 8 GPUs: 1, 2, 4, 8 or a multiple '
                              'of 8')
        if num_slices > 1:
            raise ConfigError(f'{name}: slices are TPU slices; for more GPUs name more '
                              f'({family}x{n * num_slices})')
        topology, devices = f'1x{max(1, n // 8)}x{min(n, 8)}', n
    hosts = max(1, devices // (4 if spec.platform == 'tpu' else 8))  # libtpu: 4 chips a host
    target_name = f'{family}x{n}' if from_file else name
    if num_slices > 1:
        target_name = f'{num_slices}x{target_name}'
    return Target(target_name, spec.platform, topology, devices * num_slices, hosts * num_slices,
                  spec.device_memory, spec.peak_flops, spec.bandwidth, spec.gpu_spec, num_slices)


# The sizes the docs, the tests and the compile check's reports use.
TARGETS = {name: parse(name) for name in (
    'v5p-8', 'v5p-16', 'v5p-64', 'v5e-16', 'v5e-32', 'v5e-64', 'v5e-256', 'v6e-8', 'h100x8',
    'h200x8', 'h100x16')}

# platform -> (the distribution holding its compiler, the extra of setup.py that installs it)
_COMPILERS = {'tpu': ('libtpu', 'tpu-compile'), 'cuda': ('jax-cuda12-plugin', 'gpu-compile')}


class CompilerNotInstalled(ImportError):
    """The compiler of a target's platform (libtpu, jax's CUDA plugin) is not installed."""


def get(name: str, num_slices: int = 1) -> Target:
    """The target called ``name``, ``num_slices`` of it (``parse``)."""
    return (num_slices == 1 and TARGETS.get(name)) or parse(name, num_slices)


def table() -> str:
    """The forms a target name takes, and ``TARGETS`` as a markdown table (GiB = 2^30)."""
    lines = [f'Any size of a family: {_FORMS}.', '',
             '| target | platform | topology | devices | hosts | GiB per device |',
             '|---|---|---|---|---|---|']
    lines += [f'| {t.name} | {t.platform} | {t.topology} | {t.num_devices} | {t.hosts} | '
              f'{t.device_memory / 2**30:.2f} |' for t in TARGETS.values()]
    return '\n'.join(lines)


def compiler_installed(platform: str) -> bool:
    """Whether the compiler of ``platform`` ('tpu', 'cuda') is installed (not imported)."""
    try:
        importlib.metadata.version(_COMPILERS[platform][0])
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def devices(target: Target) -> list:
    """The ``num_devices`` compile-only ``jax.Device``s of ``target``, in its topology's order:
    ``jax.jit(f).lower(*abstract_args).compile()`` over a mesh of them compiles for it.

    Raises ``CompilerNotInstalled`` (saying which extra to install) when the platform's compiler
    is missing."""
    from jax.experimental import topologies  # here: the registry itself needs no jax

    try:
        if target.platform == 'tpu':
            topo = topologies.get_topology_desc(topology_name=target.topology, platform='tpu',
                                                num_slices=target.num_slices)
        else:
            spec = (REPO / target.gpu_spec).resolve()
            if not spec.is_file():
                raise FileNotFoundError(
                    f'target {target.name}: GPU spec {spec} not found; expected the repository '
                    f'checked out next to shared/ ({target.gpu_spec} from {REPO})')
            topo = topologies.get_topology_desc(platform='cuda', topology=target.topology,
                                                target_config=spec.read_text())
    except RuntimeError as e:  # without the compiler: RuntimeError or NotImplementedError
        distribution, extra = _COMPILERS[target.platform]
        if 'libtpu multi-process lockfile' in str(e):
            raise RuntimeError(
                f'target {target.name}: another process holds libtpu (its lock '
                '/tmp/libtpu_lockfile); to compile beside it set ALLOW_MULTIPLE_LIBTPU_LOAD=1 '
                'before libtpu loads (launch/compile_check.py does)') from e
        if compiler_installed(target.platform):
            raise
        raise CompilerNotInstalled(
            f'target {target.name} needs the {target.platform} compiler ({distribution}), which '
            f"is not installed: pip install -e '.[{extra}]' ({e})") from e
    found = list(topo.devices)
    if len(found) != target.num_devices:
        raise ValueError(f'target {target.name}: topology {target.topology} has {len(found)} '
                         f'devices, the registry says {target.num_devices}')
    return found
