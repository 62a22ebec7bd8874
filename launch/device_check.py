r"""The first thing to run on a new GPU or TPU: fixture parity, the fused attention kernel,
decode / denoise / train-step efficiency and memory, in a few minutes on one device.

    python launch/device_check.py                       # Bagel-7B widths, 2 layers
    python launch/device_check.py --layers=4 --chains=8 --out=/tmp/dc.json
    python launch/device_check.py --tiny                # the same code at CPU scale

Measures on the first device (``unigrpo_jax/bench/device_check.py`` says how): the reference
fixture's parity in float32; the fused attention kernel (cuDNN / Pallas) against the XLA path
in bf16; one decode step as a fraction of the HBM roofline, one denoising step's and one RL
train step's MFU at Bagel-7B's widths with ``--layers`` layers; each program's compiled
memory against the device's measured peak. Peaks come from ``perf.PEAKS`` by device kind; a
CPU's are measured, and on a CPU ``--tiny`` is implied. Writes ``--out`` (JSON) and prints
markdown rows for docs/performance.md. Nothing is downloaded.
"""

import os
import sys

# The train step at Bagel-7B's widths needs most of an 80 GB GPU, and JAX preallocates 75% of
# it unless told otherwise (docs/troubleshooting.md): let it take 95%, as a run should.
if not (os.environ.get('XLA_CLIENT_MEM_FRACTION')
        or os.environ.get('XLA_PYTHON_CLIENT_MEM_FRACTION')):
    os.environ['XLA_PYTHON_CLIENT_MEM_FRACTION'] = '.95'

import jax  # noqa: E402
from absl import app, flags  # noqa: E402

from unigrpo_jax import config_files  # noqa: E402
from unigrpo_jax.bench import device_check, parity  # noqa: E402

_OUT = flags.DEFINE_string('out', 'runs/device_check/device_check.json', 'The JSON written.')
_TINY = flags.DEFINE_bool('tiny', False, "configs/bagel_grpo.py:tiny's random model and "
                          "rollout instead of Bagel-7B's widths (implied on a CPU).")
_LAYERS = flags.DEFINE_integer('layers', 2, 'LLM layers of the measured programs.',
                               lower_bound=1)
_CHAINS = flags.DEFINE_integer('chains', None, 'Chains per decode step and images per '
                               'denoising step (default: the config\'s group size).',
                               lower_bound=1)
_TRAIN_CHAINS = flags.DEFINE_integer('train_chains', 1, 'Chains per train step.',
                                     lower_bound=1)
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed calls per measurement.', lower_bound=1)
_FIXTURE = flags.DEFINE_string('fixture', device_check.FIXTURE, 'Reference fixture directory '
                               '(the tests/fixtures/bagel_tiny format).')
_PARITY_CASES = flags.DEFINE_list('parity_cases', list(parity.CASES), 'Fixture cases to check.')

flags.register_validator(
    'parity_cases', lambda cases: bool(cases) and set(cases) <= set(parity.CASES),
    message=f'--parity_cases: expected a comma-separated subset of {list(parity.CASES)}')
flags.register_validator(
    'fixture', lambda d: os.path.isfile(os.path.join(d, 'cases.npz')),
    message='--fixture: expected a directory holding cases.npz and a Bagel checkpoint (the '
            'tests/fixtures/bagel_tiny format)')


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments {argv[1:]}')
    tiny = _TINY.value or jax.default_backend() == 'cpu'
    if tiny and not _TINY.value:
        print('backend cpu: --tiny implied (Bagel-7B widths would take hours on a CPU)')
    result = device_check.device_check(
        tiny, layers=_LAYERS.value, chains=_CHAINS.value, train_chains=_TRAIN_CHAINS.value,
        repeats=_REPEATS.value, fixture=_FIXTURE.value, parity_cases=_PARITY_CASES.value)
    print(device_check.markdown(result))
    print(f'wrote {device_check.write_json(result, _OUT.value)} ({result["seconds"]:.0f} s)')
    return 1 if result['parity']['failed'] else 0


if __name__ == '__main__':
    sys.exit(app.run(main, flags_parser=config_files.parse_flags))
