"""Named accelerators to compile for ahead of time, on a machine that has none of them.

| name    | platform | topology    | chips | hosts | memory per chip (bytes)          |
|---------|----------|-------------|-------|-------|----------------------------------|
| v5p-8   | tpu      | v5p:2x2x1   | 4     | 1     | 102,803,393,408 (95.74 GiB)      |
| v5p-16  | tpu      | v5p:2x2x2   | 8     | 2     | same                             |
| v5p-64  | tpu      | v5p:4x4x2   | 32    | 8     | same                             |
| v5e-16  | tpu      | v5e:4x4     | 16    | 4     | 16,909,403,136 (15.75 GiB)       |
| v5e-32  | tpu      | v5e:4x8     | 32    | 8     | same                             |
| v5e-64  | tpu      | v5e:8x8     | 64    | 16    | same                             |
| v5e-256 | tpu      | v5e:16x16   | 256   | 64    | same                             |
| v6e-8   | tpu      | v6e:2x4     | 8     | 2     | 33,550,336,768 (31.25 GiB)       |
| h100x8  | cuda     | 1x1x8       | 8     | 1     | 84,942,979,072 (79.11 GiB)       |
| h200x8  | cuda     | 1x1x8       | 8     | 1     | 151,397,597,184 (141.0 GiB)      |
| h100x16 | cuda     | 1x2x8       | 16    | 2     | 84,942,979,072                   |

TPU names are Cloud TPU slice names (v5p counts TensorCores, 2 per chip; v5e and v6e count
chips); the topology is libtpu's ``get_topology_desc(topology_name=...)``, and ``hosts`` is the
number of processes libtpu lays the chips over (4 chips per host: v6e-8 is two hosts here, as in
MaxText's ``v6e:2x4``). A TPU chip's memory is what the TPU compiler lets one program use: the
largest ``mem_peak`` (``hlo.memory``) that compiled for one sharded float32 argument (bisection
in 4 KiB steps, jax 0.10.2 / libtpu 0.0.42.1), its HBM less a reservation (16 GiB less
258 MiB on v5e); its RESOURCE_EXHAUSTED errors print it as 95.74G, 15.75G and 31.25G. libtpu
lets one process per machine load it unless ``ALLOW_MULTIPLE_LIBTPU_LOAD=1`` (harmless where
nothing runs on the chips: the launcher sets it).

A GPU topology is ``partitions x hosts x GPUs per host``, described by an XLA
``GpuTargetConfigProto`` (``gpu_spec``, relative to the repository root, which is checked out
next to ``shared/``); its memory is the spec's ``device_memory_size``.

``peak_flops`` (dense bf16 matmul FLOP/s per chip) and ``bandwidth`` (HBM bytes/s per chip) are
the vendors' published numbers (Cloud TPU system architecture pages; NVIDIA H100/H200 SXM data
sheets, dense): only for analytic step-time estimates (``bench.rl_programs.iteration_estimate``).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import pathlib

from unigrpo_jax.model.config import ConfigError

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
    peak_flops: float    # dense bf16 FLOP/s per device (published)
    bandwidth: float     # HBM bytes/s per device (published)
    gpu_spec: str = ''   # cuda: GpuTargetConfigProto text file, relative to REPO


_V5P, _V5E, _V6E = 102_803_393_408, 16_909_403_136, 33_550_336_768
_H100, _H200 = 84_942_979_072, 151_397_597_184
_V5P_PEAK, _V5E_PEAK, _H100_PEAK = (459e12, 2.765e12), (197e12, 819e9), (989e12, 3.35e12)

TARGETS = {t.name: t for t in (
    Target('v5p-8', 'tpu', 'v5p:2x2x1', 4, 1, _V5P, *_V5P_PEAK),
    Target('v5p-16', 'tpu', 'v5p:2x2x2', 8, 2, _V5P, *_V5P_PEAK),
    Target('v5p-64', 'tpu', 'v5p:4x4x2', 32, 8, _V5P, *_V5P_PEAK),
    Target('v5e-16', 'tpu', 'v5e:4x4', 16, 4, _V5E, *_V5E_PEAK),
    Target('v5e-32', 'tpu', 'v5e:4x8', 32, 8, _V5E, *_V5E_PEAK),
    Target('v5e-64', 'tpu', 'v5e:8x8', 64, 16, _V5E, *_V5E_PEAK),
    Target('v5e-256', 'tpu', 'v5e:16x16', 256, 64, _V5E, *_V5E_PEAK),
    Target('v6e-8', 'tpu', 'v6e:2x4', 8, 2, _V6E, 918e12, 1.64e12),
    Target('h100x8', 'cuda', '1x1x8', 8, 1, _H100, *_H100_PEAK, f'{_GPU_SPECS}/h100_sxm.txtpb'),
    Target('h200x8', 'cuda', '1x1x8', 8, 1, _H200, 989e12, 4.8e12, f'{_GPU_SPECS}/h200.txtpb'),
    Target('h100x16', 'cuda', '1x2x8', 16, 2, _H100, *_H100_PEAK,
           f'{_GPU_SPECS}/h100_sxm.txtpb'),
)}

# platform -> (the distribution holding its compiler, the extra of setup.py that installs it)
_COMPILERS = {'tpu': ('libtpu', 'tpu-compile'), 'cuda': ('jax-cuda12-plugin', 'gpu-compile')}


class CompilerNotInstalled(ImportError):
    """The compiler of a target's platform (libtpu, jax's CUDA plugin) is not installed."""


def get(name: str) -> Target:
    """The target called ``name``; a ConfigError naming the known ones otherwise."""
    if name not in TARGETS:
        raise ConfigError(f'unknown target {name!r}; expected one of {", ".join(TARGETS)}')
    return TARGETS[name]


def table() -> str:
    """The registry as a markdown table (GiB = 2^30 bytes)."""
    lines = ['| target | platform | topology | devices | hosts | GiB per device |',
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
            topo = topologies.get_topology_desc(topology_name=target.topology, platform='tpu')
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
