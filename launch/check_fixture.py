r"""Checks the port against a reference fixture directory (the ``bagel_tiny`` format).

    python launch/check_fixture.py tests/fixtures/bagel_tiny

Loads the fixture's checkpoint with the project's converter, recomputes every case of its
``cases.npz`` and prints one line per compared array: case, array, max error, tolerance and
PASS or FAIL. Exits non-zero if any comparison fails (or a case cannot run).
"""

import sys
import time
import traceback

import jax

jax.config.update('jax_default_matmul_precision', 'highest')

from absl import app  # noqa: E402

from unigrpo_jax.bench import parity  # noqa: E402


def main(argv):
    if len(argv) != 2:
        raise app.UsageError('usage: check_fixture.py FIXTURE_DIR')
    start = time.time()
    fixture = parity.load_fixture(argv[1])
    present = {k.split('.', 1)[0] for k in fixture.cases}
    failed = 0
    for name, check in parity.CASES.items():
        if name not in present:
            print(f'{name:15s} (not in this fixture)')
            continue
        try:
            results = check(fixture)
        except Exception:  # report the case as failed, keep checking the others
            traceback.print_exc()
            print(f'{name:15s} {"(case raised)":40s} {"-":>10s} {"-":>10s} FAIL')
            failed += 1
            continue
        for r in results:
            print(f'{r.case:15s} {r.name:40s} {r.error:10.3e} {r.tolerance:10.3e} '
                  f'{"PASS" if r.passed else "FAIL"}')
            failed += not r.passed
    print(f'{failed} failed comparisons, {time.time() - start:.1f}s')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(app.run(main))
